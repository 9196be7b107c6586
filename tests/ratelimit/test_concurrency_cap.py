"""Given a key allowed one request at a time, then a slow stream holds its slot until it ends
or its client leaves, and a second request meanwhile gets 429."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest


def slow_stream(seconds_between_chunks: float) -> dict[str, object]:
    """A stream of 8 chunks from the fake upstream, this far apart."""
    return {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 50, "messages": [
        {"role": "user", "content": f"Tell me slowly [[fault:slow:{seconds_between_chunks}]]"}]}

QUICK = {"model": "novakit/echo", "max_tokens": 20,
         "messages": [{"role": "user", "content": "Quick one"}]}


@pytest.fixture
def http(live_gateway):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_gateway.api_base, timeout=20) as client:
        yield client


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def first_data_line(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data:"):
            return line
    raise AssertionError("the stream ended before its first event")


def test_given_one_slot_when_a_stream_is_running_then_a_second_request_waits_for_its_end(
    backend, tenant, limited_key, fake_upstream, http
):
    caller = limited_key(tenant, max_concurrent_requests=1)

    with http.stream("POST", "/chat/completions", headers=auth(caller.secret),
                     json=slow_stream(0.1)) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first_data_line(lines)
        during = http.post("/chat/completions", headers=auth(caller.secret), json=QUICK)
        rest = "\n".join(lines)

    after = http.post("/chat/completions", headers=auth(caller.secret), json=QUICK)

    assert during.status_code == 429
    assert during.json()["code"] == "rate_limited"
    assert "concurrent requests for this API key (limit 1)" in during.json()["error"]["message"]
    assert during.headers["retry-after"] == "1"
    assert rest.rstrip().endswith("data: [DONE]")
    assert after.status_code == 200  # the finished stream gave its slot back


def test_given_one_slot_when_the_streaming_client_leaves_then_the_slot_is_freed(
    backend, tenant, limited_key, fake_upstream, http
):
    caller = limited_key(tenant, max_concurrent_requests=1)

    with http.stream("POST", "/chat/completions", headers=auth(caller.secret),
                     json=slow_stream(0.4)) as stream:
        lines = stream.iter_lines()  # kept: dropping the iterator would close the connection
        first_data_line(lines)
        assert http.post("/chat/completions", headers=auth(caller.secret),
                         json=QUICK).status_code == 429
    # Leaving the block closed the connection with about 2.8 s of stream still to come.
    left = time.monotonic()
    deadline = left + 5
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(http.post("/chat/completions", headers=auth(caller.secret),
                                  json=QUICK).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.05)

    assert statuses[-1] == 200
    # Freed when the gateway noticed the disconnect, not when the stream would have ended.
    assert time.monotonic() - left < 1.5


def test_given_one_slot_then_non_streaming_requests_in_a_row_each_get_it(
    backend, tenant, limited_key, http
):
    caller = limited_key(tenant, max_concurrent_requests=1)

    statuses = [http.post("/chat/completions", headers=auth(caller.secret), json=QUICK).status_code
                for _ in range(5)]

    assert statuses == [200] * 5
