"""NOVAKIT_PROCESS=inference: a process that serves the inference API and health only, without
the portal, the admin or the management API, and holds less memory than one that serves all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.platform.test_graceful_shutdown import upstream_in_env  # noqa: F401 (a fixture)
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import ROOT, GatewayProcess, workers_of

CHAT = {"model": "openai/gpt-4o-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "Which process answers?"}]}
# What an inference process must never import: the management API, the admin, the portal,
# and Celery (~10 MB; loaded by the tasks module of whatever it enqueues, when it does).
NOT_FOR_INFERENCE = ("celery", "kombu", "rest_framework", "drf_spectacular", "axes",
                     "django.contrib.admin",
                     "django.contrib.sessions", "django.contrib.messages", "novakit.urls",
                     "novakit.portal_urls", "accounts.views", "accounts.api", "billing.api")


def warm_up(gateway: GatewayProcess, secret: str) -> None:
    """The same requests to either process: a completion, the models, health, a 404."""
    auth = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(5):
            assert client.post("/api/v1/chat/completions", json=CHAT, headers=auth
                               ).status_code == 200
            assert client.get("/api/v1/models", headers=auth).status_code == 200
            assert client.get("/readyz").status_code == 200
            client.get("/portal/")


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_an_inference_process_serves_the_inference_api_and_health_only(
    tenant, upstream_in_env, gateway_processes,  # noqa: F811
):
    [gateway] = gateway_processes(1, workers=1, serve_args=("--process", "inference"))
    auth = {"Authorization": f"Bearer {tenant.secret}"}

    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post("/api/v1/chat/completions", json=CHAT, headers=auth)
        models = client.get("/api/v1/models", headers=auth)
        health = [client.get(path).status_code for path in ("/healthz", "/readyz")]
        elsewhere = {path: client.get(path, headers=auth)
                     for path in ("/portal/", "/admin/", "/api/v1/keys", "/api/v1/usage",
                                  "/api/v1/management/schema", "/api/v1/docs", "/")}

    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert models.status_code == 200 and models.json()["data"]
    assert health == [200, 200]
    for path, response in elsewhere.items():
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path  # the API's error shape


def modules_after_start_up(process: str, *, freeze: bool = False) -> set[str]:
    """The modules a fresh process of this type has loaded once its URLconf is built."""
    script = ("import os, sys\n"
              "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'novakit.settings')\n"
              "import novakit.asgi\n"
              "from django.urls import get_resolver\n"
              "get_resolver().url_patterns\n")
    if freeze:
        script += ("from novakit.runtime.lifespan import _freeze_what_start_up_built\n"
                   "_freeze_what_start_up_built()\n")
    script += "print('\\n'.join(sorted(sys.modules)))\n"
    env = {**os.environ, "NOVAKIT_PROCESS": process, "DATABASE_URL": "sqlite:///:memory:"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_an_inference_process_loads_nothing_of_the_portal_admin_or_management_api():
    loaded = modules_after_start_up("inference", freeze=True)

    assert "novakit.inference_urls" in loaded and "completions.gateway" in loaded
    assert not {name for name in loaded if name.startswith(NOT_FOR_INFERENCE)}


def test_an_idle_inference_worker_holds_less_memory_than_one_that_serves_everything(
    tenant, upstream_in_env, gateway_processes,  # noqa: F811
):
    [inference] = gateway_processes(1, workers=1, serve_args=("--process", "inference"))
    [everything] = gateway_processes(1, workers=1, serve_args=("--process", "all"))
    for gateway in (inference, everything):
        warm_up(gateway, tenant.secret)

    [inference_worker] = workers_of(inference)
    [all_worker] = workers_of(everything)
    slim, full = resident_mb(inference_worker), resident_mb(all_worker)

    print(f"idle worker RSS: inference {slim:.1f} MB, all {full:.1f} MB")
    assert slim < full - 5, (slim, full)


def test_no_serving_process_loads_the_stripe_library_until_a_payment_needs_it():
    """The stripe library holds ~3.4 MB once used; billing imports it where it talks to
    Stripe, so a process that takes no payment does not carry it."""
    loaded = modules_after_start_up("all")

    assert "billing.views" in loaded and "billing.stripe_events" in loaded
    assert not {name for name in loaded if name == "stripe" or name.startswith("stripe.")}
