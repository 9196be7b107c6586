"""Batches form by arrival: alone an item runs at once; a failed batch fails only its own items."""

from __future__ import annotations

import asyncio

from novakit.runtime.batching import Batch, Batches, resolve


async def test_given_items_arriving_while_a_batch_runs_then_they_share_the_next_one() -> None:
    sizes: list[int] = []

    async def run(batch: Batch[int, int]) -> None:
        sizes.append(len(batch))
        await asyncio.sleep(0.01)
        for item, future in batch:
            resolve(future, item * 10)

    batches: Batches[int, int] = Batches(run, max_size=100)
    first = asyncio.ensure_future(batches.submit(1))
    await asyncio.sleep(0)  # the first batch has started with one item
    results = await asyncio.gather(first, *[batches.submit(n) for n in range(2, 6)])

    assert results == [10, 20, 30, 40, 50]
    assert sizes == [1, 4]


async def test_given_a_batch_that_fails_then_items_waiting_behind_it_still_run() -> None:
    async def run(batch: Batch[int, int]) -> None:
        await asyncio.sleep(0.01)
        if batch[0][0] == 1:
            raise RuntimeError("the first batch breaks")
        for item, future in batch:
            resolve(future, item)

    batches: Batches[int, int] = Batches(run, max_size=100)
    first = asyncio.ensure_future(batches.submit(1))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batches.submit(n)) for n in (2, 3)]
    done = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 5)

    assert isinstance(done[0], RuntimeError)
    assert done[1:] == [2, 3]


async def test_given_batching_off_then_every_item_runs_alone_and_at_once(settings) -> None:
    settings.BATCHING = False
    sizes: list[int] = []
    running = 0
    most = 0

    async def run(batch: Batch[int, int]) -> None:
        nonlocal running, most
        sizes.append(len(batch))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        for item, future in batch:
            resolve(future, item * 10)

    batches: Batches[int, int] = Batches(run, max_size=100)
    results = await asyncio.gather(*[batches.submit(n) for n in range(1, 6)])

    assert results == [10, 20, 30, 40, 50]
    assert sizes == [1] * 5
    assert most == 5  # none waited for another's batch
