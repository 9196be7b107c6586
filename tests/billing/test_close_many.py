"""Closing many reservations at once keeps the same books as closing them one by one."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.db.models import Sum

from billing.models import LedgerEntry, Quota, QuotaCounter, Reservation
from billing.services import (
    Closing,
    closing_for,
    credits_grant,
    credits_reserve,
    credits_settle,
    holds_close,
    quota_set,
)

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2031, 3, 10, 12, 0, tzinfo=dt.UTC)
SETTLED, RELEASED = Reservation.Status.SETTLED, Reservation.Status.RELEASED


def reserve(tenant, request_id: str, *, amount: int, tokens: int, key=None):  # type: ignore[no-untyped-def]
    return credits_reserve(organization_id=tenant.org.pk,
                           api_key_id=key.pk if key is not None else None,
                           request_id=request_id, amount=amount, tokens=tokens, now=NOW)


def closing(request_id: str, status: str, *, credits: int = 0, tokens: int = 0) -> Closing:
    """A closing of the stored reservation, holding what it holds."""
    return closing_for(Reservation.objects.get(request_id=request_id), status=status,
                       credits=credits, tokens=tokens)


def test_given_a_group_of_closings_then_each_is_charged_capped_released_or_reported_once(tenant):
    credits_grant(account=tenant.account, amount=1_000, reason="test", actor_label="test")
    balance = tenant.refresh_account().balance
    quota_set(organization=tenant.org, limit=10_000)
    quota_set(organization=tenant.org, limit=500, metric=Quota.Metric.CREDITS,
              api_key_id=tenant.key.pk)
    for name, amount in (("a", 100), ("b", 100), ("c", 50), ("d", 70)):
        reserve(tenant, name, amount=amount, tokens=1_000, key=tenant.key)
    credits_settle(request_id="d", credits=20, tokens=300)  # closed before the group

    with transaction.atomic():
        settled = holds_close([
            closing("a", SETTLED, credits=40, tokens=400),
            closing("b", SETTLED, credits=250, tokens=900),  # more than held: capped at 100
            closing("c", RELEASED),
            closing("d", SETTLED, credits=99, tokens=999),  # already closed: reported, not redone
        ], now=NOW)

    assert [(s.request_id, s.status, s.charged, s.reserved, s.already_closed) for s in settled] == [
        ("a", SETTLED, 40, 100, False), ("b", SETTLED, 100, 100, False),
        ("c", RELEASED, 0, 50, False), ("d", SETTLED, 20, 70, True)]
    account = tenant.refresh_account()
    assert account.balance == balance - 40 - 100 - 20
    assert account.reserved == 0
    assert settled[0].available == settled[1].available == account.balance
    # One entry per charged request, each balance_after one step of a single running balance.
    entries = list(LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
                   .order_by("pk").values_list("request_id", "amount", "balance_after"))
    assert entries == [("d", -20, balance - 20), ("a", -40, balance - 60),
                       ("b", -100, balance - 160)]
    assert LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] == (
        account.balance)
    # The quotas counted what was used (tokens; credits) and hold nothing any more.
    tokens = QuotaCounter.objects.get(quota__metric=Quota.Metric.CHAT_TOKENS)
    credits = QuotaCounter.objects.get(quota__metric=Quota.Metric.CREDITS)
    assert (tokens.used, tokens.reserved) == (300 + 400 + 900, 0)
    assert (credits.used, credits.reserved) == (20 + 40 + 100, 0)
    assert settled[0].quota_tokens_remaining == 10_000 - 1_600
    assert not Reservation.objects.filter(status=Reservation.Status.OPEN).exists()


def test_given_an_unknown_request_in_a_group_then_nothing_of_the_group_is_written(tenant):
    credits_grant(account=tenant.account, amount=1_000, reason="test", actor_label="test")
    reserve(tenant, "known", amount=100, tokens=10)

    with pytest.raises(LookupError), transaction.atomic():
        holds_close([closing("known", SETTLED, credits=10, tokens=10),
                     Closing("never-reserved", SETTLED, held=100, credits=10, tokens=10)],
                    now=NOW)

    assert Reservation.objects.get(request_id="known").status == Reservation.Status.OPEN
    assert tenant.refresh_account().reserved == 100


def test_given_one_request_twice_in_a_group_then_the_group_is_refused(tenant):
    credits_grant(account=tenant.account, amount=1_000, reason="test", actor_label="test")
    reserve(tenant, "twice", amount=100, tokens=10)

    with pytest.raises(ValueError, match="only once per group"), transaction.atomic():
        holds_close([closing("twice", RELEASED), closing("twice", RELEASED)], now=NOW)

    assert tenant.refresh_account().reserved == 100


def test_given_two_organizations_and_quota_and_credit_only_reservations_then_the_books_agree(
    tenant, other_tenant,
):
    """Reservations with and without quota, of two organizations, closed together; the
    books are those of closing them one by one."""
    quota_set(organization=tenant.org, limit=500, metric=Quota.Metric.CREDITS,
              api_key_id=tenant.key.pk)
    before = {t.org.slug: t.refresh_account().balance for t in (tenant, other_tenant)}
    reserve(tenant, "quota", amount=100, tokens=10, key=tenant.key)  # held against the quota
    reserve(tenant, "plain-1", amount=100, tokens=10)
    reserve(other_tenant, "other", amount=80, tokens=10)
    reserve(tenant, "plain-2", amount=60, tokens=10)
    reserve(tenant, "released", amount=30, tokens=10)

    with transaction.atomic():
        settled = holds_close([
            closing("plain-2", SETTLED, credits=25, tokens=5),
            closing("quota", SETTLED, credits=40, tokens=5),
            closing("other", SETTLED, credits=500, tokens=5),  # more than held: capped at 80
            closing("released", RELEASED),
            closing("plain-1", SETTLED, credits=10, tokens=5),
        ], now=NOW)

    assert [(s.request_id, s.charged, s.reserved, s.already_closed) for s in settled] == [
        ("plain-2", 25, 60, False), ("quota", 40, 100, False), ("other", 80, 80, False),
        ("released", 0, 30, False), ("plain-1", 10, 100, False)]
    mine, theirs = tenant.refresh_account(), other_tenant.refresh_account()
    assert (mine.balance, mine.reserved) == (before["acme"] - 75, 0)
    assert (theirs.balance, theirs.reserved) == (before["globex"] - 80, 0)
    assert settled[4].available == mine.balance and settled[2].available == theirs.balance
    # Each account's usage entries make one running balance, whichever path wrote them.
    for account, start in ((mine, before["acme"]), (theirs, before["globex"])):
        running = start
        entries = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
        for amount, balance_after in entries.order_by("pk").values_list("amount",
                                                                       "balance_after"):
            running += amount
            assert balance_after == running
        assert running == account.balance
    # Written in closing order.
    assert list(LedgerEntry.objects.filter(account=mine, kind=LedgerEntry.Kind.USAGE)
                .order_by("pk").values_list("request_id", flat=True)) == [
        "plain-2", "quota", "plain-1"]
    assert QuotaCounter.objects.get().used == 40
    assert dict(Reservation.objects.values_list("request_id", "status")) == {
        "quota": SETTLED, "plain-1": SETTLED, "plain-2": SETTLED, "other": SETTLED,
        "released": RELEASED}

    # Closing them all again changes nothing and reports the first outcome.
    with transaction.atomic():
        again = holds_close([closing("plain-1", SETTLED, credits=99, tokens=1),
                                    closing("quota", SETTLED, credits=99, tokens=1)], now=NOW)
    assert [(s.charged, s.already_closed) for s in again] == [(10, True), (40, True)]
    assert tenant.refresh_account().balance == mine.balance
