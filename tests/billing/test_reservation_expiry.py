"""Reservations of requests that died with their process are released by the expiry job."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.models import LedgerEntry, QuotaCounter, Reservation
from billing.services import credits_reserve, credits_settle, quota_set, reservations_expire


def test_given_stale_and_fresh_reservations_then_only_the_stale_are_released_without_charge(
    tenant, settings
):
    settings.RESERVATION_TTL_SECONDS = 600
    now = timezone.now()
    quota_set(organization=tenant.org, limit=100_000)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="stale",
                    amount=300, tokens=30, now=now - timedelta(seconds=601))
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="fresh",
                    amount=200, tokens=20, now=now - timedelta(seconds=599))
    assert tenant.refresh_account().reserved == 500

    expired = reservations_expire(now=now)

    assert expired == 1
    stale, fresh = Reservation.objects.get(request_id="stale"), Reservation.objects.get(
        request_id="fresh")
    assert (stale.status, stale.charged, fresh.status) == ("expired", 0, "open")
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (1_000_000, 200)
    assert not LedgerEntry.objects.filter(kind="usage").exists()
    counter = QuotaCounter.objects.get()
    assert (counter.used, counter.reserved) == (0, 20)


def test_given_an_expired_reservation_when_the_request_settles_late_then_nothing_changes(
    tenant, settings
):
    started = timezone.now() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="late",
                    amount=300, tokens=30, now=started)
    assert reservations_expire() == 1

    outcome = credits_settle(request_id="late", credits=250, tokens=30)

    assert outcome.already_closed and (outcome.status, outcome.charged) == ("expired", 0)
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (1_000_000, 0)
    assert not LedgerEntry.objects.filter(request_id="late").exists()


def test_given_the_expiry_job_run_twice_then_the_second_run_finds_nothing(tenant, settings):
    started = timezone.now() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
    for n in range(3):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id=f"s{n}",
                        amount=10, tokens=1, now=started)

    assert reservations_expire() == 3
    assert reservations_expire() == 0
    assert tenant.refresh_account().reserved == 0


def test_given_more_stale_reservations_than_a_batch_then_each_run_takes_one_batch(
    tenant, settings
):
    started = timezone.now() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
    for n in range(5):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id=f"b{n}",
                        amount=10, tokens=1, now=started)

    assert reservations_expire(batch_size=2) == 2
    assert reservations_expire(batch_size=2) == 2
    assert reservations_expire(batch_size=2) == 1
    assert Reservation.objects.filter(status="open").count() == 0


def test_given_the_expiry_task_then_it_closes_stale_reservations_and_records_them(
    tenant, settings
):
    from completions.models import UsageRecord
    from completions.tasks import requests_expire_task

    started = timezone.now() - timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="task",
                    amount=10, tokens=1, now=started)

    assert requests_expire_task() == 1
    assert Reservation.objects.get(request_id="task").status == "expired"
    record = UsageRecord.objects.get(request_id="task")
    assert (record.status, record.credits, record.credits_reserved) == ("interrupted", 0, 10)
    assert requests_expire_task() == 0
