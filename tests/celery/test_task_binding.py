"""Every task is defined on the project's Celery app, whoever imports it first.

`novakit` no longer imports its Celery app at start-up (novakit/__init__.py):
a task made with Celery's `shared_task` would then bind, in a process that
had not loaded `novakit.celery` yet, to Celery's default app, whose broker is
an AMQP server on localhost, and its `.delay()` would fail in production
while passing in tests (whose conftest loads the project's app).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from django.apps import apps

from tests.support.gateway_process import ROOT

# Runs in a fresh interpreter per tasks module (one module's import of novakit.celery would
# make the project's app the current one for the next), after django.setup().
SCRIPT = """
import importlib, json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")
import django
django.setup()
loaded_at_setup = "celery" in sys.modules
found = {}
for module_name in sys.argv[1:]:
    module = importlib.import_module(module_name)
    for name, value in vars(module).items():
        if callable(getattr(value, "delay", None)):
            found[f"{module_name}.{name}"] = value._get_app().main
print(json.dumps({"loaded_at_setup": loaded_at_setup, "tasks": found}))
"""


def test_each_apps_tasks_bind_to_the_project_app_when_imported_first():
    modules = [f"{config.name}.tasks" for config in apps.get_app_configs()
               if (ROOT / config.name.replace(".", "/") / "tasks.py").exists()]
    env = {**os.environ, "DATABASE_URL": "sqlite:///:memory:"}
    tasks: dict[str, str] = {}
    for module in modules:
        done = subprocess.run([sys.executable, "-c", SCRIPT, module], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["loaded_at_setup"] is False  # nothing at start-up needs Celery
        assert report["tasks"], f"no task found in {module}: the check would pass on nothing"
        tasks.update(report["tasks"])

    assert "accounts.tasks" in modules and "completions.tasks" in modules, modules
    wrong = {task: app for task, app in tasks.items() if app != "novakit"}
    assert not wrong, f"tasks bound to another Celery app than novakit's: {wrong}"
