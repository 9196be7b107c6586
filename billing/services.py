"""Every change to credits and quotas. Keyword-only, atomic, idempotent where a retry can happen.

Invariants these functions keep, and the tests check:
- an account's `balance` equals the sum of its ledger entries;
- `0 <= reserved <= balance` (also enforced by check constraints);
- each request id has at most one reservation and at most one usage entry,
  and is settled or released at most once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import APIKey, Organization
from accounts.services import audit_record
from billing.models import CreditAccount, LedgerEntry, Quota, QuotaCounter, Reservation
from novakit.errors import ApiError
from novakit.runtime.db import execute_prepared

Kind = LedgerEntry.Kind


class InsufficientCredits(ApiError):
    def __init__(self, remaining: int) -> None:
        super().__init__(
            402, "quota_exceeded", "Insufficient credits", extras={"remaining": max(0, remaining)}
        )


class QuotaExceeded(ApiError):
    def __init__(self, metric: str, remaining: int) -> None:
        super().__init__(
            402,
            "quota_exceeded",
            f"Quota exceeded for {metric}",
            extras={"remaining": max(0, remaining)},
        )


class IdempotencyConflict(ApiError, ValueError):
    """The idempotency key was already used for a different movement of credits.

    Also a ValueError, so callers that report a service's refusals (the
    commands, the admin form) show it like any other.
    """

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            409,
            "idempotency_conflict",
            f"The idempotency key '{idempotency_key}' was already used for a different change",
        )


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


# --- accounts and the ledger -------------------------------------------------


def account_for_organization(*, organization: Organization | int) -> CreditAccount:
    organization_id = organization if isinstance(organization, int) else organization.pk
    account, _ = CreditAccount.objects.get_or_create(organization_id=organization_id)
    return account


def _append_entry(
    *,
    account_id: int,
    kind: str,
    amount: int,
    reason: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    request_id: str | None = None,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """Move `amount` credits (signed) into or out of an account, with its ledger entry.

    Must run inside a transaction. Spending is one conditional UPDATE: it only
    matches while the unreserved balance covers the amount, so two concurrent
    debits cannot both pass a check made before either wrote.
    """
    rows = CreditAccount.objects.filter(pk=account_id)
    if amount < 0:
        rows = rows.filter(balance__gte=F("reserved") - amount)
    if rows.update(balance=F("balance") + amount) != 1:
        available = CreditAccount.objects.filter(pk=account_id).values_list(
            "balance", "reserved"
        ).first()
        raise InsufficientCredits(available[0] - available[1] if available else 0)
    # Our UPDATE holds the row's write lock until commit, so this read is exact.
    balance_after = CreditAccount.objects.filter(pk=account_id).values_list("balance", flat=True)[0]
    return LedgerEntry.objects.create(
        account_id=account_id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        reason=reason,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=actor_label,
        request_id=request_id,
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
    )


def _credit_movement(
    *,
    account: CreditAccount,
    kind: str,
    amount: int,
    reason: str,
    actor: AbstractBaseUser | None,
    actor_label: str,
    idempotency_key: str | None,
) -> LedgerEntry:
    if idempotency_key:
        existing = LedgerEntry.objects.filter(
            account=account, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return _same_movement(existing, kind=kind, amount=amount)
    try:
        with transaction.atomic():
            entry = _append_entry(
                account_id=account.pk,
                kind=kind,
                amount=amount,
                reason=reason,
                actor=actor,
                actor_label=actor_label,
                idempotency_key=idempotency_key,
            )
            audit_record(
                action=f"credits.{kind}",
                actor=actor,
                actor_label=actor_label,
                organization_id=account.organization_id,
                target=f"account {account.pk}",
                before={"balance": entry.balance_after - amount},
                after={"balance": entry.balance_after, "entry": entry.pk},
                reason=reason,
            )
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent call with the same key won the race: return its entry.
        existing = LedgerEntry.objects.get(account=account, idempotency_key=idempotency_key)
        return _same_movement(existing, kind=kind, amount=amount)
    return entry


def _same_movement(entry: LedgerEntry, *, kind: str, amount: int) -> LedgerEntry:
    # A retry must ask for what the first call did; anything else is a bug in
    # the caller that returning the old entry would hide.
    if entry.kind != kind or entry.amount != amount:
        raise IdempotencyConflict(entry.idempotency_key or "")
    return entry


def _require_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ValueError("a reason is required for every change to credits")
    return reason


@transaction.atomic
def credits_grant(
    *,
    account: CreditAccount,
    amount: int,
    reason: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    kind: str = Kind.GRANT,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """Add credits (a grant or a purchase)."""
    if kind not in (Kind.GRANT, Kind.PURCHASE):
        raise ValueError("credits_grant records grants and purchases only")
    if amount <= 0:
        raise ValueError("a grant must be a positive number of credits")
    return _credit_movement(
        account=account,
        kind=kind,
        amount=amount,
        reason=_require_reason(reason),
        actor=actor,
        actor_label=actor_label,
        idempotency_key=idempotency_key,
    )


@transaction.atomic
def credits_adjust(
    *,
    account: CreditAccount,
    amount: int,
    reason: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    kind: str = Kind.ADJUSTMENT,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """A signed correction, a refund (positive) or an expiry of credits (negative).

    Taking credits away never dips into credits that open reservations hold.
    """
    if kind not in (Kind.ADJUSTMENT, Kind.REFUND, Kind.EXPIRY):
        raise ValueError("credits_adjust records adjustments, refunds and expiries only")
    if amount == 0:
        raise ValueError("an adjustment must change the balance")
    if kind == Kind.REFUND and amount < 0:
        raise ValueError("a refund adds credits")
    if kind == Kind.EXPIRY and amount > 0:
        raise ValueError("an expiry removes credits")
    return _credit_movement(
        account=account,
        kind=kind,
        amount=amount,
        reason=_require_reason(reason),
        actor=actor,
        actor_label=actor_label,
        idempotency_key=idempotency_key,
    )


# --- quotas --------------------------------------------------------------------


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start of the quota period containing `now` (UTC). Resets follow the calendar."""
    now = now.astimezone(dt.UTC)
    if period == Quota.Period.MONTHLY:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period == Quota.Period.DAILY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def period_end(period: str, start: dt.datetime) -> dt.datetime | None:
    if period == Quota.Period.MONTHLY:
        return (start + dt.timedelta(days=32)).replace(day=1)
    if period == Quota.Period.DAILY:
        return start + dt.timedelta(days=1)
    return None


