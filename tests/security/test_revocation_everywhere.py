"""Given two gateway processes, when a key is revoked through one of them (its management
API), then the other refuses the key: at its very next request with
Redis, within API_KEY_CACHE_SECONDS without (README "Revocation across processes").

tests/ratelimit/test_two_gateways.py revokes from the test process; here the revocation is
made inside a gateway, as in production, and the Redis-less bound is measured too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from accounts.services import api_key_create
from tests.conftest import Tenant
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures used by name)
    _isolated_limits,
    database_url,
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import GatewayProcess, gateway_start

ECHO = {"model": "novakit/echo", "max_tokens": 5,
        "messages": [{"role": "user", "content": "still there?"}]}


def chat(base: str, secret: str) -> httpx.Response:
    return httpx.post(f"{base}/chat/completions", json=ECHO, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"})


def revoke_through(base: str, manager: Tenant, key_id: int) -> None:
    response = httpx.post(f"{base}/keys/{key_id}/revoke", json={"reason": "leaked"}, timeout=30,
                          headers={"Authorization": f"Bearer {manager.secret}"})
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"]


def test_with_redis_a_revocation_in_one_gateway_reaches_the_other_at_its_next_request(
        gateway_processes, tenant):  # noqa: F811
    doomed, secret = api_key_create(organization=tenant.org, name="doomed")
    first, second = gateway_processes(2)  # each trusts a cached lookup for 300 s
    assert [chat(g.api_base, secret).status_code for g in (first, second)] == [200, 200]

    revoke_through(first.api_base, tenant, doomed.pk)
    refused = chat(second.api_base, secret)

    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]
    assert chat(first.api_base, secret).status_code == 401
    assert chat(second.api_base, tenant.secret).status_code == 200  # other keys still work


CACHE_SECONDS = 1.0


@pytest.fixture
def gateways_without_redis(transactional_db: None, catalog: None, tmp_path: Path
                           ) -> Iterator[Callable[[], GatewayProcess]]:
    started: list[GatewayProcess] = []
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    env.update(DATABASE_URL=database_url(), API_KEY_CACHE_SECONDS=str(CACHE_SECONDS),
               IN_PROCESS_BEAT="0", LOG_LEVEL="WARNING")

    def start() -> GatewayProcess:
        gateway = gateway_start(env=env, log=tmp_path / f"gateway-{len(started)}.log")
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def test_without_redis_the_other_gateway_refuses_the_key_within_the_cache_time(
        gateways_without_redis, tenant):
    doomed, secret = api_key_create(organization=tenant.org, name="doomed")
    first, second = gateways_without_redis(), gateways_without_redis()
    assert chat(second.api_base, secret).status_code == 200  # cached in the second now
    cached_at = time.monotonic()

    revoke_through(first.api_base, tenant, doomed.pk)
    assert chat(first.api_base, secret).status_code == 401  # the revoking process: at once
    while (status := chat(second.api_base, secret).status_code) == 200:
        assert time.monotonic() - cached_at < CACHE_SECONDS + 1.0, "still accepted"
        time.sleep(0.05)

    assert status == 401
