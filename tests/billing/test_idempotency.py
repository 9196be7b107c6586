"""Reservation, settlement, release and grants are idempotent: a retry never moves money twice."""

from __future__ import annotations

import pytest

from billing.models import LedgerEntry, Reservation
from billing.services import (
    credits_grant,
    credits_release,
    credits_reserve,
    credits_settle,
)


def reserve(tenant, request_id: str = "req-1", amount: int = 500, tokens: int = 100):  # type: ignore[no-untyped-def]
    return credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                           request_id=request_id, amount=amount, tokens=tokens)


def books(tenant) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    account = tenant.refresh_account()
    return (account.balance, account.reserved, LedgerEntry.objects.count(),
            Reservation.objects.count())


def test_given_a_settled_request_when_settled_again_then_nothing_changes(tenant):
    reserve(tenant)
    first = credits_settle(request_id="req-1", credits=120, tokens=80)
    after_first = books(tenant)

    second = credits_settle(request_id="req-1", credits=400, tokens=300)

    assert books(tenant) == after_first
    assert not first.already_closed and second.already_closed
    assert (second.status, second.charged) == ("settled", 120)
    assert LedgerEntry.objects.filter(request_id="req-1", kind="usage").count() == 1


def test_given_a_settled_request_when_released_then_nothing_changes(tenant):
    reserve(tenant)
    credits_settle(request_id="req-1", credits=120, tokens=80)
    after_settle = books(tenant)

    outcome = credits_release(request_id="req-1")

    assert books(tenant) == after_settle
    assert outcome.already_closed and (outcome.status, outcome.charged) == ("settled", 120)
    assert Reservation.objects.get(request_id="req-1").status == "settled"


def test_given_a_released_request_when_settled_then_nothing_is_charged(tenant):
    reserve(tenant)
    credits_release(request_id="req-1")
    after_release = books(tenant)

    outcome = credits_settle(request_id="req-1", credits=120, tokens=80)

    assert books(tenant) == after_release
    assert outcome.already_closed and (outcome.status, outcome.charged) == ("released", 0)


def test_given_a_reservation_when_reserved_again_with_the_same_request_id_then_one_reservation(
    tenant,
):
    first = reserve(tenant, amount=500)
    after_first = books(tenant)

    again = reserve(tenant, amount=900)

    assert again.pk == first.pk and again.amount == 500
    assert books(tenant) == after_first
    assert tenant.account.reserved == 500


def test_given_a_closed_reservation_when_reserved_again_then_it_is_not_reopened(tenant):
    reserve(tenant)
    credits_settle(request_id="req-1", credits=100, tokens=10)
    after_settle = books(tenant)

    again = reserve(tenant)

    assert again.status == "settled"
    assert books(tenant) == after_settle


def test_given_another_organizations_request_id_then_reserving_it_is_refused(
    tenant, other_tenant
):
    reserve(tenant)

    with pytest.raises(ValueError, match="another organization"):
        credits_reserve(organization_id=other_tenant.org.pk, api_key_id=None,
                        request_id="req-1", amount=10, tokens=1)

    assert other_tenant.refresh_account().reserved == 0


def test_given_a_grant_with_an_idempotency_key_when_sent_twice_then_one_entry(tenant):
    first = credits_grant(account=tenant.account, amount=250, reason="invoice 42",
                          idempotency_key="inv-42")
    second = credits_grant(account=tenant.account, amount=250, reason="invoice 42",
                           idempotency_key="inv-42")

    assert second.pk == first.pk
    assert LedgerEntry.objects.filter(idempotency_key="inv-42").count() == 1
    assert tenant.refresh_account().balance == 1_000_000 + 250


def test_given_the_same_idempotency_key_on_two_accounts_then_each_gets_its_grant(
    tenant, other_tenant
):
    credits_grant(account=tenant.account, amount=10, reason="promo", idempotency_key="promo-1")
    credits_grant(account=other_tenant.account, amount=10, reason="promo",
                  idempotency_key="promo-1")

    assert tenant.refresh_account().balance == 1_000_010
    assert other_tenant.refresh_account().balance == 1_000_010


def test_given_an_unknown_request_id_then_settling_it_says_so(tenant):
    with pytest.raises(LookupError):
        credits_settle(request_id="never-reserved", credits=1, tokens=1)
