"""Write what many requests need written together, at once (a group commit).

Reserving and settling a request are each a short transaction that ends on
the organization's credit-account row lock; under load every request of an
organization queued for that lock, and the database round trips and the hops
to the database threads dominated the gateway's time (grouped, one worker at
c=16: 77 -> 105 req/s, commits per request 1.33 -> 0.56). Here a request
that arrives while a group is being written waits for the next one, which
writes everyone who waited meanwhile in one transaction: the account and
each quota counter are updated once per group with the summed amounts. On
PostgreSQL a group holding no quota is written by one statement that commits
on its own, so the account row is locked only while PostgreSQL runs it.

Nothing waits on a timer (novakit/batching.py): alone, a request is
written at once, exactly as before; under load the groups grow by
themselves. Each request still waits for its own commit, so the guarantees
do not change: a request runs only once its reservation has committed,
each is charged exactly once (settlement claims a reservation only while
it is open: billing/services.py), and one
whose process dies first is released by the expiry job. When a group fails
as a whole (one request short of credits, a database error in one
settlement), each of its requests is written alone, so only the ones at
fault fail. (A settlement group may be written partly by then: each
request's settlement is atomic on its own, and a request settled already
is reported as such, not charged again.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from django.db import IntegrityError

from billing.models import Reservation
from billing.services import (
    Hold,
    InsufficientCredits,
    QuotaExceeded,
    Settlement,
    credits_reserve,
    credits_reserve_many,
)
from completions.services import (
    RequestOutcome,
    request_settle_retrying,
    requests_settle_retrying,
)
from novakit.errors import is_database_outage
from novakit.runtime.batching import Batch, Batches, resolve
from novakit.runtime.db import db_async

logger = logging.getLogger(__name__)

# The largest group written at once; the rest wait for the next.
GROUP_MAX = 200

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommit(Generic[In, Out]):
    """Items written in groups (novakit/batching.py), one event loop's queue at a time.

    `many` writes a group at once and returns one result per item,
    in order; `one` writes a single item. Both are plain functions run on the
    database threads. A group failing with one of `refusals` (an expected
    answer such as a 402, not a fault) is written again item by item without
    a warning.
    """

    def __init__(
        self,
        what: str,
        many: Callable[[list[In]], list[Out]],
        one: Callable[[In], Out],
        refusals: tuple[type[Exception], ...] = (),
    ) -> None:
        self.what = what
        self.many = many
        self.one = one
        self.refusals = refusals
        self._batches: Batches[In, Out] = Batches(self._write, max_size=GROUP_MAX)

    async def submit(self, item: In) -> Out:
        """Write `item` in the next group of this event loop; its result once committed."""
        return await self._batches.submit(item)

    async def _write(self, group: Batch[In, Out]) -> None:
        try:
            results = await db_async(self.many)([item for item, _ in group])
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
            results = await asyncio.gather(*[db_async(self.one)(item) for item, _ in group],
                                           return_exceptions=True)
            for (_, future), result in zip(group, results, strict=True):
                resolve(future, result)
            return
        for (_, future), result in zip(group, results, strict=True):
            resolve(future, result)


def _reserve_one(hold: Hold) -> Reservation:
    return credits_reserve(organization_id=hold.organization_id, api_key_id=hold.api_key_id,
                           request_id=hold.request_id, amount=hold.amount, tokens=hold.tokens,
                           targets=hold.targets)


def _settle_many(outcomes: list[RequestOutcome]) -> list[Settlement]:
    return requests_settle_retrying(outcomes=outcomes)


def _settle_one(outcome: RequestOutcome) -> Settlement:
    return request_settle_retrying(outcome=outcome)


reservations: GroupCommit[Hold, Reservation] = GroupCommit(
    "reserving", credits_reserve_many, _reserve_one,
    refusals=(InsufficientCredits, QuotaExceeded, IntegrityError),
)
settlements: GroupCommit[RequestOutcome, Settlement] = GroupCommit(
    "settling", _settle_many, _settle_one,
)


async def reserve_in_group(hold: Hold) -> Reservation:
    """Reserve `hold` in the next group of this event loop; its Reservation once committed."""
    return await reservations.submit(hold)


async def settle_in_group(outcome: RequestOutcome) -> Settlement:
    """Settle `outcome` in the next group of this event loop; its Settlement once committed."""
    return await settlements.submit(outcome)
