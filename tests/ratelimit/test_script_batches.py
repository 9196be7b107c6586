"""Script calls waiting together go to Redis in one pipeline: the same decisions, fewer trips."""

from __future__ import annotations

import asyncio

import pytest
import redis

from accounts.ratelimit import rate_limit_acquire, rate_limit_release
from completions.admission import new_request_id as new_id
from novakit.errors import ApiError
from novakit.runtime import scripts
from tests.ratelimit.conftest import key_context


@pytest.fixture
def pipelines(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """The number of script calls in each batch sent to Redis."""
    sizes: list[int] = []
    run = scripts.script_calls.run

    async def recorded(batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        await run(batch)

    monkeypatch.setattr(scripts.script_calls, "run", recorded)
    return sizes


async def take(key, request_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        await rate_limit_acquire(key=key, request_id=request_id, tokens=10)
    except ApiError as exc:
        assert exc.status == 429
        return False
    return True


async def test_given_40_requests_at_once_against_a_limit_of_15_then_exactly_15_are_admitted(
    use_redis, pipelines
):
    key = key_context(key_id=1, rpm=15)

    admitted = await asyncio.gather(*[take(key, new_id()) for _ in range(40)])

    assert admitted.count(True) == 15
    assert sum(pipelines) == 40
    assert max(pipelines) > 1, pipelines  # they did share pipelines


async def test_given_slots_released_together_then_each_slot_comes_back(use_redis, pipelines):
    key = key_context(key_id=2, concurrency=15)
    ids = [new_id() for _ in range(40)]

    admitted = await asyncio.gather(*[take(key, request_id) for request_id in ids])
    assert admitted.count(True) == 15
    await asyncio.gather(*[rate_limit_release(request_id=request_id, tokens_used=5)
                           for request_id, ok in zip(ids, admitted, strict=True) if ok])

    assert sum(pipelines) == 40 + 15
    again = await asyncio.gather(*[take(key, new_id()) for _ in range(40)])
    assert again.count(True) == 15


async def test_given_a_redis_that_lost_its_scripts_then_the_calls_still_answer(use_redis):
    key = key_context(rpm=2)
    assert await take(key, new_id())
    redis.Redis.from_url(use_redis).script_flush()

    first, second = await asyncio.gather(take(key, new_id()), take(key, new_id()))

    assert (first, second) == (True, False)  # the limit of 2 holds across the flush
