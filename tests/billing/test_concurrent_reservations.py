"""Concurrent requests against one account: no overdraft, no double charge, no deadlock.

These tests run on SQLite and on PostgreSQL, with real threads, each on its
own database connection (hence `transactional_db`: every thread must see the
others' committed rows).
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import LedgerEntry, Quota, QuotaCounter, Reservation
from billing.services import (
    InsufficientCredits,
    QuotaExceeded,
    credits_grant,
    credits_release,
    credits_reserve,
    credits_settle,
    period_start,
    quota_set,
    reservations_expire,
)
from tests.billing.concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)


def ledger_sum(account) -> int:  # type: ignore[no-untyped-def]
    return LedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"] or 0


def test_given_a_balance_for_exactly_ten_when_fifty_requests_race_then_exactly_ten_are_charged(
    tenant_factory,
):
    """50 threads reserve and settle 100 credits each against a balance of 1,000.

    What guarantees it: `credits_reserve` holds credits with one conditional
    UPDATE (`SET reserved = reserved + 100 WHERE balance >= reserved + 100`);
    nothing reads the balance and then writes it. On PostgreSQL the UPDATE
    takes the account's row lock, and a request that had to wait for that
    lock re-evaluates the WHERE clause against the row as the winner left it
    (READ COMMITTED's re-check), so the eleventh request matches no row and is
    refused. On SQLite, BEGIN IMMEDIATE lets one writer in at a time, which
    serialises the requests; the conditional UPDATE is still what makes each
    of them correct. The check constraints (`balance >= 0`,
    `reserved <= balance`) are the last line of defence, never the mechanism.
    """
    tenant = tenant_factory("race", credits=1_000)
    org_id, key_id = tenant.org.pk, tenant.key.pk

    def request(i: int) -> str:
        try:
            credits_reserve(organization_id=org_id, api_key_id=key_id, request_id=f"req-{i}",
                            amount=100, tokens=10)
        except InsufficientCredits:
            return "refused"
        credits_settle(request_id=f"req-{i}", credits=100, tokens=10)
        return "charged"

    outcomes = run_together([lambda i=i: request(i) for i in range(50)])

    assert Counter(map(str, outcomes)) == {"charged": 10, "refused": 40}, connection.vendor
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (0, 0)
    assert account.balance == ledger_sum(account)
    usage = LedgerEntry.objects.filter(account=account, kind="usage")
    assert usage.count() == 10
    # The balance after every committed entry: never below zero.
    balances = LedgerEntry.objects.filter(account=account).values_list("balance_after", flat=True)
    assert min(balances) >= 0
    assert Reservation.objects.filter(account=account).count() == 10


def test_given_fifty_concurrent_reservations_then_the_held_credits_never_exceed_the_balance(
    tenant_factory,
):
    """Same guarantee with every reservation left open: exactly ten fit, the rest are refused."""
    tenant = tenant_factory("holds", credits=1_000)
    org_id = tenant.org.pk

    def reserve(i: int) -> str:
        try:
            credits_reserve(organization_id=org_id, api_key_id=None, request_id=f"hold-{i}",
                            amount=100, tokens=1)
        except InsufficientCredits as refused:
            assert refused.extras["remaining"] >= 0
            return "refused"
        return "held"

    outcomes = run_together([lambda i=i: reserve(i) for i in range(50)])

    assert Counter(map(str, outcomes)) == {"held": 10, "refused": 40}
    account = tenant.refresh_account()
    assert (account.balance, account.reserved, account.available) == (1_000, 1_000, 0)
    assert account.reserved == sum(
        Reservation.objects.filter(account=account, status="open").values_list("amount", flat=True)
    )


def test_given_a_token_quota_for_exactly_five_when_twenty_race_then_five_get_through(
    tenant_factory,
):
    """The quota hold is the same kind of conditional UPDATE, on the period's counter."""
    tenant = tenant_factory("quota-race", credits=1_000_000)
    quota_set(organization=tenant.org, limit=500, period=Quota.Period.MONTHLY)
    org_id = tenant.org.pk

    def reserve(i: int) -> str:
        try:
            credits_reserve(organization_id=org_id, api_key_id=None, request_id=f"q-{i}",
                            amount=10, tokens=100)
        except QuotaExceeded:
            return "refused"
        return "held"

    outcomes = run_together([lambda i=i: reserve(i) for i in range(20)])

    assert Counter(map(str, outcomes)) == {"held": 5, "refused": 15}
    counter = QuotaCounter.objects.get(quota__organization=tenant.org)
    assert (counter.used, counter.reserved) == (0, 500)
    assert tenant.refresh_account().reserved == 50


@pytest.mark.parametrize("rounds", [8])
def test_given_settle_and_release_of_one_request_racing_then_exactly_one_wins(
    tenant_factory, rounds
):
    tenant = tenant_factory("settle-race", credits=10_000)
    for n in range(rounds):
        request_id = f"sr-{n}"
        credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id=request_id,
                        amount=100, tokens=10)

        settle, release = run_together([
            lambda rid=request_id: credits_settle(request_id=rid, credits=60, tokens=10),
            lambda rid=request_id: credits_release(request_id=rid),
        ])

        assert not isinstance(settle, BaseException), settle
        assert not isinstance(release, BaseException), release
        assert [settle.already_closed, release.already_closed].count(False) == 1
        reservation = Reservation.objects.get(request_id=request_id)
        winner = settle if not settle.already_closed else release
        assert reservation.status == winner.status
        expected_charge = 60 if winner is settle else 0
        assert LedgerEntry.objects.filter(request_id=request_id, kind="usage").count() == (
            1 if expected_charge else 0
        )
    account = tenant.refresh_account()
    assert account.reserved == 0
    assert account.balance == ledger_sum(account)


