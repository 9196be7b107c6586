"""Holding and closing from the event loop, in groups: billing's async interface.

Reserving and settling a request each end on the organization's credit
account row. A request that arrives while a group is being written waits for
the next one, which writes everyone who waited meanwhile at once: each
account and counter is updated once per group with the summed amounts. This
took the benchmark (non-streaming completions, c=16, one worker) from 77 to
105 req/s and cut the commits per request from 1.33 to 0.56.

Nothing waits on a timer (`novakit.runtime.batching`): alone, a request is written
at once; under load the groups grow by themselves. Each caller still waits
for its own commit, so the guarantees are those of `billing.holds` and
`billing.closing`. A group that fails as a whole (one request short of
credits, one record the database refuses) is written again request by
request, so only the ones at fault fail; a group failing on a database
outage fails every request in it, and is not tried again here (the caller's
retry policy decides, completions.settlement).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from django.db import IntegrityError, InterfaceError, OperationalError, connection

from billing.closing import Closing, Recorder, Settlement, holds_close
from billing.holds import Hold, holds_place
from billing.ledger import InsufficientCredits
from billing.models import Reservation
from billing.quotas import QuotaExceeded
from novakit.errors import is_database_outage
from novakit.runtime.batching import Batch, Batches, resolve
from novakit.runtime.db import db_async

logger = logging.getLogger(__name__)

# The largest group written at once; the rest wait for the next.
GROUP_MAX = 200

In = TypeVar("In")
Out = TypeVar("Out")


def _on_a_sound_connection(write: Callable[[list[In]], list[Out]],
                           ) -> Callable[[list[In]], list[Out]]:
    """`write`, closing the thread's connection after a database error: the next
    attempt must not run on a connection that may be broken."""
    def guarded(items: list[In]) -> list[Out]:
        try:
            return write(items)
        except (OperationalError, InterfaceError):
            connection.close()
            raise
    return guarded


class GroupCommit(Generic[In, Out]):
    """Items written in groups by `write` (a plain function, run on a database thread,
    one result per item in order). A group failing with one of `refusals` (an
    expected answer such as a 402, not a fault) is written again item by item
    without a warning."""

    def __init__(self, what: str, write: Callable[[list[In]], list[Out]],
                 refusals: tuple[type[Exception], ...] = ()) -> None:
        self.what = what
        self.write = _on_a_sound_connection(write)
        self.refusals = refusals
        self._batches: Batches[In, Out] = Batches(self._write, max_size=GROUP_MAX)

    async def submit(self, item: In) -> Out:
        """Write `item` in the next group of this event loop; its result once committed."""
        return await self._batches.submit(item)

    async def _write(self, group: Batch[In, Out]) -> None:
        try:
            results = await db_async(self.write)([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1 or is_database_outage(exc):
                for _, future in group:
                    resolve(future, exc)
                return
            if not isinstance(exc, self.refusals):
                logger.warning("%s a group of %d failed; each alone now", self.what, len(group),
                               exc_info=True)
            # Side by side on the database threads: a group refused for one request's
            # sake must not make everyone else on this loop wait in line.
            alone = await asyncio.gather(*[db_async(self.write)([item]) for item, _ in group],
                                         return_exceptions=True)
            for (_, future), written in zip(group, alone, strict=True):
                resolve(future, written if isinstance(written, BaseException) else written[0])
            return
        for (_, future), result in zip(group, results, strict=True):
            resolve(future, result)


def _close_group(items: list[tuple[Closing, Recorder | None]]) -> list[Settlement]:
    recorders = [recorder for _, recorder in items if recorder is not None]
    recorder = recorders[0].joined(recorders[1:]) if recorders else None
    return holds_close([closing for closing, _ in items], recorder=recorder)


holds: GroupCommit[Hold, Reservation] = GroupCommit(
    "reserving", holds_place, refusals=(InsufficientCredits, QuotaExceeded, IntegrityError))
closings: GroupCommit[tuple[Closing, Recorder | None], Settlement] = GroupCommit(
    "settling", _close_group)


async def hold(item: Hold) -> Reservation:
    """Reserve `item` in the next group of this event loop; its Reservation once committed."""
    return await holds.submit(item)


async def close(closing: Closing, recorder: Recorder | None = None) -> Settlement:
    """Close `closing` (with what `recorder` writes) in the next group; its Settlement."""
    return await closings.submit((closing, recorder))
