"""Reserving many requests at once: all of them with summed holds, or none."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError

from billing.models import Quota, QuotaCounter, Reservation
from billing.services import (
    Hold,
    InsufficientCredits,
    QuotaExceeded,
    credits_grant,
    credits_reserve,
    holds_place,
    quota_set,
)

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2031, 3, 10, 12, 0, tzinfo=dt.UTC)


def hold(tenant, request_id: str, *, amount: int, tokens: int = 100, key: bool = True) -> Hold:  # type: ignore[no-untyped-def]
    return Hold(organization_id=tenant.org.pk, api_key_id=tenant.key.pk if key else None,
                request_id=request_id, amount=amount, tokens=tokens)


def held_counters(tenant) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return dict(QuotaCounter.objects.filter(quota__organization=tenant.org)
                .values_list("quota__metric", "reserved"))


def test_given_a_group_then_each_request_is_reserved_and_the_holds_are_summed(tenant):
    balance = tenant.refresh_account().balance
    quota_set(organization=tenant.org, limit=10_000)  # chat tokens, the organization's
    quota_set(organization=tenant.org, limit=500, metric=Quota.Metric.CREDITS,
              api_key_id=tenant.key.pk)

    reservations = holds_place(
        [hold(tenant, "a", amount=100, tokens=300), hold(tenant, "b", amount=50, tokens=200),
         hold(tenant, "c", amount=70, tokens=1_000, key=False)], now=NOW)

    assert [r.request_id for r in reservations] == ["a", "b", "c"]
    stored = {r.request_id: r for r in Reservation.objects.all()}
    assert {name: (r.amount, r.tokens, r.status) for name, r in stored.items()} == {
        "a": (100, 300, "open"), "b": (50, 200, "open"), "c": (70, 1_000, "open")}
    # The key's credit cap applies to a and b, the organization's token quota to all three.
    assert [len(stored[name].quota_holds) for name in "abc"] == [2, 2, 1]
    assert held_counters(tenant) == {Quota.Metric.CHAT_TOKENS: 1_500, Quota.Metric.CREDITS: 150}
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (balance, 220)


def test_given_a_group_the_balance_cannot_cover_then_nothing_is_held_and_alone_some_fit(
    tenant_factory,
):
    small = tenant_factory("small", credits=0)
    credits_grant(account=small.account, amount=250, reason="test", actor_label="test")
    group = [hold(small, name, amount=100) for name in ("a", "b", "c")]

    with pytest.raises(InsufficientCredits):
        holds_place(group, now=NOW)

    assert not Reservation.objects.exists()
    assert small.refresh_account().reserved == 0
    # What the gateway does next: each alone. The first two fit, the third is refused.
    for item in group[:2]:
        credits_reserve(organization_id=item.organization_id, api_key_id=item.api_key_id,
                        request_id=item.request_id, amount=item.amount, tokens=item.tokens)
    with pytest.raises(InsufficientCredits) as refused:
        credits_reserve(organization_id=small.org.pk, api_key_id=None, request_id="c",
                        amount=100, tokens=100)
    assert refused.value.extras == {"remaining": 50}
    assert small.refresh_account().reserved == 200


def test_given_a_group_a_quota_cannot_cover_then_nothing_is_held(tenant):
    quota_set(organization=tenant.org, limit=250)
    group = [hold(tenant, name, amount=10, tokens=100) for name in ("a", "b", "c")]

    with pytest.raises(QuotaExceeded):
        holds_place(group, now=NOW)

    assert not Reservation.objects.exists()
    assert sum(held_counters(tenant).values()) == 0
    assert tenant.refresh_account().reserved == 0


def test_given_a_group_with_a_request_already_reserved_then_the_group_is_refused_whole(tenant):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="b", amount=10,
                    tokens=10)

    with pytest.raises(IntegrityError):
        holds_place([hold(tenant, "a", amount=10), hold(tenant, "b", amount=10)],
                             now=NOW)

    assert list(Reservation.objects.values_list("request_id", flat=True)) == ["b"]
    assert tenant.refresh_account().reserved == 10


def test_given_negative_holds_then_nothing_is_reserved(tenant):
    with pytest.raises(ValueError, match="negative"):
        holds_place([hold(tenant, "a", amount=10), hold(tenant, "b", amount=-1)])
    assert holds_place([]) == []
    assert not Reservation.objects.exists()


def test_given_a_group_of_two_organizations_one_short_then_neither_holds_anything(
    tenant_factory,
):
    rich = tenant_factory("rich", credits=1_000)
    poor = tenant_factory("poor", credits=0)
    credits_grant(account=poor.account, amount=50, reason="test", actor_label="test")
    group = [hold(rich, "r1", amount=300, key=False), hold(poor, "p1", amount=100, key=False),
             hold(rich, "r2", amount=300, key=False)]

    with pytest.raises(InsufficientCredits) as refused:
        holds_place(group, now=NOW)

    # The account that fits is not held either: the group is all or nothing.
    assert refused.value.extras == {"remaining": 50}
    assert not Reservation.objects.exists()
    assert (rich.refresh_account().reserved, poor.refresh_account().reserved) == (0, 0)
    # Without the short one, both of the other organization's requests fit, summed.
    made = holds_place([group[0], group[2]], now=NOW)
    assert [(r.request_id, r.amount, r.pk is not None) for r in made] == [
        ("r1", 300, True), ("r2", 300, True)]
    assert rich.refresh_account().reserved == 600
    assert set(Reservation.objects.values_list("request_id", "expires_at")) == {
        ("r1", made[0].expires_at), ("r2", made[0].expires_at)}


def test_given_a_request_reserved_already_and_no_credit_left_then_the_first_reservation_returns(
    tenant_factory,
):
    small = tenant_factory("small", credits=0)
    credits_grant(account=small.account, amount=100, reason="test", actor_label="test")
    first = credits_reserve(organization_id=small.org.pk, api_key_id=None, request_id="once",
                            amount=100, tokens=10)

    again = credits_reserve(organization_id=small.org.pk, api_key_id=None, request_id="once",
                            amount=100, tokens=10)

    assert again.pk == first.pk
    assert small.refresh_account().reserved == 100
    with pytest.raises(IntegrityError):  # in a group, the whole group is refused
        holds_place([hold(small, "once", amount=0, key=False)], now=NOW)
