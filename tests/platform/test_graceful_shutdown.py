"""SIGTERM during an open stream: the stream completes, its usage is settled, the process exits;
a second signal (novakit.runtime.serve: SIGINT, gunicorn's quick shutdown) stops waiting."""

from __future__ import annotations

import signal
import time
from contextlib import AbstractContextManager

import httpx
import pytest

from billing.models import Reservation
from completions.models import UsageRecord
from tests.conftest import Tenant
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import GatewayProcess


@pytest.fixture
def upstream_in_env(fake_upstream, monkeypatch):  # type: ignore[no-untyped-def]
    """The gateway process reads its upstream from the environment."""
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", "fake-upstream-key")


def slow_stream(client: httpx.Client, gateway: GatewayProcess, tenant: Tenant,
                seconds_between_chunks: float) -> AbstractContextManager[httpx.Response]:
    body = {"model": "openai/gpt-4o-mini", "stream": True, "messages": [
        {"role": "user", "content": f"take your time [[fault:slow:{seconds_between_chunks}]]"}]}
    return client.stream("POST", f"{gateway.api_base}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {tenant.secret}"})


@pytest.mark.parametrize("workers", [None, 2], ids=["uvicorn", "novakit.runtime.serve"])
def test_sigterm_lets_an_open_stream_finish_and_settles_it(
    tenant, upstream_in_env, gateway_processes, workers  # noqa: F811
):
    [gateway] = gateway_processes(1, workers=workers)

    with httpx.Client(timeout=30) as client, slow_stream(client, gateway, tenant, 0.25) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        gateway.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]

    assert first.startswith("data: {")
    assert rest[-1] == "data: [DONE]"  # the stream was allowed to finish
    assert '"credits_used"' in rest[-2]
    # It exits on its own once the stream is done (uvicorn re-raises the signal it got;
    # novakit.runtime.serve's gunicorn exits 0 once its workers have).
    assert gateway.process.wait(30) in (0, -signal.SIGTERM)
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == "ok" and record.credits > 0
    assert Reservation.objects.get(request_id=request_id).status == "settled"


def test_a_second_signal_stops_the_workers_without_waiting_for_open_streams(
    tenant, upstream_in_env, gateway_processes  # noqa: F811
):
    [gateway] = gateway_processes(1, workers=2)  # novakit.runtime.serve

    with httpx.Client(timeout=60) as client, slow_stream(client, gateway, tenant, 1.0) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # after the first one the stream would be let finish (seconds more)
        gateway.process.send_signal(signal.SIGINT)
        try:
            rest = [line for line in lines if line.startswith("data:")]
        except httpx.TransportError:  # cut mid-chunk
            rest = []

    assert "data: [DONE]" not in rest
    assert gateway.process.wait(30) == 0