@dataclass(frozen=True, slots=True)
class ReservationTargets:
    """What a reservation holds against: the credit account and the quotas that apply."""

    account_id: int | None
    quotas: tuple[Quota, ...]


def reservation_targets(*, organization_id: int, api_key_id: int | None) -> ReservationTargets:
    """Read for each reservation, or once per cached API key by the gateway.

    A cached copy stays right because quota changes invalidate the key cache
    (billing/signals.py) and an organization's account never changes.
    """
    account_id = _account_id(organization_id)
    quotas = applicable_quotas(organization_id=organization_id, api_key_id=api_key_id)
    return ReservationTargets(account_id=account_id, quotas=tuple(quotas))


def applicable_quotas(*, organization_id: int, api_key_id: int | None) -> list[Quota]:
    quotas = Quota.objects.filter(organization_id=organization_id, api_key__isnull=True)
    if api_key_id is not None:
        quotas = quotas | Quota.objects.filter(api_key_id=api_key_id)
    return list(quotas.order_by("pk"))


def _counter_for(quota: Quota, now: dt.datetime) -> int:
    start = period_start(quota.period, now)
    QuotaCounter.objects.bulk_create(
        [QuotaCounter(quota=quota, period_start=start)], ignore_conflicts=True
    )
    return QuotaCounter.objects.filter(quota=quota, period_start=start).values_list(
        "pk", flat=True
    )[0]


def _hold_counter(quota: Quota, counter_id: int, amount: int) -> None:
    """Hold `amount` against one quota's current counter, or raise QuotaExceeded.

    A conditional UPDATE that only matches while the period's use plus holds
    leaves room, so concurrent requests cannot overshoot a quota.
    """
    updated = QuotaCounter.objects.filter(
        pk=counter_id, used__lte=quota.limit - amount - F("reserved")
    ).update(reserved=F("reserved") + amount)
    if updated != 1:
        used, reserved = QuotaCounter.objects.filter(pk=counter_id).values_list(
            "used", "reserved"
        )[0]
        raise QuotaExceeded(quota.metric, quota.limit - used - reserved)


_QUOTA_ALERTS = ((Decimal("0.8"), "quota.80"), (Decimal("1"), "quota.100"))


def _announce_quota_crossings(counter: QuotaCounter, *, used_before: int, used_now: int) -> None:
    """Tell webhooks when this settlement took a quota's use past 80 % or 100 %, once a period."""
    quota = counter.quota
    for fraction, event in _QUOTA_ALERTS:
        mark = fraction * quota.limit
        if used_before < mark <= used_now:
            from accounts.webhooks import webhook_emit

            webhook_emit(
                organization_id=quota.organization_id, event=event,
                event_key=f"{event}:{quota.pk}:{counter.period_start.isoformat()}",
                data={"metric": quota.metric, "limit": quota.limit, "used": used_now,
                      "period": quota.period, "period_start": counter.period_start.isoformat(),
                      "api_key_id": quota.api_key_id},
            )


