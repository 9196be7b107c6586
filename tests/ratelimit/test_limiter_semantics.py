"""The limiter's rules, the same for the in-process limiter and for Redis (`backend`)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from accounts.ratelimit import format_duration, leases, rate_limit_acquire, rate_limit_release
from novakit.errors import ApiError
from novakit.runtime import redis as shared_redis
from tests.ratelimit.conftest import key_context
from tests.ratelimit.durations import seconds


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


async def take(key, tokens: int = 10, request_id: str | None = None):  # type: ignore[no-untyped-def]
    return await rate_limit_acquire(key=key, request_id=request_id or new_id(), tokens=tokens)


async def refused(key, tokens: int = 10) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as caught:
        await take(key, tokens)
    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    assert caught.value.body()["error"]["type"] == "rate_limit_error"
    return caught.value


async def test_given_a_key_limited_to_5_rpm_when_6_requests_come_then_the_sixth_waits_12s(backend):
    key = key_context(rpm=5)

    remaining = [(await take(key)).headers()["x-ratelimit-remaining-requests"] for _ in range(5)]
    error = await refused(key)

    assert remaining == ["4", "3", "2", "1", "0"]
    headers = error.headers
    # The bucket refills one request every 60 s / 5: the sixth fits in 12 s.
    assert headers["Retry-After"] == "12"
    assert 11_000 < int(headers["retry-after-ms"]) <= 12_000
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 59 < seconds(headers["x-ratelimit-reset-requests"]) <= 60
    assert "requests per minute for this API key (limit 5)" in error.message


async def test_given_a_token_limit_then_a_request_fits_only_if_its_estimate_does(backend):
    key = key_context(tpm=1_000)

    first = await take(key, tokens=600)
    error = await refused(key, tokens=500)
    third = await take(key, tokens=400)

    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    assert "tokens per minute for this API key (limit 1000)" in error.message
    assert error.headers["x-ratelimit-remaining-tokens"] == "400"
    assert third.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_given_a_refusal_by_one_limit_then_nothing_is_taken_from_the_others(backend):
    key = key_context(rpm=10, tpm=1_000)
    await take(key, tokens=900)

    await refused(key, tokens=200)  # the tokens do not fit; the request count must not move
    after = await take(key, tokens=50)

    assert after.headers()["x-ratelimit-remaining-requests"] == "8"
    assert after.headers()["x-ratelimit-remaining-tokens"] == "50"


async def test_given_two_keys_of_one_organization_then_they_share_its_limit(backend):
    first = key_context(key_id=1, organization_id=7, org_rpm=3)
    second = key_context(key_id=2, organization_id=7, org_rpm=3)
    elsewhere = key_context(key_id=3, organization_id=8, org_rpm=3)

    await take(first)
    await take(first)
    await take(second)
    error = await refused(first)
    other = await take(elsewhere)

    assert "requests per minute for this organization (limit 3)" in error.message
    assert other.headers()["x-ratelimit-remaining-requests"] == "2"


async def test_given_key_and_organization_limits_then_the_headers_report_the_tighter(backend):
    key = key_context(rpm=100, tpm=500, org_rpm=10, org_tpm=1_000_000)

    headers = (await take(key, tokens=100)).headers()

    assert headers["x-ratelimit-limit-requests"] == "10"  # the organization's
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "500"  # the key's
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    # 1 of 10 rpm refills in 6 s; 100 of 500 tpm in 12 s.
    assert 5.9 < seconds(headers["x-ratelimit-reset-requests"]) <= 6
    assert 11.9 < seconds(headers["x-ratelimit-reset-tokens"]) <= 12


async def test_given_an_organization_without_limits_then_the_platform_defaults_apply(
    backend, settings
):
    settings.RATE_LIMIT_ORG_RPM_DEFAULT = 2
    settings.RATE_LIMIT_ORG_TPM_DEFAULT = 0  # unlimited
    key = key_context(org_rpm=None, org_tpm=None)

    headers = (await take(key)).headers()
    await take(key)
    error = await refused(key)

    assert headers["x-ratelimit-limit-requests"] == "2"
    assert "x-ratelimit-limit-tokens" not in headers
    assert "organization (limit 2)" in error.message


async def test_given_no_limits_at_all_then_everything_passes_without_headers(backend):
    key = key_context(org_rpm=0, org_tpm=0)

    decisions = [await take(key, tokens=10**9) for _ in range(50)]

    assert all(decision.allowed and decision.headers() == {} for decision in decisions)


async def test_given_settlement_then_the_tokens_are_corrected_to_the_actual_usage(backend):
    key = key_context(tpm=1_000)
    request_id = new_id()
    await take(key, tokens=800, request_id=request_id)
    await refused(key, tokens=850)  # without the correction only 200 are left

    await rate_limit_release(request_id=request_id, tokens_used=100)
    after = await take(key, tokens=850)

    # 1000 - 100 used - 850 now; the bucket may have refilled a token meanwhile.
    assert int(after.headers()["x-ratelimit-remaining-tokens"]) in (50, 51)


async def test_given_a_request_that_used_more_than_estimated_then_the_overrun_is_counted(backend):
    key = key_context(tpm=1_000)
    request_id = new_id()
    await take(key, tokens=100, request_id=request_id)

    await rate_limit_release(request_id=request_id, tokens_used=600)
    after = await take(key, tokens=100)

    assert int(after.headers()["x-ratelimit-remaining-tokens"]) in (300, 301)


async def test_given_a_concurrency_cap_then_a_slot_frees_when_its_request_ends(backend):
    key = key_context(concurrency=2)
    first, second = new_id(), new_id()
    await take(key, request_id=first)
    await take(key, request_id=second)

    error = await refused(key)
    await rate_limit_release(request_id=first, tokens_used=10)
    await rate_limit_release(request_id=first, tokens_used=10)  # twice is once
    await take(key)

    assert "concurrent requests for this API key (limit 2)" in error.message
    assert error.headers["Retry-After"] == "1"
    await refused(key)  # the second request and the new one hold both slots


def _process_dies_holding(request_id: str) -> None:
    """What a killed process leaves: its slot taken, nobody to renew or release it."""
    leases._open.pop(request_id)


async def test_given_a_slot_never_released_then_it_expires_on_its_own(backend, settings):
    settings.RATE_LIMIT_CONCURRENCY_LEASE_SECONDS = 1
    key = key_context(concurrency=1)
    request_id = new_id()
    await take(key, request_id=request_id)
    _process_dies_holding(request_id)

    await refused(key)
    await asyncio.sleep(1.1)

    assert (await take(key)).allowed


async def test_given_a_live_request_past_its_lease_then_its_slot_is_renewed_not_freed(
    backend, settings
):
    settings.RATE_LIMIT_CONCURRENCY_LEASE_SECONDS = 1  # renewed every 333 ms
    key = key_context(concurrency=1)
    request_id = new_id()
    await take(key, request_id=request_id)

    await asyncio.sleep(2.5)  # two and a half leases, the request still running
    error = await refused(key)

    assert error.headers["Retry-After"] == "1"  # it may end any moment
    await rate_limit_release(request_id=request_id, tokens_used=10)
    assert (await take(key)).allowed


async def test_given_slots_whose_holders_died_then_retry_after_says_when_the_first_lapses(
    backend, settings
):
    settings.RATE_LIMIT_CONCURRENCY_LEASE_SECONDS = 6  # renewed every 2 s
    key = key_context(concurrency=2)
    holders = [new_id(), new_id()]
    for request_id in holders:
        await take(key, request_id=request_id)
        _process_dies_holding(request_id)

    await asyncio.sleep(3.2)  # both missed their renewal (and its slack)
    error = await refused(key)

    wait_ms = int(error.headers["retry-after-ms"])
    assert 2_000 < wait_ms <= 2_800  # the first lapses 6 s after it was taken
    assert error.headers["Retry-After"] == "3"
    await asyncio.sleep(wait_ms / 1000 + 0.05)
    assert (await take(key)).allowed


async def test_given_concurrent_callers_then_exactly_the_limit_is_admitted(backend):
    key = key_context(rpm=5, concurrency=50)

    results = await asyncio.gather(*(take(key) for _ in range(30)), return_exceptions=True)

    admitted = [result for result in results if not isinstance(result, BaseException)]
    refusals = [result for result in results if isinstance(result, ApiError)]
    assert len(admitted) == 5
    assert len(refusals) == 25


async def test_given_a_request_larger_than_a_minute_of_tokens_then_it_is_a_400_not_a_429(backend):
    key = key_context(tpm=1_000)

    with pytest.raises(ApiError) as caught:
        await take(key, tokens=1_001)

    assert caught.value.status == 400
    assert caught.value.param == "max_tokens"
    assert "1000 tokens per minute" in caught.value.message


async def test_given_rate_limits_are_disabled_then_nothing_is_counted(backend, settings):
    settings.RATE_LIMIT_ENABLED = False
    key = key_context(rpm=1)

    decisions = [await take(key) for _ in range(3)]

    assert all(decision.allowed for decision in decisions)


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0s"), (20, "20ms"), (999, "999ms"), (1_000, "1s"), (1_500, "1.5s"), (8_640, "8.64s"),
    (60_000, "1m0s"), (360_000, "6m0s"), (90_250, "1m30.25s"), (3_723_000, "1h2m3s"),
])
def test_reset_durations_are_written_like_openai(ms, text):
    assert format_duration(ms) == text
    assert seconds(text) == ms / 1000


async def test_given_redis_briefly_unreachable_at_release_then_the_release_happens_later(
    use_redis, settings
):
    settings.REDIS_RETRY_SECONDS = 0.2
    key = key_context(concurrency=1)
    held = new_id()
    await take(key, request_id=held)
    shared_redis.failed("test", ConnectionError("a blip"))  # Redis is left alone for 0.2 s

    await rate_limit_release(request_id=held, tokens_used=10)  # cannot reach Redis: queued
    await asyncio.sleep(0.25)
    after = await take(key)

    assert after.allowed  # the queued release went first, so the slot was free
