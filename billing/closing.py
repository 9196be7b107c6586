"""Closing reservations: charge what a request used, at most what it held, once.

One rule for a settlement, a release and an expiry, for one request or a
group: a reservation is closed only while it is open, and only if it holds
what its closing says (the charge was worked out from it), so whoever comes
second changes nothing and is told so. Closing it charges `Closing.charge`,
counts the use against the quotas it held, gives back the rest, writes a
ledger entry, and writes what the caller records with it (`Recorder`: a
request's usage record, in completions) in the same commit. On PostgreSQL
that is one statement (`billing.statements.close`); on the embedded default
the same steps in one transaction (`_close_plain`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing import statements
from billing.ledger import USAGE_ACTOR, USAGE_REASON, Kind
from billing.models import CreditAccount, LedgerEntry, QuotaCounter, Reservation
from billing.quotas import CounterUse, measure, quota_crossings_announce
from novakit.runtime.db import execute_prepared


@dataclass(frozen=True, slots=True)
class Closing:
    """One open reservation to close: how, what its request used, and what it holds."""

    request_id: str
    status: str
    held: int
    credits: int = 0
    tokens: int = 0
    # The reservation's quota holds: (counter id, amount held, quota metric).
    quota_holds: Sequence[Sequence[Any]] = ()

    @property
    def charge(self) -> int:
        """What closing it charges: the credits used, at most what the reservation holds."""
        return min(max(0, self.credits), self.held)

    def counted(self) -> list[tuple[int, int, int]]:
        """(counter id, use to count, hold to give back) for each quota it held."""
        return [(int(counter_id), measure(str(metric), tokens=self.tokens, credits=self.charge),
                 int(held)) for counter_id, held, metric in self.quota_holds]


@dataclass(frozen=True, slots=True)
class Settlement:
    request_id: str
    status: str
    charged: int
    reserved: int
    # After this settlement: the account's spendable credits and the least
    # chat-token quota left among the quotas the request was held against.
    available: int
    quota_tokens_remaining: int | None
    already_closed: bool = False


class Recorder(Protocol):
    """What a caller writes with the reservations it closes, committed with their charges."""

    def sql(self) -> tuple[str, dict[str, Any]]:
        """PostgreSQL: a data-modifying statement (a CTE of the closing statement) that
        writes the rows of the request ids it finds in `claimed (request_id)`; its params."""

    def write(self, request_ids: set[str]) -> None:
        """The embedded default: write the rows of `request_ids`, in the closing transaction."""

    def joined(self, others: Sequence[Recorder]) -> Recorder:
        """One recorder writing what this one and `others` (of its kind) write: a group's."""


def closing_for(reservation: Reservation, *, status: str, credits: int = 0,
                tokens: int = 0) -> Closing:
    """A Closing of `reservation` as it is stored."""
    return Closing(reservation.request_id, status, held=reservation.amount, credits=credits,
                   tokens=tokens, quota_holds=reservation.quota_holds)


def holds_close(closings: list[Closing], *, recorder: Recorder | None = None,
                now: dt.datetime | None = None) -> list[Settlement]:
    """Close each still-open reservation of the group exactly once; a Settlement per
    closing, in order (`already_closed` for one closed before)."""
    if any(c.credits < 0 or c.tokens < 0 for c in closings):
        raise ValueError("usage cannot be negative")
    if len({c.request_id for c in closings}) != len(closings):
        # One claimed row would be paired with both closings: holds given back twice.
        raise ValueError("a request can be closed only once per group")
    if not closings:
        return []
    now = now or timezone.now()
    if connection.vendor == "postgresql":
        closed, uses = _close_in_one_statement(closings, recorder, now=now)
        quota_crossings_announce(uses)
    else:
        closed, uses = _close_plain(closings, recorder, now=now)
    room = {use.counter_id: use.room for use in uses if use.metric == "chat_tokens"}
    settlements = []
    for closing in closings:
        if closing.request_id not in closed:
            settlements.append(_not_claimed(closing))
            continue
        status, charged, balance, reserved = closed[closing.request_id]
        rooms = [room[int(c)] for c, _, _ in closing.quota_holds if int(c) in room]
        settlements.append(Settlement(
            request_id=closing.request_id, status=status, charged=charged,
            reserved=closing.held, available=balance - reserved,
            quota_tokens_remaining=min(rooms) if rooms else None,
        ))
    return settlements


