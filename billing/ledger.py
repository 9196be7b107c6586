"""Credit accounts and their append-only ledger: grants, purchases, adjustments.

Invariants these functions keep, and the tests check:
- an account's `balance` equals the sum of its ledger entries;
- `0 <= reserved <= balance` (also enforced by check constraints).
Spending by requests goes through `billing.holds` and `billing.closing`.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import Organization
from accounts.services import audit_record
from billing.models import CreditAccount, LedgerEntry
from novakit.errors import ApiError

Kind = LedgerEntry.Kind
# How a request's charge is labelled in the ledger.
USAGE_REASON = "chat completion"
USAGE_ACTOR = "api"


class InsufficientCredits(ApiError):
    def __init__(self, remaining: int) -> None:
        super().__init__(
            "quota_exceeded", "Insufficient credits", extras={"remaining": max(0, remaining)}
        )


class IdempotencyConflict(ApiError, ValueError):
    """The idempotency key was already used for a different movement of credits.

    Also a ValueError, so callers that report a service's refusals (the
    commands, the admin form) show it like any other.
    """

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            "idempotency_conflict",
            f"The idempotency key '{idempotency_key}' was already used for a different change",
        )


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
        actor_id=actor.pk if actor is not None and actor.is_authenticated else None,
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
            if amount > 0:
                _debt_repay(account_id=account.pk, kind=kind)
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


def _debt_repay(*, account_id: int, kind: str) -> LedgerEntry | None:
    """Repay the account's debt (credits_reverse) from credits that just arrived: always
    from a purchase; from grants, codes and refunds too unless DEBT_TAKES_FREE_CREDITS
    is off, so credits given away cannot be spent while a reversed payment is owed.
    Runs under the row lock the arriving credits' UPDATE took."""
    if kind != Kind.PURCHASE and not settings.DEBT_TAKES_FREE_CREDITS:
        return None
    debt, balance, reserved, organization_id = CreditAccount.objects.filter(
        pk=account_id).values_list("debt", "balance", "reserved", "organization_id")[0]
    repaid = min(debt, balance - reserved)
    if repaid <= 0:
        return None
    CreditAccount.objects.filter(pk=account_id).update(debt=F("debt") - repaid)
    reason = f"repays {repaid} credits owed for reversed payments"
    entry = _append_entry(account_id=account_id, kind=Kind.REVERSAL, amount=-repaid,
                          reason=reason, actor_label="billing")
    audit_record(action="credits.debt_repaid", actor_label="billing",
                 organization_id=organization_id, target=f"account {account_id}",
                 before={"debt": debt, "balance": balance},
                 after={"debt": debt - repaid, "balance": balance - repaid, "entry": entry.pk},
                 reason=reason)
    return entry


@transaction.atomic
def credits_reverse(*, account_id: int, credits: int, reason: str,
                    idempotency_key: str) -> tuple[LedgerEntry | None, int]:
    """Take back `credits` of a payment that was refunded or lost in a dispute.

    As many as the account has free are taken (never below zero, never what
    open reservations hold); the rest is recorded as the account's debt,
    repaid from the next credits that arrive. Returns the ledger entry (None
    when nothing was free) and the shortfall. The caller makes it happen once
    (billing.stripe_events, under the payment's row lock).
    """
    if credits <= 0:
        raise ValueError("a reversal takes back a positive number of credits")
    balance, reserved, organization_id = CreditAccount.objects.select_for_update().filter(
        pk=account_id).values_list("balance", "reserved", "organization_id")[0]
    taken = min(credits, balance - reserved)
    shortfall = credits - max(0, taken)
    if shortfall:
        CreditAccount.objects.filter(pk=account_id).update(debt=F("debt") + shortfall)
    entry = None
    if taken > 0:
        entry = _append_entry(account_id=account_id, kind=Kind.REVERSAL, amount=-taken,
                              reason=reason, actor_label="stripe",
                              idempotency_key=idempotency_key)
    audit_record(action="credits.reversal", actor_label="stripe",
                 organization_id=organization_id,
                 target=f"account {account_id}", reason=reason,
                 after={"taken": max(0, taken), "debt_added": shortfall,
                        "entry": entry.pk if entry else None})
    return entry, shortfall


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


def credits_change(
    *,
    account: CreditAccount,
    kind: str,
    amount: int,
    reason: str,
    actor: AbstractBaseUser | None = None,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """A change staff make by hand, of any kind they may choose: grants and purchases add
    (`credits_grant`), adjustments and refunds are signed corrections (`credits_adjust`)."""
    change = credits_grant if kind in (Kind.GRANT, Kind.PURCHASE) else credits_adjust
    return change(account=account, kind=kind, amount=amount, reason=reason, actor=actor,
                  idempotency_key=idempotency_key)