def test_given_the_same_settlement_sent_ten_times_at_once_then_it_is_charged_once(
    tenant_factory,
):
    tenant = tenant_factory("double-settle", credits=10_000)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="dup",
                    amount=500, tokens=50)

    outcomes = run_together(
        [lambda: credits_settle(request_id="dup", credits=321, tokens=50)] * 10
    )

    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert sum(not o.already_closed for o in outcomes) == 1
    assert {o.charged for o in outcomes} == {321}
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (10_000 - 321, 0)
    assert LedgerEntry.objects.filter(request_id="dup").count() == 1


def test_given_a_settlement_racing_the_expiry_job_then_exactly_one_closes_it(
    tenant_factory, settings
):
    from datetime import timedelta

    from django.utils import timezone

    tenant = tenant_factory("expiry-race", credits=10_000)
    started = timezone.now() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 5)
    for n in range(6):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id=f"er-{n}",
                        amount=100, tokens=10, now=started)

    outcomes = run_together(
        [lambda: reservations_expire()]
        + [lambda n=n: credits_settle(request_id=f"er-{n}", credits=70, tokens=10)
           for n in range(6)]
    )

    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    expired, settlements = outcomes[0], outcomes[1:]
    settled = sum(not s.already_closed for s in settlements)
    assert expired + settled == 6
    statuses = Counter(Reservation.objects.filter(account=tenant.account)
                       .values_list("status", flat=True))
    assert statuses == {k: v for k, v in {"expired": expired, "settled": settled}.items() if v}
    account = tenant.refresh_account()
    assert account.reserved == 0
    assert account.balance == 10_000 - 70 * settled == ledger_sum(account)


def test_given_many_retries_of_one_reservation_at_once_then_one_reservation_holds_credits(
    tenant_factory,
):
    tenant = tenant_factory("retry", credits=10_000)
    quota_set(organization=tenant.org, limit=1_000_000)

    outcomes = run_together([
        lambda: credits_reserve(organization_id=tenant.org.pk, api_key_id=None,
                                request_id="same", amount=700, tokens=70)
    ] * 10)

    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert {o.pk for o in outcomes} == {Reservation.objects.get(request_id="same").pk}
    assert tenant.refresh_account().reserved == 700
    assert QuotaCounter.objects.get(quota__organization=tenant.org).reserved == 70


def test_given_a_grant_submitted_ten_times_at_once_with_one_idempotency_key_then_one_entry(
    tenant_factory,
):
    tenant = tenant_factory("webhook", credits=0)

    outcomes = run_together([
        lambda: credits_grant(account=tenant.account, amount=250, reason="stripe checkout",
                              kind="purchase", idempotency_key="cs_test_123")
    ] * 10)

    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert {o.pk for o in outcomes} == {LedgerEntry.objects.get(idempotency_key="cs_test_123").pk}
    account = tenant.refresh_account()
    assert account.balance == 250 == ledger_sum(account)


@pytest.mark.parametrize("counters", ["in-quota-order", "in-reverse-quota-order"])
def test_given_mixed_traffic_on_shared_quotas_then_nothing_deadlocks(tenant_factory, counters):
    """Reserve, settle, release and grant at once, through an org quota and per-key quotas.

    Every path takes its locks in one order (quota counters by counter id, then
    the account), so on PostgreSQL they queue rather than deadlock; a deadlock
    would surface here as an OperationalError in one of the threads. Counter ids
    need not follow quota ids (a daily quota's counter is new every day), so the
    second case makes them run backwards.
    """
    tenant = tenant_factory("mixed", credits=1_000_000)
    keys = [api_key_create(organization=tenant.org, name=f"k{i}")[0] for i in range(3)]
    quota_set(organization=tenant.org, limit=10_000_000)
    for key in keys:
        quota_set(organization=tenant.org, limit=5_000_000, api_key_id=key.pk)
        quota_set(organization=tenant.org, limit=5_000_000, api_key_id=key.pk, metric="credits")
    if counters == "in-reverse-quota-order":
        now = timezone.now()
        for quota in Quota.objects.filter(organization=tenant.org).order_by("-pk"):
            QuotaCounter.objects.create(quota=quota, period_start=period_start(quota.period, now))
    org_id = tenant.org.pk

    def traffic(i: int) -> str:
        key = keys[i % len(keys)]
        for step in range(4):
            request_id = f"mx-{i}-{step}"
            credits_reserve(organization_id=org_id, api_key_id=key.pk, request_id=request_id,
                            amount=50, tokens=500)
            if (i + step) % 3 == 0:
                credits_release(request_id=request_id)
            else:
                credits_settle(request_id=request_id, credits=30, tokens=400)
            if step == 2 and i % 5 == 0:
                credits_grant(account=tenant.account, amount=10, reason="promo")
        return "ok"

    outcomes = run_together([lambda i=i: traffic(i) for i in range(20)])

    assert [str(o) for o in outcomes] == ["ok"] * 20
    account = tenant.refresh_account()
    assert account.reserved == 0
    assert account.balance == ledger_sum(account)
    settled = Reservation.objects.filter(account=account, status="settled").count()
    assert account.balance == 1_000_000 + 10 * 4 - 30 * settled