_Closed = dict[str, tuple[str, int, int, int]]  # request id -> status, charged, balance, reserved


def _close_in_one_statement(closings: list[Closing], recorder: Recorder | None, *,
                            now: dt.datetime) -> tuple[_Closed, list[CounterUse]]:
    recording, params = recorder.sql() if recorder is not None else ("", {})
    deltas = [(c.request_id, *counted) for c in closings for counted in c.counted()]
    params = {
        **params,
        "request_ids": [c.request_id for c in closings],
        "statuses": [c.status for c in closings], "charges": [c.charge for c in closings],
        "held": [c.held for c in closings], "positions": list(range(len(closings))),
        "d_request_ids": [d[0] for d in deltas], "d_counter_ids": [d[1] for d in deltas],
        "d_used": [d[2] for d in deltas], "d_held": [d[3] for d in deltas],
        "open": Reservation.Status.OPEN, "now": now,
        "kind": Kind.USAGE, "actor": USAGE_ACTOR, "reason": USAGE_REASON,
    }
    # In a caller's transaction a savepoint keeps a failed statement from breaking it.
    with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
        rows = execute_prepared(statements.close(recording), params)
    closed = {request_id: (status, charged, balance, reserved)
              for request_id, status, _, charged, balance, reserved, _ in rows}
    counters = (rows[0][6] if rows else []) or []
    if isinstance(counters, str):
        counters = json.loads(counters)
    uses = [CounterUse(
        counter_id=c["counter_id"], quota_id=c["quota_id"], organization_id=c["organization_id"],
        api_key_id=c["api_key_id"], metric=c["metric"], period=c["period"],
        period_start=dt.datetime.fromisoformat(c["period_start"]), limit=c["limit"],
        used=c["used"], reserved=c["reserved"], added=c["added"],
    ) for c in counters]
    return closed, uses


@transaction.atomic
def _close_plain(closings: list[Closing], recorder: Recorder | None, *,
                 now: dt.datetime) -> tuple[_Closed, list[CounterUse]]:
    """The statement's steps as plain statements in one transaction: claim each
    reservation (only while open and holding what its closing says), then the
    counters and the accounts in id order, the ledger entries, the caller's rows."""
    claimed = [c for c in closings if Reservation.objects.filter(
        request_id=c.request_id, status=Reservation.Status.OPEN, amount=c.held,
    ).update(status=c.status, closed_at=now, charged=c.charge)]
    if not claimed:
        return {}, []
    counters: dict[int, tuple[int, int]] = {}
    for closing in claimed:
        for counter_id, used, held in closing.counted():
            before = counters.get(counter_id, (0, 0))
            counters[counter_id] = (before[0] + used, before[1] + held)
    uses = []
    for counter_id in sorted(counters):
        used, held = counters[counter_id]
        QuotaCounter.objects.filter(pk=counter_id).update(
            used=F("used") + used, reserved=F("reserved") - held)
        counter = QuotaCounter.objects.select_related("quota").filter(pk=counter_id).first()
        if counter is None:
            continue  # the quota was removed while the request ran, its counters with it
        quota = counter.quota
        uses.append(CounterUse(
            counter_id=counter_id, quota_id=quota.pk, organization_id=quota.organization_id,
            api_key_id=quota.api_key_id, metric=quota.metric, period=quota.period,
            period_start=counter.period_start, limit=quota.limit, used=counter.used,
            reserved=counter.reserved, added=used))
    stored = Reservation.objects.filter(request_id__in=[c.request_id for c in claimed])
    account_of, key_of = {}, {}
    for request_id, account_id, api_key_id in stored.values_list(
            "request_id", "account_id", "api_key_id"):
        account_of[request_id], key_of[request_id] = account_id, api_key_id
    closed: _Closed = {}
    entries = []
    for account_id in sorted(set(account_of.values())):
        group = [c for c in claimed if account_of[c.request_id] == account_id]
        charges = sum(c.charge for c in group)
        CreditAccount.objects.filter(pk=account_id).update(
            balance=F("balance") - charges, reserved=F("reserved") - sum(c.held for c in group))
        balance, reserved = CreditAccount.objects.filter(pk=account_id).values_list(
            "balance", "reserved")[0]
        running = balance + charges  # the balance before this group's charges
        for closing in group:
            closed[closing.request_id] = (closing.status, closing.charge, balance, reserved)
            if closing.charge > 0:
                running -= closing.charge
                entries.append(LedgerEntry(
                    account_id=account_id, kind=Kind.USAGE, amount=-closing.charge,
                    balance_after=running, reason=USAGE_REASON, request_id=closing.request_id,
                    api_key_id=key_of[closing.request_id], actor_label=USAGE_ACTOR,
                    created_at=now))
    LedgerEntry.objects.bulk_create(entries)
    if recorder is not None:
        recorder.write(set(closed))
    quota_crossings_announce(uses)
    return closed, uses


