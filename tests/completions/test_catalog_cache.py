"""The in-process catalog snapshot: requests that find it cold or stale together share
one read of the catalog, and a change made while a read is under way is not hidden by it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from completions import catalog
from completions.catalog import catalog_cache


@pytest.fixture
def reads(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """Each read of the catalog, numbered; a read takes 50 ms, as a large catalog might."""
    done: list[int] = []
    lock = threading.Lock()

    def read() -> dict:
        time.sleep(0.05)
        with lock:
            done.append(len(done) + 1)
            return {"read": len(done)}

    monkeypatch.setattr(catalog, "load_snapshot", read)
    return done


async def test_given_a_cold_cache_when_many_requests_arrive_together_then_the_catalog_is_read_once(
    reads,
):
    snapshots = await asyncio.gather(*[catalog_cache.get() for _ in range(20)])

    assert reads == [1]
    assert all(snapshot == {"read": 1} for snapshot in snapshots)
    assert await catalog_cache.get() == {"read": 1}  # and kept


async def test_given_a_clear_during_a_read_then_the_next_request_reads_again(reads):
    first = asyncio.ensure_future(catalog_cache.get())
    await asyncio.sleep(0.01)

    catalog_cache.clear()  # e.g. a sync committed while the read was under way
    second = await catalog_cache.get()

    assert await first == {"read": 1}
    assert second == {"read": 2}
    assert await catalog_cache.get() == {"read": 2}


async def test_given_a_waiter_that_is_cancelled_then_the_others_still_get_the_read(reads):
    leaving = asyncio.ensure_future(catalog_cache.get())
    staying = asyncio.ensure_future(catalog_cache.get())
    await asyncio.sleep(0.01)

    leaving.cancel()

    assert await staying == {"read": 1}
    assert reads == [1]
