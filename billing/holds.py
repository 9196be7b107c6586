"""Holding a request's worst case, credits and quota, before it runs.

One rule, for one request or a group of them: the group is held only if
every quota counter and every credit account it touches covers the group's
summed hold, and none of its request ids is reserved yet; otherwise nothing
is written and the refusal is raised (a group then goes request by request,
`billing.commit`). On PostgreSQL that is one statement
(`billing.statements.reserve`); on the embedded default the same steps in one
transaction (`_place_plain`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from billing import statements
from billing.ledger import InsufficientCredits
from billing.models import CreditAccount, QuotaCounter, Reservation
from billing.quotas import (
    ReservationTargets,
    account_id_of,
    counter_for,
    current_counters,
    measure,
    quota_refusal,
    reservation_targets,
)
from novakit.runtime.db import execute_prepared


@dataclass(frozen=True, slots=True)
class Hold:
    """One request's worst case to reserve."""

    organization_id: int
    api_key_id: int | None
    request_id: str
    amount: int
    tokens: int
    # The credit account and quotas, when the caller knows them (the gateway
    # keeps them with the API key's cached context); else they are looked up.
    targets: ReservationTargets | None = None
    # Charged if the request is interrupted (never settled): see Reservation.
    prompt_credits: int = 0
    prompt_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Group:
    """A group's reservations to insert, with its holds summed per counter and per account."""

    rows: list[Reservation]
    counters: dict[int, int]
    accounts: dict[int, int]


def credits_reserve(
    *,
    organization_id: int,
    api_key_id: int | None,
    request_id: str,
    amount: int,
    tokens: int,
    now: dt.datetime | None = None,
    targets: ReservationTargets | None = None,
) -> Reservation:
    """Hold one request's worst case (`holds_place` for one). A second call with the same
    request id gets the first one's reservation."""
    hold = Hold(organization_id=organization_id, api_key_id=api_key_id, request_id=request_id,
                amount=amount, tokens=tokens, targets=targets)
    try:
        # No look-up first: request ids are new on the hot path, so it would almost
        # never find one. A retry (or a twin that committed first) fails at the insert.
        return holds_place([hold], now=now)[0]
    except IntegrityError:
        existing = Reservation.objects.filter(request_id=request_id).select_related(
            "account").first()
        if existing is None:
            raise
        if existing.account.organization_id != organization_id:
            # Request ids are the gateway's own, so this is a bug, never a retry.
            raise ValueError(f"request {request_id} is reserved by another organization") from None
        return existing


def holds_place(holds: list[Hold], *, now: dt.datetime | None = None) -> list[Reservation]:
    """Reserve every hold of a group, or none: InsufficientCredits, QuotaExceeded, or
    IntegrityError for a request id reserved already."""
    if any(hold.amount < 0 or hold.tokens < 0 for hold in holds):
        raise ValueError("a reservation cannot be negative")
    if not holds:
        return []
    now = now or timezone.now()
    targets_of = [hold.targets or reservation_targets(
        organization_id=hold.organization_id, api_key_id=hold.api_key_id) for hold in holds]
    quotas = {quota.pk: quota for targets in targets_of for quota in targets.quotas}
    counter_of = current_counters(list(quotas.values()), now)
    # A quota's first request of a period makes its counter, in the transaction of
    # the hold: refused, it leaves nothing behind.
    new_period = len(counter_of) < len(quotas)
    with transaction.atomic() if new_period else contextlib.nullcontext():
        # Created in quota order: two groups that both create counters at a period's
        # start wait for each other, never deadlock.
        for quota_id in sorted(set(quotas) - set(counter_of)):
            counter_of[quota_id] = counter_for(quotas[quota_id], now)
        group = _group(holds, targets_of, counter_of, now=now)
        if connection.vendor == "postgresql":
            return _place_in_one_statement(group)
        return _place_plain(group)


