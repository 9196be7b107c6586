"""Given two gateway processes on one Redis, then a key's limit holds across both, and a
revocation made anywhere reaches both at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from accounts.services import api_key_revoke, organization_set_active
from tests.ratelimit.conftest import GatewayProcess

ECHO = {"model": "novakit/echo", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Which process answers?"}]}


def post(gateway: GatewayProcess, secret: str) -> httpx.Response:
    return httpx.post(f"{gateway.api_base}/chat/completions", json=ECHO, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"})


def test_given_two_processes_when_requests_alternate_between_them_then_n_rpm_admits_n_in_all(
    gateway_processes, tenant, limited_key
):
    caller = limited_key(tenant, requests_per_minute=5)
    first, second = gateway_processes(2)
    targets = [first, second] * 8  # 16 requests, interleaved, many at once

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda gateway: post(gateway, caller.secret), targets))

    statuses = [response.status_code for response in responses]
    assert 500 not in statuses, [gateway.log.read_text()[-3000:] for gateway in (first, second)]
    assert statuses.count(200) == 5, statuses  # not 5 per process
    assert statuses.count(429) == 11, statuses
    for response in responses:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert int(response.headers["retry-after"]) >= 1
    # Both processes answered some of each, so both really used the shared counters.
    by_port = {gateway.port: {r.status_code for r, g in zip(responses, targets, strict=True)
                              if g is gateway} for gateway in (first, second)}
    assert all(429 in statuses_of for statuses_of in by_port.values()), by_port


def test_given_two_processes_then_a_revocation_reaches_both_at_once(
    gateway_processes, tenant, limited_key
):
    caller = limited_key(tenant)
    other = limited_key(tenant)
    gateways = gateway_processes(2)
    # Both processes now hold the keys in their cache, trusted for 300 s.
    assert [post(gateway, caller.secret).status_code for gateway in gateways] == [200, 200]
    assert [post(gateway, other.secret).status_code for gateway in gateways] == [200, 200]

    api_key_revoke(key=caller.key, reason="leaked")  # this process, committed

    refused = [post(gateway, caller.secret) for gateway in gateways]
    assert [response.status_code for response in refused] == [401, 401]
    assert all("revoked" in response.json()["error"]["message"] for response in refused)
    # The other key was read again too, and is still good.
    assert [post(gateway, other.secret).status_code for gateway in gateways] == [200, 200]

    organization_set_active(organization=tenant.org, active=False, reason="unpaid")

    suspended = [post(gateway, other.secret) for gateway in gateways]
    assert [response.status_code for response in suspended] == [403, 403]
