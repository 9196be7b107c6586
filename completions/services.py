"""Settling a request: its charge and its usage record, together, exactly once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from psycopg_pool import PoolTimeout

from billing.models import Reservation
from billing.pricing import Price, tokens_affordable
from billing.services import (
    ClaimRecords,
    Closing,
    Settlement,
    credits_close_credit_only,
    credits_close_many,
    reservations_expire,
)
from completions.models import UsageRecord

logger = logging.getLogger(__name__)
# Waits before the second and third attempt at a settlement that hit a database error.
SETTLE_RETRY_DELAYS = (0.05, 0.25)


@dataclass
class RequestOutcome:
    """What happened to one admitted request, as settlement needs to know it."""

    request_id: str
    organization_id: int
    api_key_id: int
    model: str
    multiplier: Decimal
    credits_reserved: int
    streamed: bool
    end_user: str = ""
    provider: str = ""
    status: str = UsageRecord.Status.OK
    http_status: int = 200
    error_code: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str = "upstream"
    price: Price = field(default_factory=lambda: Price(base=0))
    latency_ms: int = 0
    ttft_ms: int | None = None
    # Nothing reached the upstream's output: release instead of charging.
    release: bool = False
    # The key had quota to hold when the request was admitted: its settlement goes
    # straight to the transaction (the one statement closes no group holding quota).
    holds_quota: bool = False


def fallback_outcome(outcome: RequestOutcome) -> RequestOutcome:
    """What to settle when `outcome`'s settlement failed for a reason other than an outage.

    A delivered answer is charged its whole reservation (what the client
    agreed to hold for it, and never more), recorded with error code
    `settlement_failed` and usage source "fallback" so support can find it;
    a release stays a release. Either way the request's record is final.
    """
    if outcome.release:
        return dataclasses.replace(outcome, usage_source="fallback")
    return dataclasses.replace(outcome, price=Price(base=outcome.credits_reserved),
                               usage_source="fallback", error_code="settlement_failed")


def requests_settle(*, outcomes: list[RequestOutcome]) -> list[Settlement]:
    """Charge (or release) each request's reservation and write its one usage record.

    For one request or for the group the gateway settles together. A
    request's charge and its usage record commit together. Idempotent by
    request id: the billing service closes a reservation at most once, and a
    request it had already closed gets no second usage record (the record's
    unique request id backs that up).

    On PostgreSQL the requests that hold no quota (most) are settled by one
    statement that commits on its own: claims, charges, ledger entries and
    usage records (`credits_close_credit_only`). The rest, and everything on
    SQLite, in one transaction.
    """
    now = timezone.now()
    closings = [_closing(outcome) for outcome in outcomes]
    settled: dict[str, Settlement] = {}
    if connection.vendor == "postgresql" and not any(o.holds_quota for o in outcomes):
        records = _usage_rows([_usage_record(outcome, closing.charge, now=now)
                               for outcome, closing in zip(outcomes, closings, strict=True)])
        settled = credits_close_credit_only(closings, records, now=now)
    rest = [(outcome, closing) for outcome, closing in zip(outcomes, closings, strict=True)
            if closing.request_id not in settled]
    if rest:
        settled.update(_settle_in_one_transaction(rest, now=now))
    return [settled[outcome.request_id] for outcome in outcomes]


def _closing(outcome: RequestOutcome) -> Closing:
    # `held`: the usage record says what was reserved, and charges from it.
    if outcome.release:
        return Closing(outcome.request_id, Reservation.Status.RELEASED,
                       held=outcome.credits_reserved)
    return Closing(outcome.request_id, Reservation.Status.SETTLED, credits=outcome.price.total,
                   tokens=outcome.prompt_tokens + outcome.completion_tokens,
                   held=outcome.credits_reserved)


@transaction.atomic
def _settle_in_one_transaction(pairs: list[tuple[RequestOutcome, Closing]], *, now: dt.datetime,
                               ) -> dict[str, Settlement]:
    settlements = credits_close_many([closing for _, closing in pairs], now=now)
    UsageRecord.objects.bulk_create(
        [_usage_record(outcome, settlement.charged, now=now)
         for (outcome, _), settlement in zip(pairs, settlements, strict=True)
         if not settlement.already_closed],
        ignore_conflicts=True,
    )
    return {settlement.request_id: settlement for settlement in settlements}


def _usage_record(outcome: RequestOutcome, charged: int, *, now: dt.datetime) -> UsageRecord:
    return UsageRecord(
        request_id=outcome.request_id,
        organization_id=outcome.organization_id,
        api_key_id=outcome.api_key_id,
        end_user=outcome.end_user,
        model=outcome.model,
        provider=outcome.provider,
        multiplier=outcome.multiplier,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        credits=charged,
        credits_breakdown=charged_breakdown(outcome.price, charged),
        credits_reserved=outcome.credits_reserved,
        status=outcome.status,
        http_status=outcome.http_status,
        error_code=outcome.error_code,
        streamed=outcome.streamed,
        usage_source=outcome.usage_source,
        prompt_rate=settings.CREDITS_PER_1K_PROMPT_TOKENS,
        completion_rate=settings.CREDITS_PER_1K_COMPLETION_TOKENS,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
        started_at=now - dt.timedelta(milliseconds=outcome.latency_ms),
    )


def _usage_rows(records: list[UsageRecord]) -> ClaimRecords:
    """Usage records as the closing statement inserts them: every column but the id, as JSON."""
    fields = [field for field in UsageRecord._meta.concrete_fields if not field.primary_key]
    return ClaimRecords(
        table=UsageRecord._meta.db_table,
        columns=tuple(field.column for field in fields),
        rows=[{field.column: _json_value(field.pre_save(record, add=True)) for field in fields}
              for record in records],
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()  # with its offset: PostgreSQL reads it as timestamptz
    if isinstance(value, Decimal):
        return str(value)  # exact, where a JSON number would go through a float
    return value


def request_settle(*, outcome: RequestOutcome) -> Settlement:
    """Settle one request (see `requests_settle`)."""
    return requests_settle(outcomes=[outcome])[0]


def requests_settle_retrying(*, outcomes: list[RequestOutcome]) -> list[Settlement]:
    """`requests_settle`, tried again after a database error (a dropped connection, a deadlock).

    Safe because each request's settlement is atomic (one statement, or one
    transaction) and idempotent: an attempt that did commit before its error
    makes the next one a no-op for that request, never a second charge.
    A settlement that still fails leaves the reservations to the expiry job.
    """
    for delay in SETTLE_RETRY_DELAYS:
        try:
            return requests_settle(outcomes=outcomes)
        except (OperationalError, InterfaceError) as exc:
            if isinstance(exc.__cause__, PoolTimeout):
                raise  # the pool waited for a connection already: the database is away
            logger.warning("settling %s failed; retrying",
                           ", ".join(o.request_id for o in outcomes), exc_info=True)
            connection.close()  # never retry on a connection that may be broken
            time.sleep(delay)
    return requests_settle(outcomes=outcomes)


def request_settle_retrying(*, outcome: RequestOutcome) -> Settlement:
    """Settle one request, retrying after a database error (see `requests_settle_retrying`)."""
    return requests_settle_retrying(outcomes=[outcome])[0]


def charged_breakdown(price: Price, charged: int) -> dict[str, int]:
    """The parts of what was charged; they always add up to `charged`.

    The charge is capped at the reservation (README "Credits"): when a request
    used more than its worst case was estimated at, the base absorbs the cut.
    """
    if charged >= price.total:
        return price.breakdown
    surcharges = sum(price.surcharges.values())
    if charged < surcharges:
        return {"base": charged}
    return {"base": charged - surcharges, **price.surcharges}


def tokens_remaining_estimate(settlement: Settlement, *, multiplier: Decimal) -> int:
    """How many more tokens of this model the organization can use: quota or balance, the lower."""
    by_balance = tokens_affordable(credits=settlement.available, multiplier=multiplier)
    if settlement.quota_tokens_remaining is None:
        return by_balance
    return min(by_balance, settlement.quota_tokens_remaining)


def requests_expire(*, now: dt.datetime | None = None) -> int:
    """Close the requests interrupted by their process's death, each with its usage record.

    Their reservations are older than `RESERVATION_TTL_SECONDS` and were
    never settled. Each is charged its prompt (README "Credits") and recorded
    as `interrupted` with what was known when it was admitted, in the
    transaction that closes its reservation.
    """
    return reservations_expire(now=now, on_expired=_record_interrupted)


def _record_interrupted(reservation: Reservation, settlement: Settlement) -> None:
    details = reservation.details or {}
    charged = settlement.charged
    breakdown = details.get("prompt_breakdown") if charged == reservation.prompt_credits else None
    UsageRecord.objects.bulk_create([UsageRecord(
        request_id=reservation.request_id,
        organization_id=reservation.account.organization_id,
        api_key_id=reservation.api_key_id,
        end_user=str(details.get("end_user") or ""),
        model=str(details.get("model") or ""),
        multiplier=Decimal(str(details.get("multiplier") or "1")),
        prompt_tokens=reservation.prompt_tokens if charged else 0,
        completion_tokens=0,
        credits=charged,
        credits_breakdown=breakdown or ({"base": charged} if charged else {}),
        credits_reserved=reservation.amount,
        status=UsageRecord.Status.INTERRUPTED,
        http_status=0,
        error_code="interrupted",
        streamed=bool(details.get("streamed")),
        usage_source="tokenizer",
        prompt_rate=settings.CREDITS_PER_1K_PROMPT_TOKENS,
        completion_rate=settings.CREDITS_PER_1K_COMPLETION_TOKENS,
        started_at=reservation.created_at,
    )], ignore_conflicts=True)