@transaction.atomic
def quota_set(
    *,
    organization: Organization,
    limit: int | None,
    metric: str = Quota.Metric.CHAT_TOKENS,
    period: str = Quota.Period.MONTHLY,
    api_key_id: int | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    reason: str = "",
) -> Quota | None:
    """Set (or with `limit=None` remove) an organization's or a key's quota."""
    existing = Quota.objects.filter(organization=organization, metric=metric, api_key_id=api_key_id)
    before: dict[str, Any] | None = existing.values("limit", "period").first()
    quota: Quota | None = None
    if limit is None:
        existing.delete()
    else:
        if limit < 0:
            raise ValueError("a quota cannot be negative")
        quota, _ = Quota.objects.update_or_create(
            organization=organization,
            metric=metric,
            api_key_id=api_key_id,
            defaults={"limit": limit, "period": period},
        )
    audit_record(
        action="quota.set",
        actor=actor,
        actor_label=actor_label,
        organization=organization,
        target=f"{metric}" + (f" key {api_key_id}" if api_key_id else ""),
        before=before,
        after={"limit": limit, "period": period} if limit is not None else None,
        reason=reason,
    )
    return quota


def key_credit_cap(key: APIKey) -> int | None:
    """The key's monthly credit cap (its own credits quota), or None. Uses prefetched quotas."""
    quota = next((q for q in key.quotas.all() if q.metric == Quota.Metric.CREDITS), None)
    return quota.limit if quota else None


def key_credit_cap_set(*, key: APIKey, limit: int | None,
                       actor: AbstractBaseUser | None = None, actor_label: str = "") -> None:
    """Set (or with None remove) a key's monthly credit cap: a credits quota of its own."""
    quota_set(organization=key.organization, api_key_id=key.pk, limit=limit,
              metric=Quota.Metric.CREDITS, period=Quota.Period.MONTHLY,
              actor=actor, actor_label=actor_label, reason="key credit cap")


def key_quotas_copy(*, old: APIKey, new: APIKey, actor: AbstractBaseUser | None = None,
                    actor_label: str = "") -> None:
    """A rotated key keeps the old one's own quotas (its credit cap)."""
    for quota in old.quotas.all():
        quota_set(organization=old.organization, api_key_id=new.pk, limit=quota.limit,
                  metric=quota.metric, period=quota.period, actor=actor,
                  actor_label=actor_label, reason=f"rotated from {old.prefix}")


# --- reservations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """One request's worst case to reserve: what `credits_reserve` takes, for a group."""

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
    """Hold the worst-case credits (and quota) for a request before it runs.

    Records the reservation and holds every applicable quota and the credits,
    each with one conditional UPDATE (`credits_reserve_many` with one hold).
    A refusal rolls the whole transaction back, so a refused request holds
    nothing. A second call with the same request id gets the first one's
    reservation.
    """
    hold = Hold(organization_id=organization_id, api_key_id=api_key_id, request_id=request_id,
                amount=amount, tokens=tokens, targets=targets)
    try:
        # No look-up beforehand: request ids are new on the hot path, so that
        # query would almost always find nothing. A second call with the same
        # request id (a retry, or a concurrent twin that committed first) fails
        # on the unique request id at its insert, and gets the first reservation.
        return credits_reserve_many([hold], now=now)[0]
    except IntegrityError:
        existing = _existing_reservation(request_id=request_id, organization_id=organization_id)
        if existing is None:
            raise
        return existing


def _existing_reservation(*, request_id: str, organization_id: int) -> Reservation | None:
    existing = Reservation.objects.filter(request_id=request_id).select_related("account").first()
    if existing is not None and existing.account.organization_id != organization_id:
        # Request ids are the gateway's own, so this is a bug, never a retry.
        raise ValueError(f"request {request_id} is reserved by another organization")
    return existing


