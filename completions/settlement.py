"""Settling from the event loop: once, whatever happens, with one retry policy.

`settle` starts the settlement in a task of its own, held in
`lifespan.in_flight` (a client that leaves cannot interrupt it, the event
loop cannot drop it, and a graceful shutdown waits for it), and answers as
soon as it knows what will be charged:
- written: the Settlement;
- the database is away, or did not take it in the first short tries: None.
  The same settlement goes on being tried in the background with waits
  doubling up to `RETRY_MAX_DELAY`, until it commits or the reservation's TTL
  has passed (then the expiry job closes it and records it as interrupted),
  so what the answer shows is what will be charged;
- refused for another reason (a bug, data the database refuses): the request
  is settled instead as a charge of its whole reservation (`fallback_outcome`);
  when that is refused too, SettlementFailed: the answer must not go out.
Billing closes a reservation at most once, so a retry never charges twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError

from accounts.ratelimit import rate_limit_release
from billing import commit
from billing.closing import Settlement
from completions.services import RequestOutcome, UsageRecords, fallback_outcome, usage_record
from novakit import metrics
from novakit.errors import ApiError, is_database_outage
from novakit.runtime import lifespan

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Waits between attempts at a settlement the database did not take: doubling from the first.
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 5.0
# Attempts the answer waits for before it goes out with the charge the retries will commit.
ATTEMPTS_BEFORE_ANSWER = 3


class SettlementFailed(ApiError):
    """Neither the settlement of a delivered answer nor its fallback could be written."""

    def __init__(self) -> None:
        super().__init__("server_error",
                         "The request's charge could not be recorded; it was not charged")


def track(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `coroutine` as a task held in `lifespan.in_flight` (a graceful shutdown waits
    for it) until it ends."""
    task = asyncio.ensure_future(coroutine)
    lifespan.in_flight.add(task)
    task.add_done_callback(lifespan.in_flight.discard)
    return task


async def settle(outcome: RequestOutcome) -> Settlement | None:
    """Settle `outcome` exactly once; what to show of it (see the module's docstring)."""
    answer: asyncio.Future[Settlement | None] = asyncio.get_running_loop().create_future()
    # Read even when the caller has left, so an exception set later is not reported as lost.
    answer.add_done_callback(lambda done: done.cancelled() or done.exception())
    track(_settle_until_written(outcome, answer))
    return await asyncio.shield(answer)


async def settle_quietly(outcome: RequestOutcome) -> None:
    """Settle a request whose answer is an error already: a failure is logged, not raised."""
    try:
        await settle(outcome)
    except SettlementFailed:
        pass


def settle_later(outcome: RequestOutcome) -> None:
    """Settle `outcome` in the background (from a callback, with no one to answer)."""
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: track(settle_quietly(outcome)), context=contextvars.Context())


async def _settle_until_written(outcome: RequestOutcome,
                                answer: asyncio.Future[Settlement | None]) -> None:
    deadline = time.monotonic() + settings.RESERVATION_TTL_SECONDS
    delay, attempts, current = RETRY_FIRST_DELAY, 0, outcome
    try:
        while True:
            attempts += 1
            try:
                settlement = await commit.close(
                    current.closing(), UsageRecords([usage_record(current)]))
            except (OperationalError, InterfaceError) as exc:
                outage = is_database_outage(exc)
                if outage or attempts >= ATTEMPTS_BEFORE_ANSWER:
                    _answer(answer, None)
                if time.monotonic() + delay >= deadline:
                    logger.error("gave up settling %s: the expiry job closes its reservation",
                                 outcome.request_id)
                    return
                logger.warning("settling %s failed (%s); trying again in %.2f s",
                               outcome.request_id, "database away" if outage else "error", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            except Exception:
                if current is outcome:
                    logger.exception("settlement failed for %s; charging its reservation instead",
                                     outcome.request_id)
                    current = fallback_outcome(outcome)
                    continue
                logger.exception("the fallback settlement of %s failed too", outcome.request_id)
                _answer(answer, SettlementFailed())
                return
            finally:
                if attempts == 1:
                    # The request is over: free its concurrency slot, correct its tokens.
                    await rate_limit_release(request_id=outcome.request_id,
                                             tokens_used=outcome.tokens)
            if not settlement.already_closed:
                metrics.record_outcome(current, charged=settlement.charged)
            if not answer.done():
                _answer(answer, settlement)
            else:
                logger.info("settled %s once the database was back", outcome.request_id)
            return
    finally:
        _answer(answer, None)  # whatever happened, no caller waits forever


def _answer(answer: asyncio.Future[Settlement | None], result: Settlement | Exception | None,
            ) -> None:
    if answer.done():
        return
    if isinstance(result, Exception):
        answer.set_exception(result)
    else:
        answer.set_result(result)
