"""Given keys with limits, when clients call /chat/completions on the live gateway, then every
admitted or refused answer carries OpenAI's rate limit headers, and a refusal costs nothing."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest

from accounts.auth import authenticate_secret
from accounts.ratelimit import rate_limit_acquire
from billing.models import LedgerEntry, Reservation
from tests.ratelimit.durations import seconds
from tests.support.openai_schema import validate

RATE_HEADERS = [f"x-ratelimit-{kind}-{unit}" for unit in ("requests", "tokens")
                for kind in ("limit", "remaining", "reset")]


def chat(http: httpx.Client, secret: str, *, stream: bool = False, max_tokens: int = 100,
         text: str = "Hello there") -> httpx.Response:
    return http.post("/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json={
        "model": "novakit/echo", "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens, "stream": stream,
    })


@pytest.fixture
def http(live_gateway):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_gateway.api_base, timeout=20) as client:
        yield client


def test_given_a_limited_key_then_an_answer_carries_the_limits_as_openai_does(
    backend, tenant, limited_key, http
):
    caller = limited_key(tenant, requests_per_minute=10, tokens_per_minute=20_000)

    response = chat(http, caller.secret, max_tokens=1_000)

    assert response.status_code == 200
    headers = response.headers
    assert set(RATE_HEADERS) <= set(headers)
    assert "retry-after" not in headers
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    # One of ten requests per minute comes back in 6 s.
    assert 5.9 < seconds(headers["x-ratelimit-reset-requests"]) <= 6
    assert headers["x-ratelimit-limit-tokens"] == "20000"
    estimate = 20_000 - int(headers["x-ratelimit-remaining-tokens"])
    assert 1_000 < estimate < 1_050  # max_tokens plus the prompt's estimate
    # 20,000 per minute refill 1,000 tokens in 3 s.
    expected = estimate * 60 / 20_000
    assert expected - 0.1 < seconds(headers["x-ratelimit-reset-tokens"]) <= expected + 0.01


def test_given_a_stream_then_its_response_carries_the_same_headers(
    backend, tenant, limited_key, http
):
    caller = limited_key(tenant, requests_per_minute=10)

    body = {"model": "novakit/echo", "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    with http.stream("POST", "/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {caller.secret}"}) as response:
        body = response.read().decode()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-limit-requests"] == "10"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    # The organization's default token limit is the one left to report.
    assert response.headers["x-ratelimit-limit-tokens"] == "10000000"
    assert body.rstrip().endswith("data: [DONE]")


def test_given_default_limits_then_every_answer_reports_the_organization_defaults(
    backend, tenant, http, settings
):
    response = chat(http, tenant.secret)

    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == str(
        settings.RATE_LIMIT_ORG_RPM_DEFAULT)
    assert response.headers["x-ratelimit-limit-tokens"] == str(settings.RATE_LIMIT_ORG_TPM_DEFAULT)


def test_given_the_limit_is_reached_then_the_sdk_gets_a_typed_429_with_retry_after(
    backend, tenant, limited_key, client_for, http
):
    caller = limited_key(tenant, requests_per_minute=2)
    client = client_for(caller)
    for _ in range(2):
        client.chat.completions.create(
            model="novakit/echo", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)
    reservations = Reservation.objects.count()
    ledger = LedgerEntry.objects.count()

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="novakit/echo", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)

    response = caught.value.response
    assert response.status_code == 429
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == body["code"] == "rate_limited"
    # Two per minute: the next one fits 30 s after the first.
    assert 29 <= int(response.headers["retry-after"]) <= 30
    assert 28_000 < int(response.headers["retry-after-ms"]) <= 30_000
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    # Refused before the reservation: nothing reserved, nothing on the ledger.
    assert Reservation.objects.count() == reservations
    assert LedgerEntry.objects.count() == ledger
    assert tenant.refresh_account().reserved == 0


def test_given_a_429_then_the_sdk_waits_as_told_and_its_retry_succeeds(
    use_redis, tenant, limited_key, client_for
):
    # 30 per minute: one request comes back every 2 s.
    caller = limited_key(tenant, requests_per_minute=30)
    key = authenticate_secret(caller.secret, scope=None)

    async def use_the_whole_minute() -> None:
        for _ in range(30):
            await rate_limit_acquire(key=key, request_id=f"fill-{uuid.uuid4().hex}", tokens=1)

    asyncio.run(use_the_whole_minute())
    started = time.monotonic()

    completion = client_for(caller, max_retries=1).chat.completions.create(
        model="novakit/echo", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)

    assert completion.choices[0].message.content == "Echo: Hi"
    assert 1.5 < time.monotonic() - started < 5  # retry-after-ms, not the SDK's 0.5 s backoff


def test_given_no_credits_then_the_402_is_not_retried_and_still_reports_the_limits(
    backend, tenant_factory, limited_key, client_for, http
):
    poor = limited_key(tenant_factory("poor", credits=0), requests_per_minute=10)

    with pytest.raises(openai.APIStatusError) as caught:
        client_for(poor, max_retries=2).chat.completions.create(
            model="novakit/echo", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)

    response = caught.value.response
    assert response.status_code == 402
    assert response.json()["code"] == "quota_exceeded"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    # One request reached the limiter: the SDK did not retry the 402.
    assert chat(http, poor.secret).headers["x-ratelimit-remaining-requests"] == "8"
    assert poor.refresh_account().reserved == 0


def test_given_an_upstream_failure_then_the_error_carries_the_headers_and_refunds_the_tokens(
    backend, tenant, limited_key, fake_upstream, http
):
    caller = limited_key(tenant, tokens_per_minute=10_000)
    fake_upstream.scenario = "status:400"

    failed = http.post("/chat/completions", headers={"Authorization": f"Bearer {caller.secret}"},
                       json={"model": "openai/gpt-4o-mini", "max_tokens": 2_000,
                             "messages": [{"role": "user", "content": "Hi"}]})
    fake_upstream.scenario = "ok"
    after = chat(http, caller.secret, max_tokens=2_000)

    assert failed.status_code == 400
    assert failed.headers["x-ratelimit-limit-tokens"] == "10000"
    estimate = 10_000 - int(failed.headers["x-ratelimit-remaining-tokens"])
    # The failed request used nothing: all of its estimate came back.
    assert after.status_code == 200
    assert int(after.headers["x-ratelimit-remaining-tokens"]) >= 10_000 - estimate - 5
