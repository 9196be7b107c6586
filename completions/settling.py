"""Settle the requests that finish together in one transaction (a group commit).

Settling one request is a transaction of about ten statements that ends on
the organization's credit-account row lock; under load every request of an
organization queued for that lock and the database round trips dominated
the gateway's time (bench/results/REPORT.md). Here a request that finishes
while a settlement is being written waits for the next one, which settles
everyone who waited meanwhile in one transaction: the account and each
quota counter are updated once per group with the summed amounts.

Nothing waits on a timer: alone, a request is settled at once, exactly as
before; under load the groups grow by themselves. The answer still goes out
only after its settlement has committed, so the guarantees do not change:
each request is charged exactly once (the claim in `credits_close_many`),
and one whose process dies first is released by the expiry job.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref

from billing.services import Settlement
from completions.services import (
    RequestOutcome,
    request_settle_retrying,
    requests_settle_retrying,
)
from novakit.db import db_async
from novakit.errors import is_database_outage

logger = logging.getLogger(__name__)

# The largest group one transaction settles; the rest wait for the next.
GROUP_MAX = 200


class _Groups:
    """The requests of one event loop waiting to be settled, and the task settling them."""

    def __init__(self) -> None:
        self.waiting: list[tuple[RequestOutcome, asyncio.Future[Settlement]]] = []
        self.settling: asyncio.Task[None] | None = None

    async def settle(self, outcome: RequestOutcome) -> Settlement:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Settlement] = loop.create_future()
        self.waiting.append((outcome, future))
        if self.settling is None:
            # A context of its own: not the first request's (its request id in the logs).
            self.settling = loop.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting[:GROUP_MAX], self.waiting[GROUP_MAX:]
                await _settle_group(group)
        finally:
            self.settling = None


async def _settle_group(group: list[tuple[RequestOutcome, asyncio.Future[Settlement]]]) -> None:
    try:
        settlements = await db_async(requests_settle_retrying)(
            outcomes=[outcome for outcome, _ in group])
    except Exception as exc:
        if len(group) == 1 or is_database_outage(exc):
            for _, future in group:
                _resolve(future, exc)
            return
        # Something in one request's settlement failed the whole group: settle
        # each on its own so the others are not held back by it.
        logger.warning("settling a group of %d failed; settling each alone", len(group),
                       exc_info=True)
        for outcome, future in group:
            try:
                _resolve(future, await db_async(request_settle_retrying)(outcome=outcome))
            except Exception as alone:
                _resolve(future, alone)
        return
    for (_, future), settlement in zip(group, settlements, strict=True):
        _resolve(future, settlement)


def _resolve(future: asyncio.Future[Settlement], result: Settlement | BaseException) -> None:
    if future.done():  # its waiter is gone (the loop is closing): nothing to tell
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Groups] = (
    weakref.WeakKeyDictionary())


async def settle_in_group(outcome: RequestOutcome) -> Settlement:
    """Settle `outcome` in the next group of this event loop; its Settlement once committed."""
    loop = asyncio.get_running_loop()
    groups = _groups.get(loop)
    if groups is None:
        groups = _groups[loop] = _Groups()
    return await groups.settle(outcome)
