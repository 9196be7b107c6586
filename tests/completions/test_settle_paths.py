"""Settlement writes the same books and the same usage record whichever way it goes: one
statement that commits on its own (PostgreSQL, requests holding no quota) or one
transaction (requests holding quota, and everything on SQLite)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import LedgerEntry, Quota, Reservation
from billing.pricing import price_request
from billing.services import (
    ClaimRecords,
    Closing,
    credits_close_credit_only,
    credits_reserve,
    quota_set,
    reservations_expire,
)
from completions import services
from completions.models import UsageRecord
from completions.services import RequestOutcome, requests_settle

pytestmark = pytest.mark.django_db

MULTIPLIER = Decimal("1.50")
close_credit_only = credits_close_credit_only  # the real one, under the test's spy
NOW = dt.datetime(2031, 3, 10, 12, 0, 0, 123_456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
# Everything a usage record keeps but its request id, key and the moment it was written.
COMPARED = ("organization_id", "end_user", "model", "provider", "multiplier", "prompt_tokens",
            "completion_tokens", "credits", "credits_breakdown", "credits_reserved", "status",
            "http_status", "error_code", "streamed", "usage_source", "prompt_rate",
            "completion_rate", "latency_ms", "ttft_ms")


def outcome(tenant, request_id: str, *, key_id: int, reserved: int,  # type: ignore[no-untyped-def]
            prompt_tokens: int = 1_200, completion_tokens: int = 800) -> RequestOutcome:
    return RequestOutcome(
        request_id=request_id, organization_id=tenant.org.pk, api_key_id=key_id,
        model="openai/gpt-4o-mini", multiplier=MULTIPLIER, credits_reserved=reserved,
        streamed=True, end_user="user-7", provider="openrouter", prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        price=price_request(multiplier=MULTIPLIER, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, web_search=True),
        latency_ms=1_234, ttft_ms=56,
    )


def test_given_a_request_holding_quota_and_one_not_then_both_get_the_same_books_and_record(
    tenant, monkeypatch,
):
    capped_key, _ = api_key_create(organization=tenant.org, name="capped", created_by=tenant.user)
    quota_set(organization=tenant.org, limit=100_000, metric=Quota.Metric.CREDITS,
              api_key_id=capped_key.pk)
    price = outcome(tenant, "probe", key_id=tenant.key.pk, reserved=0).price
    assert price.surcharges, "the charge below must cut into a price with a surcharge"
    reserved = price.total - 1  # it used more than its worst case: the charge is capped
    balance = tenant.refresh_account().balance
    for request_id, key in (("plain", tenant.key), ("capped", capped_key)):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=key.pk, request_id=request_id,
                        amount=reserved, tokens=3_000)

    monkeypatch.setattr(timezone, "now", lambda: NOW)
    statements: list[list[str]] = []  # the groups sent to the one statement

    def one_statement(closings, records, **kwargs):  # type: ignore[no-untyped-def]
        statements.append([closing.request_id for closing in closings])
        return close_credit_only(closings, records, **kwargs)

    monkeypatch.setattr(services, "credits_close_credit_only", one_statement)
    with CaptureQueriesContext(connection) as through_django:
        plain, = requests_settle(outcomes=[
            outcome(tenant, "plain", key_id=tenant.key.pk, reserved=reserved)])
    capped_outcome = outcome(tenant, "capped", key_id=capped_key.pk, reserved=reserved)
    capped_outcome.holds_quota = True  # as the gateway marks it: straight to the transaction
    capped, = requests_settle(outcomes=[capped_outcome])

    if connection.vendor == "postgresql":
        # Its one prepared statement, on the raw connection; in this test's transaction, in a
        # savepoint of its own. The request marked as holding quota skipped the statement.
        assert [q["sql"].split()[0] for q in through_django] == ["SAVEPOINT", "RELEASE"]
        assert statements == [["plain"]]
    else:
        assert statements == []
        assert len(through_django) > 0
    assert Reservation.objects.get(request_id="capped").quota_holds  # the general path's
    for settled in (plain, capped):
        assert (settled.charged, settled.reserved, settled.already_closed) == (
            reserved, reserved, False)
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (balance - 2 * reserved, 0)
    assert capped.available == account.balance
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == {"plain", "capped"}
    assert ({name: getattr(records["plain"], name) for name in COMPARED}
            == {name: getattr(records["capped"], name) for name in COMPARED})
    record = records["plain"]
    assert record.credits == reserved and sum(record.credits_breakdown.values()) == reserved
    assert record.multiplier == MULTIPLIER and record.ttft_ms == 56
    for record in records.values():  # exact to the microsecond, with the time zone
        assert record.started_at == NOW - dt.timedelta(milliseconds=1_234)
    charges = dict(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE)
                   .values_list("request_id", "amount"))
    assert charges == {"plain": -reserved, "capped": -reserved}


def test_given_a_group_with_a_request_settled_before_then_it_is_reported_not_recorded_again(
    tenant,
):
    for request_id in ("fresh", "again", "released"):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                        request_id=request_id, amount=5_000, tokens=3_000)
    first, = requests_settle(outcomes=[outcome(tenant, "again", key_id=tenant.key.pk,
                                               reserved=5_000, completion_tokens=10)])
    balance = tenant.refresh_account().balance
    released = outcome(tenant, "released", key_id=tenant.key.pk, reserved=5_000)
    released.release = True
    released.status, released.http_status, released.error_code = "error", 500, "server_error"

    settled = requests_settle(outcomes=[
        outcome(tenant, "fresh", key_id=tenant.key.pk, reserved=5_000),
        outcome(tenant, "again", key_id=tenant.key.pk, reserved=5_000, completion_tokens=900),
        released,
    ])

    assert [(s.request_id, s.already_closed) for s in settled] == [
        ("fresh", False), ("again", True), ("released", False)]
    assert settled[1].charged == first.charged  # the first settlement's charge, not redone
    assert settled[2].charged == 0
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert records["again"].completion_tokens == 10  # the first record, alone
    assert (records["released"].credits, records["released"].error_code) == (0, "server_error")
    assert records["fresh"].credits == settled[0].charged > 0
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (balance - settled[0].charged, 0)
    assert settled[0].available == account.balance


def test_given_a_reservation_the_expiry_job_released_then_a_late_settlement_records_nothing(
    tenant,
):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="late", amount=5_000, tokens=3_000)
    assert reservations_expire(now=timezone.now() + dt.timedelta(days=1)) == 1
    balance = tenant.refresh_account().balance

    settled, = requests_settle(outcomes=[outcome(tenant, "late", key_id=tenant.key.pk,
                                                 reserved=5_000)])

    assert (settled.status, settled.charged, settled.already_closed) == (
        Reservation.Status.EXPIRED, 0, True)
    assert not UsageRecord.objects.exists()  # its record would claim a charge never made
    assert tenant.refresh_account().balance == balance


def test_given_an_outcome_that_misstates_its_reservation_then_record_and_ledger_still_agree(
    tenant,
):
    """The record's charge is computed before the statement from what the outcome says was
    reserved; a reservation holding something else is charged from what it holds."""
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="misstated", amount=500, tokens=3_000)
    told = outcome(tenant, "misstated", key_id=tenant.key.pk, reserved=5_000)
    assert 500 < told.price.total < 5_000

    settled, = requests_settle(outcomes=[told])

    assert settled.charged == 500  # capped at what the reservation holds
    record = UsageRecord.objects.get()
    assert record.credits == sum(record.credits_breakdown.values()) == 500
    assert LedgerEntry.objects.get(kind=LedgerEntry.Kind.USAGE).amount == -500


def test_given_a_statement_failing_inside_a_callers_transaction_then_that_transaction_goes_on(
    tenant,
):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="broken", amount=500, tokens=3_000)
    closing = Closing("broken", Reservation.Status.SETTLED, credits=100, tokens=10, held=500)
    # A record PostgreSQL cannot read as the table's row: the statement fails whole.
    unreadable = ClaimRecords(table=UsageRecord._meta.db_table, columns=("request_id", "credits"),
                              rows=[{"request_id": "broken", "credits": "not a number"}])

    with transaction.atomic():
        if connection.vendor != "postgresql":
            with pytest.raises(RuntimeError, match="PostgreSQL's"):
                credits_close_credit_only([closing], records=unreadable)
        else:
            with pytest.raises(DataError):
                credits_close_credit_only([closing], records=unreadable)
        # The caller's transaction is still usable, and nothing of the statement stayed.
        assert Reservation.objects.get(request_id="broken").status == Reservation.Status.OPEN
        assert tenant.refresh_account().reserved == 500
        assert not UsageRecord.objects.exists()


def test_given_a_group_where_one_reservation_holds_quota_then_the_statement_closes_none_of_it(
    tenant,
):
    """Whatever the outcomes say: the statement itself leaves such a group whole to the
    transaction, which takes the quota counters' locks before the account's."""
    capped_key, _ = api_key_create(organization=tenant.org, name="capped", created_by=tenant.user)
    quota_set(organization=tenant.org, limit=100_000, metric=Quota.Metric.CREDITS,
              api_key_id=capped_key.pk)
    for request_id, key in (("plain", tenant.key), ("capped", capped_key)):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=key.pk, request_id=request_id,
                        amount=500, tokens=3_000)
    closings = [Closing(name, Reservation.Status.SETTLED, credits=100, tokens=10, held=500)
                for name in ("plain", "capped")]
    rows = [{"request_id": name} for name in ("plain", "capped")]
    records = ClaimRecords(table=UsageRecord._meta.db_table, columns=("request_id",), rows=rows)

    if connection.vendor != "postgresql":
        with pytest.raises(RuntimeError, match="PostgreSQL's"):
            credits_close_credit_only(closings, records)
        return
    assert credits_close_credit_only(closings, records) == {}
    assert set(Reservation.objects.values_list("status", flat=True)) == {
        Reservation.Status.OPEN}
    assert not UsageRecord.objects.exists()