def _not_claimed(closing: Closing) -> Settlement:
    reservation = (Reservation.objects.select_related("account")
                   .filter(request_id=closing.request_id).first())
    if reservation is None:
        raise LookupError(f"no reservation for request {closing.request_id}")
    if reservation.status == Reservation.Status.OPEN:
        # Open, but holding something else than its closing says: a bug of the caller,
        # whose record of the charge would disagree with the ledger.
        raise ValueError(f"request {closing.request_id} holds {reservation.amount}, "
                         f"not {closing.held}")
    account = reservation.account
    return Settlement(
        request_id=closing.request_id, status=reservation.status,
        charged=reservation.charged or 0, reserved=reservation.amount,
        available=account.balance - account.reserved, quota_tokens_remaining=None,
        already_closed=True,
    )


def _stored(request_id: str) -> Reservation:
    reservation = Reservation.objects.filter(request_id=request_id).first()
    if reservation is None:
        raise LookupError(f"no reservation for request {request_id}")
    return reservation


def credits_settle(*, request_id: str, credits: int, tokens: int,
                   now: dt.datetime | None = None) -> Settlement:
    """Charge a finished request what it used (at most what it reserved) and release the rest.

    Idempotent: settling a request again, or after it was released or
    expired, changes nothing and reports the first outcome.
    """
    if credits < 0 or tokens < 0:
        raise ValueError("usage cannot be negative")
    closing = closing_for(_stored(request_id), status=Reservation.Status.SETTLED,
                          credits=credits, tokens=tokens)
    return holds_close([closing], now=now)[0]


def credits_release(*, request_id: str, now: dt.datetime | None = None) -> Settlement:
    """Release a request that produced nothing: no charge, no quota use. Idempotent."""
    closing = closing_for(_stored(request_id), status=Reservation.Status.RELEASED)
    return holds_close([closing], now=now)[0]


def reservations_expire(
    *, now: dt.datetime | None = None, batch_size: int = 500,
    recorder_for: Callable[[Reservation, Closing], Recorder | None] | None = None,
) -> int:
    """Close the reservations whose request was interrupted (its process died before
    settling it), charging each its prompt (`prompt_credits`, at most what it holds).

    Each is closed on its own by the same rule as a settlement, so a request
    that settles at the same moment wins cleanly; `recorder_for` gives what
    to record with each (completions: the interrupted request's usage record).
    """
    now = now or timezone.now()
    expired = 0
    stale = list(
        Reservation.objects.filter(status=Reservation.Status.OPEN, expires_at__lte=now)
        .select_related("account").order_by("expires_at")[:batch_size]
    )
    for reservation in stale:
        closing = closing_for(reservation, status=Reservation.Status.EXPIRED,
                              credits=reservation.prompt_credits,
                              tokens=reservation.prompt_tokens)
        recorder = recorder_for(reservation, closing) if recorder_for else None
        if not holds_close([closing], recorder=recorder, now=now)[0].already_closed:
            expired += 1
    return expired

