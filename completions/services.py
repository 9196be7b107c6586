"""Settling a request: how it ended, its charge and its usage record, together, once.

A request's charge and its usage record commit together (billing closes the
reservation and writes the record handed to it, `UsageRecords`, in one
commit), and a request closed before gets no second record. The event
loop's side, with its retries, is completions.settlement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing.closing import Closing, Recorder, Settlement, holds_close, reservations_expire
from billing.models import Reservation
from billing.pricing import Price, tokens_affordable
from completions.costs import NO_COST, UpstreamCost
from completions.models import UsageRecord

Status = UsageRecord.Status
# Whose provider key served a request (UsageRecord.key_class).
KEY_CLASS_PLATFORM = "platform"
KEY_CLASS_OWN = "organization"


class Ending(enum.Enum):
    """How an admitted request ended. `ENDINGS` says how each is recorded and billed."""

    COMPLETED = "completed"
    # No route answered; nothing reached the client.
    UPSTREAM_FAILED = "upstream_failed"
    # The stream failed after its first chunk (the provider, or we, mid-way).
    STREAM_BROKEN = "stream_broken"
    # The client left after the provider was sent the prompt.
    CANCELLED = "cancelled"
    # The client left before the provider was called (while its credits were reserved).
    WITHDRAWN = "withdrawn"
    # A fault of ours before anything was delivered.
    SERVER_ERROR = "server_error"


@dataclass(frozen=True, slots=True)
class EndingRule:
    status: str
    http_status: int
    error_code: str
    # Give the reservation back, charging nothing (else charge the request's usage).
    release: bool


ENDINGS: dict[Ending, EndingRule] = {
    Ending.COMPLETED: EndingRule(Status.OK, 200, "", release=False),
    Ending.UPSTREAM_FAILED: EndingRule(Status.ERROR, 502, "upstream_error", release=True),
    Ending.STREAM_BROKEN: EndingRule(Status.ERROR, 502, "upstream_error", release=False),
    Ending.CANCELLED: EndingRule(Status.CANCELLED, 499, "client_closed", release=False),
    Ending.WITHDRAWN: EndingRule(Status.CANCELLED, 499, "client_closed", release=True),
    Ending.SERVER_ERROR: EndingRule(Status.ERROR, 500, "server_error", release=True),
}


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What happened to one admitted request, as settlement needs to know it."""

    request_id: str
    organization_id: int
    api_key_id: int
    model: str
    multiplier: Decimal
    credits_reserved: int
    streamed: bool
    ending: Ending = Ending.COMPLETED
    end_user: str = ""
    provider: str = ""
    # The HTTP status and code where the ending's are not the whole story (the
    # provider's failure, a failed settlement): None takes the ending's.
    failure_status: int | None = None
    failure_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str = "upstream"
    price: Price = dataclasses.field(default_factory=lambda: Price(base=0))
    latency_ms: int = 0
    ttft_ms: int | None = None
    # The reservation's quota holds ([counter id, held, metric]), given back at closing.
    quota_holds: Sequence[Sequence[Any]] = ()
    key_class: str = KEY_CLASS_PLATFORM
    cost: UpstreamCost = NO_COST
    upstream_id: str = ""

    @property
    def rule(self) -> EndingRule:
        return ENDINGS[self.ending]

    @property
    def status(self) -> str:
        return self.rule.status

    @property
    def http_status(self) -> int:
        return self.failure_status or self.rule.http_status

    @property
    def error_code(self) -> str:
        return self.failure_code or self.rule.error_code

    @property
    def release(self) -> bool:
        return self.rule.release

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def closing(self) -> Closing:
        if self.release:
            return Closing(self.request_id, Reservation.Status.RELEASED,
                           held=self.credits_reserved, quota_holds=self.quota_holds)
        return Closing(self.request_id, Reservation.Status.SETTLED, held=self.credits_reserved,
                       credits=self.price.total, tokens=self.tokens,
                       quota_holds=self.quota_holds)


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
                               usage_source="fallback", failure_code="settlement_failed")


@dataclass(frozen=True)
class UsageRecords:
    """Usage records written with the charges billing closes (a billing Recorder): the
    record of each request whose reservation the closing claims, and of no other."""

    records: list[UsageRecord]

    def sql(self) -> tuple[str, dict[str, Any]]:
        rows = [{f.column: _json_value(f.pre_save(record, add=True)) for f in _record_fields()}
                for record in self.records]
        return _insert_claimed_records(), {"usage_records": json.dumps(rows)}

    def write(self, request_ids: set[str]) -> None:
        UsageRecord.objects.bulk_create(
            [record for record in self.records if record.request_id in request_ids],
            ignore_conflicts=True)

    def joined(self, others: Sequence[Recorder]) -> UsageRecords:
        records = list(self.records)
        for other in others:
            assert isinstance(other, UsageRecords)
            records += other.records
        return UsageRecords(records)