def _group(holds: list[Hold], targets_of: list[ReservationTargets], counter_of: dict[int, int],
           *, now: dt.datetime) -> _Group:
    counters: dict[int, int] = {}
    accounts: dict[int, int] = {}
    rows = []
    expires_at = now + dt.timedelta(seconds=settings.RESERVATION_TTL_SECONDS)
    for hold, targets in zip(holds, targets_of, strict=True):
        account_id = targets.account_id or account_id_of(hold.organization_id)
        if account_id is None:
            raise InsufficientCredits(0)
        quota_holds = []
        for quota in targets.quotas:
            held = measure(quota.metric, tokens=hold.tokens, credits=hold.amount)
            counter_id = counter_of[quota.pk]
            quota_holds.append([counter_id, held, quota.metric])
            counters[counter_id] = counters.get(counter_id, 0) + held
        accounts[account_id] = accounts.get(account_id, 0) + hold.amount
        rows.append(Reservation(
            request_id=hold.request_id, account_id=account_id, api_key_id=hold.api_key_id,
            amount=hold.amount, tokens=hold.tokens,
            prompt_credits=min(hold.prompt_credits, hold.amount),
            prompt_tokens=hold.prompt_tokens, details=hold.details, quota_holds=quota_holds,
            status=Reservation.Status.OPEN, created_at=now, expires_at=expires_at,
        ))
    return _Group(rows=rows, counters=counters, accounts=accounts)


def _place_in_one_statement(group: _Group) -> list[Reservation]:
    request_ids = [row.request_id for row in group.rows]
    counter_ids, account_ids = sorted(group.counters), sorted(group.accounts)
    params = {
        "counter_ids": counter_ids, "counter_amounts": [group.counters[i] for i in counter_ids],
        "account_ids": account_ids, "account_amounts": [group.accounts[i] for i in account_ids],
        "request_ids": request_ids, **statements.reservation_columns(group.rows),
    }
    # In a caller's transaction (a test, a direct credits_reserve) a savepoint keeps
    # a failed statement from breaking it; outside one the statement commits alone.
    with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
        made = dict(execute_prepared(statements.reserve(), params))
    if not made:
        raise _refusal(group)
    for row in group.rows:
        row.pk = made[row.request_id]
        row._state.adding, row._state.db = False, connection.alias
    return group.rows


def _refusal(group: _Group) -> Exception:
    """Why a group was refused, read after the fact (the statement wrote nothing)."""
    if Reservation.objects.filter(request_id__in=[r.request_id for r in group.rows]).exists():
        return IntegrityError("a request id of the group is reserved already")
    for counter_id in sorted(group.counters):
        counter = QuotaCounter.objects.select_related("quota").get(pk=counter_id)
        if counter.used + counter.reserved + group.counters[counter_id] > counter.quota.limit:
            return quota_refusal(counter_id)
    for account_id in sorted(group.accounts):
        balance, reserved = CreditAccount.objects.filter(pk=account_id).values_list(
            "balance", "reserved")[0]
        if balance - reserved < group.accounts[account_id]:
            return InsufficientCredits(balance - reserved)
    # It fitted by the time it was read: the limit moved meanwhile. Refuse as short.
    return InsufficientCredits(0)


@transaction.atomic
def _place_plain(group: _Group) -> list[Reservation]:
    """The statement's steps as plain statements, in one transaction that a refusal
    rolls back: insert, then hold counters and accounts in id order with conditional
    UPDATEs that only match while the row covers the hold."""
    reservations = Reservation.objects.bulk_create(group.rows)
    for counter_id in sorted(group.counters):
        amount = group.counters[counter_id]
        counter = QuotaCounter.objects.filter(pk=counter_id).select_related("quota").get()
        if not QuotaCounter.objects.filter(
            pk=counter_id, used__lte=counter.quota.limit - amount - F("reserved")
        ).update(reserved=F("reserved") + amount):
            raise quota_refusal(counter_id)
    for account_id in sorted(group.accounts):
        amount = group.accounts[account_id]
        if not CreditAccount.objects.filter(
            pk=account_id, balance__gte=F("reserved") + amount
        ).update(reserved=F("reserved") + amount):
            balance, reserved = CreditAccount.objects.filter(pk=account_id).values_list(
                "balance", "reserved")[0]
            raise InsufficientCredits(balance - reserved)
    return reservations
