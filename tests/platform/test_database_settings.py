"""Database settings read from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRINT_OPTIONS = ("import json, django; from django.conf import settings; django.setup(); "
                 "print(json.dumps(settings.DATABASES['default'].get('OPTIONS', {}), default=str))")


def database_options(**env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    environ.update({"DJANGO_SETTINGS_MODULE": "novakit.settings", **env})
    done = subprocess.run([sys.executable, "-c", PRINT_OPTIONS], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("switch", "prepared"), [(None, True), ("1", True), ("0", False)])
def test_given_postgresql_then_prepared_statements_follow_the_switch(switch, prepared):
    env = {"DATABASE_URL": "postgres://novakit@db.internal:5432/novakit"}
    if switch is not None:
        env["DATABASE_PREPARED_STATEMENTS"] = switch
    options = database_options(**env)
    assert ("prepare_threshold" in options) is prepared
    assert ("plan_cache_mode=force_generic_plan" in str(options.get("options", ""))) is prepared


def test_given_sqlite_then_nothing_about_prepared_statements_is_set():
    options = database_options(DATABASE_URL="sqlite:////tmp/novakit-settings-test.sqlite3")
    assert "prepare_threshold" not in options and "options" not in options
