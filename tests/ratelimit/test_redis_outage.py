"""Given Redis stops answering mid-run, then the gateway keeps answering (rate limits fail open),
says so in a warning that does not flood the log, counts it, and recovers when Redis is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from accounts import ratelimit
from novakit.runtime import redis as shared_redis
from tests.ratelimit.conftest import RedisServer


@pytest.fixture
def own_redis(settings) -> Iterator[RedisServer]:  # type: ignore[no-untyped-def]
    """A redis-server of this test's own (killing the shared one would hurt everyone else)."""
    server = RedisServer.start()
    settings.REDIS_URL = server.url
    settings.REDIS_RETRY_SECONDS = 0.3
    yield server
    server.stop()


@pytest.fixture
def http(live_gateway):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_gateway.api_base, timeout=20) as client:
        yield client


def ask(http: httpx.Client, secret: str, text: str = "Still there?") -> httpx.Response:
    return http.post("/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json={
        "model": "novakit/echo", "max_tokens": 20, "messages": [{"role": "user", "content": text}]})


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self, text: str) -> list[str]:
        return [record.getMessage() for record in self.records
                if record.levelno == logging.WARNING and text in record.getMessage()]


@pytest.fixture
def logged() -> Iterator[Recorder]:
    """Warnings of the limiter and the Redis module. On the loggers themselves rather than
    caplog's root handler, which a reconfiguration of logging elsewhere can drop mid-test."""
    recorder = Recorder()
    loggers = [logging.getLogger(name) for name in ("accounts.ratelimit", "novakit.runtime.redis")]
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder
    for logger in loggers:
        logger.removeHandler(recorder)


def test_given_redis_dies_mid_run_then_requests_fail_open_with_one_warning(
    own_redis, tenant, limited_key, http, logged
):
    caller = limited_key(tenant, requests_per_minute=2, max_concurrent_requests=1)
    assert [ask(http, caller.secret).status_code for _ in range(3)] == [200, 200, 429]
    let_through = ratelimit.fail_open_total.value
    errors = shared_redis.errors_total["rate_limit"] + shared_redis.errors_total["key_cache"]

    own_redis.stop()
    during = [ask(http, caller.secret, f"outage {number}") for number in range(6)]

    # Limited to 2 per minute and already refused, yet answered: failing open, never a 500.
    assert [response.status_code for response in during] == [200] * 6
    assert during[0].json()["choices"][0]["message"]["content"] == "Echo: outage 0"
    assert during[0].headers["x-ratelimit-limit-requests"] == "2"
    assert ratelimit.fail_open_total.value - let_through == 6
    assert shared_redis.errors_total["rate_limit"] + shared_redis.errors_total["key_cache"] > errors
    # One warning for six requests: the warning is rate-limited itself.
    assert len(logged.warnings("rate limits are not enforced")) == 1
    assert len(logged.warnings("redis unavailable")) == 1


def test_given_redis_comes_back_then_the_limits_hold_again(
    own_redis, tenant, limited_key, http
):
    caller = limited_key(tenant, requests_per_minute=2)
    assert ask(http, caller.secret).status_code == 200
    own_redis.stop()
    assert ask(http, caller.secret).status_code == 200  # failing open

    restarted = RedisServer.start_on(own_redis.port)  # empty: the outage forgot the counts
    time.sleep(0.4)  # past REDIS_RETRY_SECONDS, Redis is tried again
    try:
        statuses = [ask(http, caller.secret).status_code for _ in range(3)]
    finally:
        restarted.stop()

    assert statuses == [200, 200, 429]