def credits_reserve_many(holds: list[Hold], *, now: dt.datetime | None = None,
                         ) -> list[Reservation]:
    """Reserve for many requests in one transaction: all of them, or none (it raises).

    The gateway reserves the requests that arrive together this way (a group
    commit, completions/group_commit.py). Statements: one INSERT of every
    reservation, then one conditional UPDATE per quota counter and one per
    credit account with the group's holds summed. When any of them refuses
    (a balance or a quota that cannot cover the whole group, a request id
    already reserved) the transaction rolls back and the error is raised;
    the caller then reserves each request alone, which refuses exactly the
    ones that do not fit.

    Everything that takes no shared lock comes first; the row locks (quota
    counters by counter id, then credit accounts by id) are the last
    statements before commit, so concurrent requests of one organization
    queue for as short a time as possible. Settlement takes them in the same
    order (its reservations, then counters by id, then accounts by id), so
    they wait for each other but never deadlock. Counter ids do not follow
    quota ids (a daily quota gets a new counter every day).
    """
    if any(hold.amount < 0 or hold.tokens < 0 for hold in holds):
        raise ValueError("a reservation cannot be negative")
    if not holds:
        return []
    now = now or timezone.now()
    targets_of = [hold.targets or reservation_targets(
        organization_id=hold.organization_id, api_key_id=hold.api_key_id) for hold in holds]
    if (connection.vendor == "postgresql" and not any(t.quotas for t in targets_of)
            and len({t.account_id for t in targets_of}) == 1 and targets_of[0].account_id):
        return _reserve_credits_in_one_statement(holds, targets_of, now=now)
    quota_holds_sum: dict[int, int] = {}  # quota id -> the group's summed hold
    account_holds: dict[int, int] = {}  # account id -> summed amount
    rows = []
    with transaction.atomic():
        # This period's counters, created (if new) in quota order: two groups that both
        # create counters at a period's start wait for each other, never deadlock.
        quotas = {quota.pk: quota for targets in targets_of for quota in targets.quotas}
        counter_of = {pk: _counter_for(quotas[pk], now) for pk in sorted(quotas)}
        for hold, targets in zip(holds, targets_of, strict=True):
            account_id = targets.account_id or _account_id(hold.organization_id)
            if account_id is None:
                raise InsufficientCredits(0)
            quota_holds = []
            for quota in targets.quotas:
                counter_id = counter_of[quota.pk]
                held = hold.tokens if quota.metric == Quota.Metric.CHAT_TOKENS else hold.amount
                quota_holds.append([counter_id, held])
                quota_holds_sum[quota.pk] = quota_holds_sum.get(quota.pk, 0) + held
            account_holds[account_id] = account_holds.get(account_id, 0) + hold.amount
            rows.append(_reservation(hold, account_id, quota_holds, now=now))
        reservations = Reservation.objects.bulk_create(rows)
        for quota_id in sorted(quota_holds_sum, key=counter_of.__getitem__):  # counter id order
            _hold_counter(quotas[quota_id], counter_of[quota_id], quota_holds_sum[quota_id])
        for account_id in sorted(account_holds):
            _hold_credits(account_id, account_holds[account_id])
    return reservations


def _reservation(hold: Hold, account_id: int, quota_holds: list[list[int]], *,
                 now: dt.datetime) -> Reservation:
    return Reservation(
        request_id=hold.request_id, account_id=account_id, api_key_id=hold.api_key_id,
        amount=hold.amount, tokens=hold.tokens,
        prompt_credits=min(hold.prompt_credits, hold.amount), prompt_tokens=hold.prompt_tokens,
        details=hold.details, quota_holds=quota_holds,
        created_at=now, expires_at=now + dt.timedelta(seconds=settings.RESERVATION_TTL_SECONDS),
    )


def _reserve_credits_in_one_statement(holds: list[Hold], targets_of: list[ReservationTargets],
                                      *, now: dt.datetime) -> list[Reservation]:
    """`credits_reserve_many` for holds against one credit account and no quota, in one
    PostgreSQL statement.

    Most groups are that (one organization's requests, no quota), and the
    gateway reserves them this way: one prepared statement that commits on
    its own, where the general path takes a transaction of four round trips
    and plans each statement afresh (c=64: 667 -> 969 req/s, CPU 1.33 -> 0.93 ms). The
    statement holds the summed amount with one conditional UPDATE (it
    matches only while the unreserved balance covers it, re-checked on the
    newest row version by PostgreSQL, so concurrent groups cannot overdraw)
    and only if it matched, and no request id of the group exists yet,
    inserts the reservations. Refused, nothing is written and
    InsufficientCredits is raised as before (IntegrityError for a request id
    reserved already, as the general path's insert raises). Groups over
    several accounts take the general path: one statement cannot update
    one account and then undo it when another falls short.

    One exception to the lock order: a twin of a request id still in flight
    makes the insert wait on the unique index after the account is locked;
    request ids are the gateway's own, so only a bug makes twins.
    """
    account_id = targets_of[0].account_id
    assert account_id is not None
    rows = [_reservation(hold, account_id, [], now=now) for hold in holds]
    amount = sum(hold.amount for hold in holds)
    request_ids = [r.request_id for r in rows]
    # In a caller's transaction (a test, a direct credits_reserve), a savepoint keeps
    # a refused insert (a request id reserved already) from breaking it.
    with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
        made = dict(execute_prepared(_RESERVE_CREDITS, {
            "account": account_id, "amount": amount, "request_ids": request_ids,
            "api_key_ids": [r.api_key_id for r in rows], "amounts": [r.amount for r in rows],
            "tokens": [r.tokens for r in rows],
            "prompt_credits": [r.prompt_credits for r in rows],
            "prompt_tokens": [r.prompt_tokens for r in rows],
            "details": [json.dumps(r.details) for r in rows], "status": Reservation.Status.OPEN,
            "created_at": now, "expires_at": rows[0].expires_at,
        }))
    if not made:
        if Reservation.objects.filter(request_id__in=request_ids).exists():
            # As the general path's insert would: `credits_reserve` then returns the first.
            raise IntegrityError("a request id of the group is reserved already")
        balance, reserved = CreditAccount.objects.filter(pk=account_id).values_list(
            "balance", "reserved")[0]
        raise InsufficientCredits(balance - reserved)
    for row in rows:
        row.pk = made[row.request_id]
        row._state.adding, row._state.db = False, connection.alias
    return rows


