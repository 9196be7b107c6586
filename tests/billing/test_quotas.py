"""Quotas: chat tokens per month, per day or for good, for an organization and for a key;
and a key's credit cap. Checked at reservation, counted at settlement, reset by the calendar."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.services import api_key_create
from billing.models import Quota, QuotaCounter
from billing.selectors import admission_check, credit_summary
from billing.services import (
    InsufficientCredits,
    QuotaExceeded,
    credits_release,
    credits_reserve,
    credits_settle,
    quota_set,
)
from novakit.errors import error_body

JAN_31 = dt.datetime(2031, 1, 31, 23, 0, tzinfo=dt.UTC)
FEB_1 = dt.datetime(2031, 2, 1, 0, 30, tzinfo=dt.UTC)
_ids = iter(range(1_000_000))


def reserve(tenant, *, tokens: int, amount: int = 10, key=None, now=JAN_31):  # type: ignore[no-untyped-def]
    return credits_reserve(
        organization_id=tenant.org.pk, api_key_id=key.pk if key is not None else None,
        request_id=f"q-{next(_ids)}", amount=amount, tokens=tokens, now=now,
    )


@pytest.mark.parametrize("period", ["monthly", "daily", "none"])
def test_given_an_org_token_quota_when_used_up_then_the_next_request_is_refused_with_402(
    tenant, period
):
    quota_set(organization=tenant.org, limit=1_000, period=period)
    first = reserve(tenant, tokens=600)
    credits_settle(request_id=first.request_id, credits=5, tokens=550)  # 550 used
    reserve(tenant, tokens=300)  # 300 held: 150 left

    with pytest.raises(QuotaExceeded) as refused:
        reserve(tenant, tokens=151)

    error = refused.value
    assert (error.status, error.code, error.message) == (402, "quota_exceeded",
                                                         "Quota exceeded for chat_tokens")
    assert error.extras == {"remaining": 150}
    assert error.body() == error_body("quota_exceeded", "Quota exceeded for chat_tokens",
                                      extras={"remaining": 150})
    assert error.body()["error"]["type"] == "insufficient_quota"
    reserve(tenant, tokens=150)  # exactly what is left still fits


def test_given_a_refused_request_then_it_holds_nothing(tenant):
    quota_set(organization=tenant.org, limit=100)
    account_before = tenant.refresh_account().reserved

    with pytest.raises(QuotaExceeded):
        reserve(tenant, tokens=101, amount=500)

    assert tenant.refresh_account().reserved == account_before
    assert not QuotaCounter.objects.filter(reserved__gt=0).exists()


def test_given_a_monthly_quota_used_up_when_the_next_month_starts_then_requests_pass(tenant):
    quota_set(organization=tenant.org, limit=1_000, period=Quota.Period.MONTHLY)
    spent = reserve(tenant, tokens=1_000, now=JAN_31)
    credits_settle(request_id=spent.request_id, credits=1, tokens=1_000, now=JAN_31)
    with pytest.raises(QuotaExceeded):
        reserve(tenant, tokens=1, now=JAN_31)

    reserve(tenant, tokens=1_000, now=FEB_1)

    january, february = QuotaCounter.objects.order_by("period_start")
    assert january.period_start == dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    assert february.period_start == dt.datetime(2031, 2, 1, tzinfo=dt.UTC)
    assert (january.used, february.reserved) == (1_000, 1_000)


def test_given_a_daily_quota_used_up_when_the_next_day_starts_then_requests_pass(tenant):
    quota_set(organization=tenant.org, limit=100, period=Quota.Period.DAILY)
    reserve(tenant, tokens=100, now=JAN_31 - dt.timedelta(hours=1))
    with pytest.raises(QuotaExceeded):
        reserve(tenant, tokens=1, now=JAN_31)

    reserve(tenant, tokens=100, now=FEB_1)


def test_given_a_quota_without_a_period_then_it_never_resets(tenant):
    quota_set(organization=tenant.org, limit=100, period=Quota.Period.NONE)
    reserve(tenant, tokens=100, now=JAN_31)

    with pytest.raises(QuotaExceeded):
        reserve(tenant, tokens=1, now=JAN_31 + dt.timedelta(days=400))


def test_given_a_key_quota_then_it_binds_that_key_only(tenant):
    limited, _ = api_key_create(organization=tenant.org, name="limited")
    quota_set(organization=tenant.org, limit=500, api_key_id=limited.pk)
    reserve(tenant, tokens=500, key=limited)

    with pytest.raises(QuotaExceeded):
        reserve(tenant, tokens=1, key=limited)

    reserve(tenant, tokens=5_000, key=tenant.key)  # the other key: no quota
    reserve(tenant, tokens=5_000)  # no key (e.g. a portal call): the org's quotas only


def test_given_an_org_and_a_key_quota_then_the_tighter_one_refuses(tenant):
    quota_set(organization=tenant.org, limit=1_000)
    quota_set(organization=tenant.org, limit=5_000, api_key_id=tenant.key.pk)
    reserve(tenant, tokens=900, key=tenant.key)

    with pytest.raises(QuotaExceeded) as refused:
        reserve(tenant, tokens=200, key=tenant.key)

    assert refused.value.extras == {"remaining": 100}
    key_counter = QuotaCounter.objects.get(quota__api_key=tenant.key)
    assert key_counter.reserved == 900  # the refused request's key hold was rolled back


def test_given_a_key_credit_cap_then_the_key_cannot_reserve_past_it(tenant):
    capped, _ = api_key_create(organization=tenant.org, name="capped")
    quota_set(organization=tenant.org, limit=1_000, metric=Quota.Metric.CREDITS,
              api_key_id=capped.pk)
    first = reserve(tenant, tokens=10, amount=800, key=capped)
    # Charged 600 of the 800 held: 400 of the cap left.
    credits_settle(request_id=first.request_id, credits=600, tokens=10)

    with pytest.raises(QuotaExceeded) as refused:
        reserve(tenant, tokens=10, amount=401, key=capped)

    assert refused.value.message == "Quota exceeded for credits"
    assert refused.value.extras == {"remaining": 400}
    reserve(tenant, tokens=10, amount=400, key=capped)
    counter = QuotaCounter.objects.get(quota__api_key=capped)
    assert (counter.used, counter.reserved) == (600, 400)


def test_given_a_settlement_then_the_quota_counts_tokens_used_not_tokens_held(tenant):
    quota_set(organization=tenant.org, limit=10_000)
    held = reserve(tenant, tokens=4_000)

    outcome = credits_settle(request_id=held.request_id, credits=3, tokens=1_234)

    counter = QuotaCounter.objects.get()
    assert (counter.used, counter.reserved) == (1_234, 0)
    assert outcome.quota_tokens_remaining == 10_000 - 1_234


def test_given_a_release_then_the_quota_counts_nothing(tenant):
    quota_set(organization=tenant.org, limit=10_000)
    held = reserve(tenant, tokens=4_000)

    credits_release(request_id=held.request_id)

    counter = QuotaCounter.objects.get()
    assert (counter.used, counter.reserved) == (0, 0)


def test_given_the_quota_is_removed_while_a_request_runs_then_it_still_settles(tenant):
    quota_set(organization=tenant.org, limit=10_000)
    held = reserve(tenant, tokens=4_000, amount=300)

    quota_set(organization=tenant.org, limit=None)
    outcome = credits_settle(request_id=held.request_id, credits=120, tokens=100)

    assert (outcome.already_closed, outcome.charged) == (False, 120)
    account = tenant.refresh_account()
    assert (account.balance, account.reserved) == (1_000_000 - 120, 0)


def test_given_no_quota_when_credits_run_out_then_the_refusal_says_credits(tenant_factory):
    poor = tenant_factory("poor", credits=50)

    with pytest.raises(InsufficientCredits) as refused:
        reserve(poor, tokens=10, amount=51)

    assert (refused.value.status, refused.value.code) == (402, "quota_exceeded")
    assert refused.value.extras == {"remaining": 50}


def test_given_quotas_then_the_credit_summary_reports_their_use(tenant):
    quota_set(organization=tenant.org, limit=1_000)
    quota_set(organization=tenant.org, limit=300, metric="credits", api_key_id=tenant.key.pk)
    now = dt.datetime.now(dt.UTC)
    held = reserve(tenant, tokens=400, amount=100, key=tenant.key, now=now)
    credits_settle(request_id=held.request_id, credits=60, tokens=250)

    quotas = credit_summary(organization_id=tenant.org.pk)["quotas"]

    by_metric = {row["metric"]: row for row in quotas}
    assert by_metric["chat_tokens"] | {"resets_at": None} == {
        "metric": "chat_tokens", "scope": "organization", "key_prefix": None,
        "period": "monthly", "limit": 1_000, "used": 250, "reserved": 0, "remaining": 750,
        "resets_at": None,
    }
    assert by_metric["credits"]["scope"] == "key"
    assert by_metric["credits"]["key_prefix"] == tenant.key.prefix
    assert (by_metric["credits"]["used"], by_metric["credits"]["remaining"]) == (60, 240)


@pytest.mark.parametrize("limit", [-1])
def test_given_a_negative_quota_then_it_is_refused(tenant, limit):
    with pytest.raises(ValueError):
        quota_set(organization=tenant.org, limit=limit)


def test_given_several_quotas_then_an_admission_check_reads_their_counters_in_one_query(tenant):
    """What a quote answers (billing.selectors.admission_check), from one read per table."""
    quota_set(organization=tenant.org, limit=1_000)  # chat tokens, the organization's
    quota_set(organization=tenant.org, limit=300, metric=Quota.Metric.CREDITS,
              api_key_id=tenant.key.pk)  # credits, the key's
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk, request_id="r",
                    amount=200, tokens=600)  # holds 600 tokens and 200 credits

    def check(credits: int, tokens: int) -> dict[str, object]:
        return admission_check(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                               credits=credits, tokens=tokens)

    with CaptureQueriesContext(connection) as queries:
        fits = check(100, 400)
    assert fits["admitted"] is True
    assert len(queries.captured_queries) == 3  # the account, the quotas, their counters
    assert check(100, 401) == {"admitted": False, "reason": "Quota exceeded for chat_tokens",
                               "available": fits["available"], "quota_remaining": 400}
    assert check(101, 10) == {"admitted": False, "reason": "Quota exceeded for credits",
                              "available": fits["available"], "quota_remaining": 100}