@functools.cache
def _record_fields() -> tuple[Any, ...]:
    return tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)


@functools.cache
def _insert_claimed_records() -> str:
    """The records' INSERT as a step of billing's closing statement: the row of each
    request id the closing claimed, read from one JSON parameter into the table's types."""
    quote = connection.ops.quote_name
    table = quote(UsageRecord._meta.db_table)
    names = ", ".join(quote(f.column) for f in _record_fields())
    picked = ", ".join(f"r.{quote(f.column)}" for f in _record_fields())
    return (f"INSERT INTO {table} ({names}) SELECT {picked} "  # noqa: S608 (the model's names)
            f"FROM jsonb_populate_recordset(NULL::{table}, %(usage_records)s::jsonb) AS r "
            "WHERE r.request_id IN (SELECT request_id FROM claimed) "
            "ON CONFLICT (request_id) DO NOTHING")


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()  # with its offset: PostgreSQL reads it as timestamptz
    if isinstance(value, Decimal):
        return str(value)  # exact, where a JSON number would go through a float
    return value


def usage_record(outcome: RequestOutcome, *, now: dt.datetime | None = None) -> UsageRecord:
    """The request's usage record, charged what closing its reservation charges."""
    now = now or timezone.now()
    charged = outcome.closing().charge
    return UsageRecord(
        request_id=outcome.request_id,
        organization_id=outcome.organization_id,
        api_key_id=outcome.api_key_id,
        end_user=outcome.end_user,
        model=outcome.model,
        provider=outcome.provider,
        key_class=outcome.key_class,
        multiplier=outcome.multiplier,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        credits=charged,
        credits_breakdown=charged_breakdown(outcome.price, charged),
        credits_reserved=outcome.credits_reserved,
        upstream_cost_usd=outcome.cost.usd,
        cost_source=outcome.cost.source,
        status=outcome.status,
        http_status=outcome.http_status,
        error_code=outcome.error_code,
        streamed=outcome.streamed,
        upstream_id=outcome.upstream_id[:128],
        usage_source=outcome.usage_source,
        prompt_rate=settings.CREDITS_PER_1K_PROMPT_TOKENS,
        completion_rate=settings.CREDITS_PER_1K_COMPLETION_TOKENS,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
        started_at=now - dt.timedelta(milliseconds=outcome.latency_ms),
    )


def requests_settle(*, outcomes: list[RequestOutcome]) -> list[Settlement]:
    """Charge (or release) each request's reservation and write its one usage record.

    Idempotent by request id: billing closes a reservation at most once, and
    a request it had closed already gets no second record.
    """
    now = timezone.now()
    records = UsageRecords([usage_record(outcome, now=now) for outcome in outcomes])
    return holds_close([outcome.closing() for outcome in outcomes], recorder=records, now=now)


def request_settle(*, outcome: RequestOutcome) -> Settlement:
    """Settle one request (see `requests_settle`)."""
    return requests_settle(outcomes=[outcome])[0]


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


def charge_shown(outcome: RequestOutcome, settlement: Settlement | None) -> int:
    """The charge an answer shows: the settlement's, or without one (the database is
    down and the settlement is retried until it commits) the one that retry commits."""
    return settlement.charged if settlement is not None else outcome.closing().charge


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
    commit that closes its reservation.
    """
    return reservations_expire(now=now, recorder_for=_interrupted_record)


def _interrupted_record(reservation: Reservation, closing: Closing) -> UsageRecords:
    details = reservation.details or {}
    charged = closing.charge
    breakdown = details.get("prompt_breakdown") if charged == reservation.prompt_credits else None
    return UsageRecords([UsageRecord(
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
        status=Status.INTERRUPTED,
        http_status=0,
        error_code="interrupted",
        streamed=bool(details.get("streamed")),
        usage_source="tokenizer",
        prompt_rate=settings.CREDITS_PER_1K_PROMPT_TOKENS,
        completion_rate=settings.CREDITS_PER_1K_COMPLETION_TOKENS,
        started_at=reservation.created_at,
    )])