# Its columns are Reservation's (billing/models.py): a column added there needs adding here.
_RESERVE_CREDITS = """
WITH held AS (
    UPDATE billing_creditaccount SET reserved = reserved + %(amount)s::bigint
    WHERE id = %(account)s::bigint AND balance - reserved >= %(amount)s::bigint
      AND NOT EXISTS (SELECT 1 FROM billing_reservation
                      WHERE request_id = ANY(%(request_ids)s::varchar[]))
    RETURNING id
)
INSERT INTO billing_reservation
    (request_id, account_id, api_key_id, amount, tokens, prompt_credits, prompt_tokens, details,
     quota_holds, status, created_at, expires_at)
SELECT r.request_id, %(account)s::bigint, r.api_key_id, r.amount, r.tokens, r.prompt_credits,
       r.prompt_tokens, r.details::jsonb, '[]'::jsonb, %(status)s::varchar,
       %(created_at)s::timestamptz, %(expires_at)s::timestamptz
FROM unnest(%(request_ids)s::varchar[], %(api_key_ids)s::bigint[], %(amounts)s::bigint[],
            %(tokens)s::bigint[], %(prompt_credits)s::bigint[], %(prompt_tokens)s::bigint[],
            %(details)s::text[])
    AS r (request_id, api_key_id, amount, tokens, prompt_credits, prompt_tokens, details)
WHERE EXISTS (SELECT 1 FROM held)
RETURNING request_id, id
"""


def _account_id(organization_id: int) -> int | None:
    """The organization's credit account, perhaps created since the targets were read
    (a first grant)."""
    return CreditAccount.objects.filter(organization_id=organization_id).values_list(
        "pk", flat=True
    ).first()


def _hold_credits(account_id: int, amount: int) -> None:
    """Hold `amount` of an account's unreserved balance, or raise InsufficientCredits.

    The conditional update is the whole check: it matches only while the
    unreserved balance covers the amount, and takes the row lock as it does.
    """
    updated = CreditAccount.objects.filter(
        pk=account_id, balance__gte=F("reserved") + amount
    ).update(reserved=F("reserved") + amount)
    if updated != 1:
        row = CreditAccount.objects.filter(pk=account_id).values_list("balance", "reserved")[0]
        raise InsufficientCredits(row[0] - row[1])


@dataclass(frozen=True, slots=True)
class Closing:
    """One open reservation to close: how, and what its request used."""

    request_id: str
    status: str
    credits: int = 0
    tokens: int = 0
    # What the caller takes the reservation to hold, when its record of the charge
    # depends on it (`credits_close_credit_only`): a reservation holding anything
    # else is not closed there, and `credits_close_many` charges it from what it holds.
    held: int | None = None

    @property
    def charge(self) -> int:
        """What closing a reservation that holds `held` charges: the credits used, at most
        what it holds (the rule both closing paths apply in SQL)."""
        if self.held is None:
            raise ValueError("the charge depends on what the reservation holds: give `held`")
        return min(max(0, self.credits), self.held)


def _check_closings(closings: list[Closing]) -> None:
    if any(c.credits < 0 or c.tokens < 0 for c in closings):
        raise ValueError("usage cannot be negative")
    if len({c.request_id for c in closings}) != len(closings):
        # One claimed row would be paired with both closings: holds given back twice.
        raise ValueError("a request can be closed only once per group")


def credits_close_many(closings: list[Closing], *, now: dt.datetime | None = None,
                       ) -> list[Settlement]:
    """Close many reservations at once, each exactly once; one Settlement per closing, in order.

    Must run inside the caller's transaction. Each reservation is charged what
    its request used (at most what it held) and the rest given back, as
    `credits_settle` does for one. The gateway settles the requests that
    finish together (a group commit) with `credits_close_credit_only` first,
    and what that leaves this way.

    Statements: one claims every reservation (an UPDATE ... RETURNING that
    only matches reservations still open, so a second settle, a release and
    the expiry job cannot all close one), one per quota counter and one per
    credit account with the group's deltas summed, one insert of the ledger
    entries. Row locks are taken in a fixed order (reservations, counters by
    id, accounts by id), the order reservation takes them too, so concurrent
    groups wait for each other but never deadlock.
    """
    _check_closings(closings)
    if not closings:
        return []
    now = now or timezone.now()
    if connection.get_autocommit():
        raise RuntimeError("credits_close_many must run inside a transaction")
    claimed = {row.request_id: row for row in _claim(closings, now=now)}
    fresh = [(c, claimed[c.request_id]) for c in closings if c.request_id in claimed]

    rooms = _release_holds_many(fresh)
    balances: dict[int, tuple[int, int]] = {}
    entries: list[LedgerEntry] = []
    for account_id in sorted({row.account_id for _, row in fresh}):
        group = [row for _, row in fresh if row.account_id == account_id]
        charges = sum(row.charged for row in group)
        # One statement charges and releases: charge <= amount <= reserved <= balance,
        # so it can neither overdraw nor break `reserved <= balance`.
        balance, reserved = _add_returning(
            CreditAccount, account_id, balance=-charges,
            reserved=-sum(row.amount for row in group),
        )
        balances[account_id] = (balance, reserved)
        running = balance + charges  # the balance before this group's charges
        for row in group:
            if row.charged > 0:
                running -= row.charged
                entries.append(LedgerEntry(
                    account_id=account_id, kind=Kind.USAGE, amount=-row.charged,
                    balance_after=running, reason=_USAGE_REASON, request_id=row.request_id,
                    api_key_id=row.api_key_id, actor_label=_USAGE_ACTOR, created_at=now,
                ))
    LedgerEntry.objects.bulk_create(entries)

    settlements = []
    for closing in closings:
        row = claimed.get(closing.request_id)
        if row is None:
            settlements.append(_already_closed(closing.request_id))
            continue
        balance, reserved = balances[row.account_id]
        settlements.append(Settlement(
            request_id=row.request_id, status=closing.status, charged=row.charged,
            reserved=row.amount, available=balance - reserved,
            quota_tokens_remaining=rooms.get(row.request_id),
        ))
    return settlements


