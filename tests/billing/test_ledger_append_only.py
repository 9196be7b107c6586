"""The ledger is append-only, and an account's balance is always the sum of its entries."""

from __future__ import annotations

import pytest
from django.db.models import Sum

from accounts.services import api_key_create
from billing.models import CreditAccount, LedgerEntry
from billing.services import (
    IdempotencyConflict,
    InsufficientCredits,
    credits_adjust,
    credits_grant,
    credits_release,
    credits_reserve,
    credits_settle,
)


def ledger_sum(account: CreditAccount) -> int:
    return LedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"] or 0


def test_given_an_entry_when_saved_again_then_the_model_refuses(tenant):
    entry = LedgerEntry.objects.get(account=tenant.account)
    entry.amount = 1_000_000_000

    with pytest.raises(ValueError, match="append-only"):
        entry.save()

    assert LedgerEntry.objects.get(pk=entry.pk).amount == 1_000_000


def test_given_an_entry_when_deleted_then_the_model_refuses(tenant):
    entry = LedgerEntry.objects.get(account=tenant.account)

    with pytest.raises(ValueError, match="append-only"):
        entry.delete()

    assert LedgerEntry.objects.filter(pk=entry.pk).exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda qs: qs.update(amount=1),
        lambda qs: qs.update(reason="edited"),
        lambda qs: qs.update(api_key=None, amount=0),
        lambda qs: qs.delete(),
        lambda qs: LedgerEntry.objects.bulk_update(list(qs), ["amount"]),
    ],
    ids=["update-amount", "update-reason", "update-mixed", "bulk-delete", "bulk-update"],
)
def test_given_entries_when_changed_in_bulk_then_the_queryset_refuses(tenant, change):
    entries = LedgerEntry.objects.filter(account=tenant.account)

    with pytest.raises(ValueError, match="append-only"):
        change(entries)

    entry = entries.get()
    assert (entry.amount, entry.reason) == (1_000_000, "test credits")


def test_given_an_entry_naming_a_key_when_the_key_is_deleted_then_the_entry_stays(tenant):
    # Deleting a key clears the entry's link to it (SET_NULL); the money facts stay.
    key, _ = api_key_create(organization=tenant.org, name="short-lived")
    credits_reserve(organization_id=tenant.org.pk, api_key_id=key.pk, request_id="r1",
                    amount=50, tokens=10)
    credits_settle(request_id="r1", credits=40, tokens=10)

    key.delete()

    entry = LedgerEntry.objects.get(request_id="r1")
    assert (entry.kind, entry.amount, entry.api_key_id) == ("usage", -40, None)


def test_given_every_kind_of_movement_then_balance_equals_the_sum_of_entries(tenant):
    account = tenant.account
    credits_grant(account=account, amount=500, reason="top-up", kind="purchase")
    credits_adjust(account=account, amount=-200, reason="correction")
    credits_adjust(account=account, amount=75, reason="sorry", kind="refund")
    credits_adjust(account=account, amount=-25, reason="promo ended", kind="expiry")
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk, request_id="a",
                    amount=1_000, tokens=100)
    credits_settle(request_id="a", credits=321, tokens=100)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="b",
                    amount=50, tokens=5)
    credits_release(request_id="b")

    account.refresh_from_db()
    assert account.balance == 1_000_000 + 500 - 200 + 75 - 25 - 321
    assert account.balance == ledger_sum(account)
    assert account.reserved == 0
    # Each entry's running balance chains to the next one.
    running = 0
    for entry in LedgerEntry.objects.filter(account=account).order_by("id"):
        running += entry.amount
        assert entry.balance_after == running


def test_given_open_reservations_then_a_negative_adjustment_cannot_take_reserved_credits(
    tenant_factory,
):
    small = tenant_factory("small", credits=100)
    credits_reserve(organization_id=small.org.pk, api_key_id=None, request_id="held",
                    amount=80, tokens=1)

    with pytest.raises(InsufficientCredits) as refused:
        credits_adjust(account=small.account, amount=-30, reason="clawback")

    assert refused.value.status == 402 and refused.value.extras == {"remaining": 20}
    small.account.refresh_from_db()
    assert (small.account.balance, small.account.reserved) == (100, 80)
    assert ledger_sum(small.account) == 100


@pytest.mark.parametrize(
    ("service", "kwargs"),
    [
        (credits_grant, {"amount": 0}),
        (credits_grant, {"amount": -5}),
        (credits_grant, {"amount": 5, "kind": "usage"}),
        (credits_grant, {"amount": 5, "reason": "   "}),
        (credits_adjust, {"amount": 0}),
        (credits_adjust, {"amount": -5, "kind": "refund"}),
        (credits_adjust, {"amount": 5, "kind": "expiry"}),
        (credits_adjust, {"amount": 5, "kind": "grant"}),
    ],
)
def test_given_an_invalid_movement_then_it_is_refused_and_nothing_is_written(
    tenant, service, kwargs
):
    kwargs = {"reason": "because", **kwargs}

    with pytest.raises(ValueError):
        service(account=tenant.account, **kwargs)

    assert LedgerEntry.objects.filter(account=tenant.account).count() == 1


def test_given_a_reused_idempotency_key_with_another_amount_then_it_is_a_conflict(tenant):
    credits_grant(account=tenant.account, amount=100, reason="invoice 7", idempotency_key="inv-7")

    with pytest.raises(IdempotencyConflict) as conflict:
        credits_grant(account=tenant.account, amount=999, reason="invoice 7",
                      idempotency_key="inv-7")

    assert conflict.value.status == 409 and conflict.value.code == "idempotency_conflict"
    tenant.account.refresh_from_db()
    assert tenant.account.balance == 1_000_100 == ledger_sum(tenant.account)
