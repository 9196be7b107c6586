"""Requests refused at admission (402, 429, 503) in the usage records, at a bounded rate.

A refused request held nothing and is charged nothing, but the developer whose
requests fail needs to see them where the others are: the usage page, its
charts (counted as failed), `/api/v1/usage`, and a receipt under the request id
the refusal's `x-request-id` header names. A refusal is written before it is
answered, as one plain row with status "refused" and 0 credits, and its
`x-request-id` is sent only once it is: as for an admitted request, every
request id a client is shown names a usage record.

A client retrying a 429 in a tight loop must not turn the rate limiter into a
database load: each process records at most `USAGE_REFUSALS_PER_KEY_PER_SECOND`
refusals per key per second; the rest are counted by the metric
`novakit_refusals_unrecorded_total`, not written. And a refusal never fails
because its record could not be written (the database away): it is logged.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

from django.conf import settings

from accounts.auth import KeyContext
from completions.models import UsageRecord
from novakit import metrics
from novakit.errors import ApiError
from novakit.runtime.db import db_async

logger = logging.getLogger(__name__)

# What admission refuses that the client's usage shows: credits or quota short, rate
# limited, no provider to send it to. A request that is invalid (400, 404) is not usage.
RECORDED_STATUSES = frozenset({402, 429, 503})

# key id -> (the second it counts, refusals recorded in it)
_recorded_this_second: dict[int, tuple[int, int]] = {}


def _within_budget(key_id: int) -> bool:
    second = int(time.monotonic())
    counted_second, count = _recorded_this_second.get(key_id, (second, 0))
    if counted_second != second:
        count = 0
    if count >= settings.USAGE_REFUSALS_PER_KEY_PER_SECOND:
        return False
    if len(_recorded_this_second) > 10_000:  # keys seen long ago: start afresh
        _recorded_this_second.clear()
    _recorded_this_second[key_id] = (second, count + 1)
    return True


def _write(record: UsageRecord) -> None:
    record.save(force_insert=True)


async def refusal_record(*, request_id: str, key: KeyContext, model: str, streamed: bool,
                         error: ApiError, latency_ms: int,
                         multiplier: Decimal = Decimal(0)) -> None:
    """Record `error`, which refused the request `request_id`, if its status is one usage shows."""
    if error.status not in RECORDED_STATUSES:
        return
    if not _within_budget(key.key_id):
        metrics.REFUSALS_UNRECORDED.labels(http_status=str(error.status)).inc()
        return
    record = UsageRecord(
        request_id=request_id, organization_id=key.organization_id, api_key_id=key.key_id,
        model=model, multiplier=multiplier, status=UsageRecord.Status.REFUSED,
        http_status=error.status, error_code=error.code, streamed=streamed,
        latency_ms=latency_ms, prompt_rate=settings.CREDITS_PER_1K_PROMPT_TOKENS,
        completion_rate=settings.CREDITS_PER_1K_COMPLETION_TOKENS,
    )
    try:
        await db_async(_write)(record)
    except Exception:  # the refusal still goes out; its record is what is lost
        logger.warning("refusal of %s (%s) not recorded", request_id, error.code, exc_info=True)
        return
    # Named only once written: every request id a client is shown has its usage record.
    error.headers.setdefault("x-request-id", request_id)
