"""SIGTERM during an open stream: the stream completes, its usage is settled, the process exits."""

from __future__ import annotations

import signal

import httpx
import pytest

from billing.models import Reservation
from completions.models import UsageRecord
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)


@pytest.mark.parametrize("workers", [None, 2], ids=["uvicorn", "novakit.serve"])
def test_sigterm_lets_an_open_stream_finish_and_settles_it(
    tenant, fake_upstream, gateway_processes, monkeypatch, workers  # noqa: F811
):
    # The gateway process reads its upstream from the environment.
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", "fake-upstream-key")
    [gateway] = gateway_processes(1, workers=workers)
    body = {"model": "openai/gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "take your time [[fault:slow:0.25]]"}]}

    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{gateway.api_base}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {tenant.secret}"},
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        gateway.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]

    assert first.startswith("data: {")
    assert rest[-1] == "data: [DONE]"  # the stream was allowed to finish
    assert '"credits_used"' in rest[-2]
    # It exits on its own once the stream is done (uvicorn re-raises the signal it got;
    # novakit.serve's supervisor exits 0 once its workers have).
    assert gateway.process.wait(30) in (0, -signal.SIGTERM)
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == "ok" and record.credits > 0
    assert Reservation.objects.get(request_id=request_id).status == "settled"
