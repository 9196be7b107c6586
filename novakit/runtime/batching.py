"""Batches of work from the requests of one event loop, formed by arrival, never by a timer.

The first item starts a batch at once; every item that arrives while a
batch runs waits for the next one, which takes all of them. Alone, an item
runs at once, exactly as without batching; under load the batches grow by
themselves. Every item's batch starts after the item arrived, so it sees
everything that had happened before it was submitted: a batched database
write or Redis read answers each caller as its own call would have.

Used by the reservation and settlement groups (completions/group_commit.py),
the Redis script pipelines (novakit/runtime/scripts.py) and the API keys'
epoch reads (accounts/auth.py).

Measured (one worker, c=16, PostgreSQL + Redis, 2026-11-26): settling in
groups (dfc2ef3, with other hot-path changes) 54 -> 91 req/s, CPU 17.20 ->
10.51 ms per request; reserving in groups too (d07d19e) 77 -> 105 req/s,
CPU 11.92 -> 8.65 ms, commits per request 1.33 -> 0.56.

Off switch: `BATCHING=0`: every item runs on its own, at once, as a batch of one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from django.conf import settings

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# One batch's items with the futures their callers wait on; the runner resolves each.
Batch = list[tuple[In, "asyncio.Future[Out]"]]


class Batches(Generic[In, Out]):
    """Items handed to `run` in batches of at most `max_size`, one queue per event loop.

    `run` must resolve every future of its batch (`resolve` does it safely).
    """

    def __init__(self, run: Callable[[Batch[In, Out]], Awaitable[None]], *, max_size: int) -> None:
        self.run = run
        self.max_size = max_size
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[In, Out]] = (
            weakref.WeakKeyDictionary())

    async def submit(self, item: In) -> Out:
        """`item`'s result, once the batch that takes it has run."""
        loop = asyncio.get_running_loop()
        if not settings.BATCHING:
            alone: asyncio.Future[Out] = loop.create_future()
            await self.run([(item, alone)])
            return await alone
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue(self)
        future: asyncio.Future[Out] = loop.create_future()
        queue.waiting.append((item, future))
        if queue.running is None:
            # A context of its own: not the first caller's (its request id in the logs).
            queue.running = loop.create_task(queue.drain(), context=contextvars.Context())
        return await future


class _Queue(Generic[In, Out]):
    """The items of one event loop waiting for a batch, and the task running batches."""

    def __init__(self, batches: Batches[In, Out]) -> None:
        self.batches = batches
        self.waiting: Batch[In, Out] = []
        self.running: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        batch: Batch[In, Out] = []
        try:
            while self.waiting:
                size = self.batches.max_size
                batch, self.waiting = self.waiting[:size], self.waiting[size:]
                try:
                    await self.batches.run(batch)
                except Exception as exc:  # a runner's bug: its callers get the error, and
                    logger.exception("a batch of %d failed", len(batch))  # the queue goes on
                    for _, future in batch:
                        resolve(future, exc)
        except BaseException:  # cancelled (the loop is closing): nobody is left waiting
            for _, future in [*batch, *self.waiting]:
                future.cancel()
            self.waiting = []
            raise
        finally:
            self.running = None


def resolve(future: asyncio.Future[Out], result: Out | BaseException) -> None:
    """Give a caller its result (or error), unless it stopped waiting (its loop is closing)."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