_USAGE_REASON = "chat completion"
_USAGE_ACTOR = "api"


@dataclass(frozen=True, slots=True)
class ClaimRecords:
    """Rows of another table that go with the charges: the usage record of each request.

    The closing statement inserts the row of each reservation it claims, and
    no other: a charge and its record commit together or not at all, and a
    request closed before gets no second record. `table` has a unique
    `request_id` column (a row whose request id is there already is
    skipped); each row maps `columns` to JSON values PostgreSQL reads as
    those columns' types. `table` and `columns` are a model's names: they
    go into the statement's text.
    """

    table: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


def credits_close_credit_only(closings: list[Closing], records: ClaimRecords, *,
                              now: dt.datetime | None = None) -> dict[str, Settlement]:
    """Close the still-open reservations among `closings`, with their `records`, in one
    PostgreSQL statement, unless one of them holds quota; their Settlements by request id.

    What `credits_close_many` does for them, in one prepared statement:
    claim each (only if still open, so it closes once), charge and release
    each credit account once for the group (accounts locked in id order,
    after the reservations, as everywhere else), write a ledger entry per
    charge, with the balance after it in closing order, and insert the
    records of the claimed requests. Outside a transaction the statement
    commits on its own, so an account row is locked only while PostgreSQL
    runs it; in a transaction of claim, usage records and commit it stayed
    locked over three round trips to the gateway, and under load every other
    reservation and settlement of the organization waited for them
    (two workers, c=64: ~820 -> ~1,010 req/s). Inside a transaction it runs in a savepoint:
    a failure leaves the caller's transaction usable.

    What this leaves is for `credits_close_many`: requests closed already
    (to report), reservations not holding their closing's `held`, and the
    whole group when one of its open reservations holds quota (closing some
    here would lock their accounts before the general path locks the rest's
    reservations and quota counters, against the order every transaction
    keeps). A record's charge is the caller's to compute: `Closing.charge`,
    the rule the claim applies.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("credits_close_credit_only is PostgreSQL's; use credits_close_many")
    _check_closings(closings)
    if not closings:
        return {}
    params = {
        "request_ids": [c.request_id for c in closings],
        "statuses": [c.status for c in closings],
        "credits": [max(0, c.credits) for c in closings],
        "positions": list(range(len(closings))),
        "held": [c.held for c in closings],
        "open": Reservation.Status.OPEN, "now": now or timezone.now(),
        "kind": Kind.USAGE, "actor": _USAGE_ACTOR, "reason": _USAGE_REASON,
        "records": json.dumps(records.rows),
    }
    with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
        rows = execute_prepared(_close_recording(records.table, records.columns), params)
    return {
        request_id: Settlement(
            request_id=request_id, status=status, charged=charged, reserved=amount,
            available=balance - reserved, quota_tokens_remaining=None,
        )
        for request_id, status, amount, charged, balance, reserved in rows
    }


# Its columns are Reservation's, CreditAccount's and LedgerEntry's (billing/models.py).
_CLOSE_CREDIT_ONLY = """
WITH closing AS (
    SELECT * FROM unnest(%(request_ids)s::varchar[], %(statuses)s::varchar[],
                         %(credits)s::bigint[], %(positions)s::int[], %(held)s::bigint[])
        AS c (request_id, status, credits, position, held)
), claimed AS (
    UPDATE billing_reservation r
    SET status = closing.status, closed_at = %(now)s::timestamptz,
        charged = LEAST(closing.credits, r.amount)
    FROM closing
    WHERE r.request_id = closing.request_id AND r.status = %(open)s::varchar
      AND (closing.held IS NULL OR r.amount = closing.held)
      AND NOT EXISTS (
          SELECT 1 FROM billing_reservation held JOIN closing mine USING (request_id)
          WHERE held.status = %(open)s::varchar AND held.quota_holds <> '[]'::jsonb)
    RETURNING r.request_id, r.status, r.account_id, r.api_key_id, r.amount, r.charged,
              closing.position
), totals AS (
    SELECT account_id, sum(charged) AS charged, sum(amount) AS amount
    FROM claimed GROUP BY account_id
), locked AS (
    SELECT a.id FROM billing_creditaccount a
    WHERE a.id IN (SELECT account_id FROM totals) ORDER BY a.id FOR UPDATE
), accounts AS (
    UPDATE billing_creditaccount a
    SET balance = a.balance - totals.charged, reserved = a.reserved - totals.amount
    FROM totals
    WHERE a.id = totals.account_id AND (SELECT count(*) FROM locked) > 0
    RETURNING a.id, a.balance, a.reserved, totals.charged AS charged
), ledger AS (
    INSERT INTO billing_ledgerentry
        (account_id, kind, amount, balance_after, request_id, api_key_id, actor_label, reason,
         created_at)
    SELECT c.account_id, %(kind)s::varchar, -c.charged,
           a.balance + a.charged
               - sum(c.charged) OVER (PARTITION BY c.account_id ORDER BY c.position),
           c.request_id, c.api_key_id, %(actor)s::varchar, %(reason)s::text,
           %(now)s::timestamptz
    FROM claimed c JOIN accounts a ON a.id = c.account_id
    WHERE c.charged > 0
)"""
_CLOSE_RESULT = """
SELECT c.request_id, c.status, c.amount, c.charged, a.balance, a.reserved
FROM claimed c JOIN accounts a ON a.id = c.account_id
"""


@functools.lru_cache(maxsize=8)
def _close_recording(table: str, columns: tuple[str, ...]) -> str:
    """The statement of `credits_close_credit_only`, inserting the records into `table`.

    The names are a model's (quoted), never a caller's input; the values go
    as one parameter, read by PostgreSQL into rows of the table's own type.
    """
    quote = connection.ops.quote_name
    names = ", ".join(quote(column) for column in columns)
    picked = ", ".join(f"r.{quote(column)}" for column in columns)
    recorded = (
        f", recorded AS (INSERT INTO {quote(table)} ({names}) SELECT {picked} "  # noqa: S608
        f"FROM jsonb_populate_recordset(NULL::{quote(table)}, %(records)s::jsonb) AS r "
        "WHERE r.request_id IN (SELECT request_id FROM claimed) "
        "ON CONFLICT (request_id) DO NOTHING)"
    )
    return _CLOSE_CREDIT_ONLY + recorded + _CLOSE_RESULT


@dataclass(frozen=True, slots=True)
class _Claimed:
    request_id: str
    account_id: int
    api_key_id: int | None
    amount: int
    charged: int
    quota_holds: list[list[int]]


def _claim(closings: list[Closing], *, now: dt.datetime) -> list[_Claimed]:
    """Move the still-open reservations among `closings` to their new status, charge capped."""
    table = connection.ops.quote_name(Reservation._meta.db_table)
    rows = ", ".join(["(%s, %s, CAST(%s AS bigint))"] * len(closings))
    params: list[Any] = [value for c in closings
                         for value in (c.request_id, c.status, max(0, c.credits))]
    closed_at = Reservation._meta.get_field("closed_at").get_db_prep_value(
        now, connection, prepared=False)
    with connection.cursor() as cursor:
        # Portable SQL (PostgreSQL, and SQLite >= 3.35 for UPDATE ... FROM ... RETURNING).
        cursor.execute(
            f"WITH closing (request_id, status, credits) AS (VALUES {rows}) "  # noqa: S608
            f"UPDATE {table} SET status = closing.status, closed_at = %s, "
            f"charged = CASE WHEN closing.credits < {table}.amount "
            f"THEN closing.credits ELSE {table}.amount END "
            f"FROM closing WHERE {table}.request_id = closing.request_id "
            f"AND {table}.status = %s "
            f"RETURNING {table}.request_id, {table}.account_id, {table}.api_key_id, "
            f"{table}.amount, {table}.charged, {table}.quota_holds",
            [*params, closed_at, Reservation.Status.OPEN],
        )
        found = cursor.fetchall()
    return [
        _Claimed(request_id=request_id, account_id=account_id, api_key_id=api_key_id,
                 amount=amount, charged=charged,
                 quota_holds=json.loads(holds) if isinstance(holds, str) else holds)
        for request_id, account_id, api_key_id, amount, charged, holds in found
    ]


def _release_holds_many(fresh: list[tuple[Closing, _Claimed]]) -> dict[str, int | None]:
    """Give back the quota holds, count what was used; per request, the least chat-token room.

    One UPDATE per counter with the group's sums, counters in id order.
    """
    held: dict[int, int] = {}
    tokens: dict[int, int] = {}
    credits: dict[int, int] = {}
    for closing, row in fresh:
        for counter_id, amount in row.quota_holds:
            held[counter_id] = held.get(counter_id, 0) + amount
            tokens[counter_id] = tokens.get(counter_id, 0) + closing.tokens
            credits[counter_id] = credits.get(counter_id, 0) + row.charged
    if not held:
        return {}
    counters = (
        QuotaCounter.objects.select_related("quota")
        .only("period_start", "quota__metric", "quota__limit", "quota__period",
              "quota__organization_id", "quota__api_key_id")
        .in_bulk(list(held))
    )
    room_of: dict[int, int] = {}
    for counter_id in sorted(held):
        counter = counters.get(counter_id)
        if counter is None:
            # The quota was removed while the request ran (its counters went
            # with it): there is nothing to give back or count, and failing
            # here would leave the request unsettled and unbilled.
            continue
        is_tokens = counter.quota.metric == Quota.Metric.CHAT_TOKENS
        used = tokens[counter_id] if is_tokens else credits[counter_id]
        used_now, reserved_now = _add_returning(
            QuotaCounter, counter_id, used=used, reserved=-held[counter_id]
        )
        _announce_quota_crossings(counter, used_before=used_now - used, used_now=used_now)
        if is_tokens:
            room_of[counter_id] = max(0, counter.quota.limit - used_now - reserved_now)
    rooms: dict[str, int | None] = {}
    for _, row in fresh:
        mine = [room_of[counter_id] for counter_id, _ in row.quota_holds if counter_id in room_of]
        rooms[row.request_id] = min(mine) if mine else None
    return rooms


def _add_returning(model: type[Any], pk: int, **deltas: int) -> tuple[int, ...]:
    """Add to some integer columns of one row in one UPDATE ... RETURNING; their new values.

    One round trip instead of an update and a read: the row lock it takes is
    held until commit, and the less happens after it, the less others wait.
    (PostgreSQL and SQLite >= 3.35 both support RETURNING.)
    """
    quote = connection.ops.quote_name
    columns = list(deltas)
    assignments = ", ".join(f"{quote(c)} = {quote(c)} + %s" for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(model._meta.db_table)} SET {assignments} "  # noqa: S608
            f"WHERE id = %s RETURNING {', '.join(quote(c) for c in columns)}",
            [*deltas.values(), pk],
        )
        return tuple(cursor.fetchone())


def _already_closed(request_id: str) -> Settlement:
    reservation = (
        Reservation.objects.select_related("account").filter(request_id=request_id).first()
    )
    if reservation is None:
        raise LookupError(f"no reservation for request {request_id}")
    account = reservation.account
    return Settlement(
        request_id=request_id,
        status=reservation.status,
        charged=reservation.charged or 0,
        reserved=reservation.amount,
        available=account.balance - account.reserved,
        quota_tokens_remaining=None,
        already_closed=True,
    )


@transaction.atomic
def credits_settle(
    *, request_id: str, credits: int, tokens: int, now: dt.datetime | None = None
) -> Settlement:
    """Charge a finished request what it used (at most what it reserved) and release the rest.

    Idempotent: settling a request again, or after it was released or
    expired, changes nothing and reports the first outcome.
    """
    if credits < 0 or tokens < 0:
        raise ValueError("usage cannot be negative")
    closing = Closing(request_id, Reservation.Status.SETTLED, credits=credits, tokens=tokens)
    return credits_close_many([closing], now=now)[0]


@transaction.atomic
def credits_release(*, request_id: str, now: dt.datetime | None = None) -> Settlement:
    """Release a request that produced nothing: no charge, no quota use. Idempotent."""
    return credits_close_many([Closing(request_id, Reservation.Status.RELEASED)], now=now)[0]


def reservations_expire(
    *, now: dt.datetime | None = None, batch_size: int = 500,
    on_expired: Callable[[Reservation, Settlement], None] | None = None,
) -> int:
    """Close the reservations whose request was interrupted (its process died before
    settling it), charging each its prompt (`prompt_credits`, at most what it holds).

    Each one is closed in its own transaction through the same claim as
    settlement, so a request that settles at the same moment wins cleanly.
    `on_expired` runs in that transaction for each reservation this call
    closed (the caller's record of the request commits with its charge).
    """
    now = now or timezone.now()
    expired = 0
    stale = list(
        Reservation.objects.filter(status=Reservation.Status.OPEN, expires_at__lte=now)
        .select_related("account").order_by("expires_at")[:batch_size]
    )
    for reservation in stale:
        with transaction.atomic():
            outcome = credits_close_many([Closing(
                reservation.request_id, Reservation.Status.EXPIRED,
                credits=reservation.prompt_credits, tokens=reservation.prompt_tokens,
            )], now=now)[0]
            if not outcome.already_closed:
                expired += 1
                if on_expired is not None:
                    on_expired(reservation, outcome)
    return expired
