"""The usage page (charts and tables from rollups) and the billing page (credits, ledger, CSV)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import Quota
from billing.services import credits_grant, credits_reserve, quota_set
from completions.rollups import usage_rollup
from tests.management_api.helpers import usage_record

pytestmark = pytest.mark.django_db

USAGE = "/portal/usage/"
BILLING = "/portal/billing/"


def chart(html: str, name: str) -> str:
    found = re.search(rf'<figure class="chart" data-chart="{name}">.*?</figure>', html, re.S)
    assert found, f"no {name} chart"
    return found.group(0)


def test_the_usage_page_charts_requests_tokens_and_credits_with_tables(
        viewer, tenant, other_tenant):
    second, _ = api_key_create(organization=tenant.org, name="batch jobs")
    usage_record(tenant, model="openai/gpt-4o-mini", credits=10, prompt_tokens=100,
                 completion_tokens=50)
    usage_record(tenant, model="anthropic/claude-3-haiku", credits=30, key=second)
    usage_record(tenant, model="openai/gpt-4o-mini", credits=0, status="error")
    usage_record(other_tenant, model="meta-llama/llama-3.1-405b", credits=777)
    usage_rollup()

    response = viewer.get(USAGE)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-total="requests">3<' in html and 'data-total="credits">40<' in html
    requests = chart(html, "requests")
    assert "<svg" in requests and 'viewBox="0 0 30 100"' in requests  # 30 days, one column each
    assert len(re.findall(r"<rect ", requests)) == 2  # today's column: succeeded + failed
    assert "2 succeeded" in requests and "1 failed" in requests
    assert "completion" in chart(html, "tokens")
    assert "40 credits" in chart(html, "credits")
    by_model = re.search(r'id="by-model".*?</section>', html, re.S).group(0)
    assert by_model.index("anthropic/claude-3-haiku") < by_model.index("openai/gpt-4o-mini")
    by_key = re.search(r'id="by-key".*?</section>', html, re.S).group(0)
    assert f"batch jobs ({second.prefix}…)" in by_key
    assert "meta-llama/llama-3.1-405b" not in by_model and "777" not in html


def test_usage_by_hour_for_one_key_and_model(owner, tenant):
    second, _ = api_key_create(organization=tenant.org, name="second")
    usage_record(tenant, model="openai/gpt-4o", credits=12, key=second)
    usage_record(tenant, model="openai/gpt-4o-mini", credits=3)
    usage_rollup()
    today = timezone.now().date().isoformat()

    html = owner.get(USAGE, {"granularity": "hour", "start": today, "end": today,
                             "key_id": second.pk, "model": "openai/gpt-4o"}).content.decode()

    assert 'viewBox="0 0 24 100"' in chart(html, "credits")
    assert 'data-total="credits">12<' in html


def test_usage_not_yet_rolled_up_is_listed_and_counted_but_not_charted(owner, tenant,
                                                                      other_tenant):
    usage_record(tenant, credits=10)
    usage_record(other_tenant, credits=10)

    html = owner.get(USAGE).content.decode()

    assert 'data-total="requests">0<' in html and "No usage in this range." in html
    assert 'data-awaiting-rollup="1"' in html
    assert "1 request settled since the charts were last updated" in html
    assert len(re.findall(r'href="/portal/usage/chatcmpl-test-', html)) == 1


def test_once_rolled_up_the_page_no_longer_says_requests_are_awaiting(owner, tenant):
    usage_record(tenant, credits=10)
    usage_rollup()
    html = owner.get(USAGE).content.decode()
    assert 'data-total="requests">1<' in html and "data-awaiting-rollup" not in html

    usage_record(tenant, credits=5)
    usage_record(tenant, credits=5)

    html = owner.get(USAGE).content.decode()
    assert 'data-total="requests">1<' in html and 'data-awaiting-rollup="2"' in html
    assert "2 requests settled since the charts were last updated" in html


@pytest.mark.parametrize("query, message", [
    ({"start": "2026-02-01", "end": "2026-01-01"}, "The end is before the start."),
    ({"granularity": "hour", "start": "2025-01-01", "end": "2025-12-31"}, "at most 744 hour"),
    ({"granularity": "minute"}, "Select a valid choice"),
])
def test_an_invalid_usage_range_shows_the_error(owner, query, message):
    response = owner.get(USAGE, query)

    assert response.status_code == 400
    assert message in response.content.decode()


def test_the_billing_page_shows_balance_reservations_and_quota_use(viewer, tenant):
    quota_set(organization=tenant.org, limit=200, metric=Quota.Metric.CHAT_TOKENS)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="chatcmpl-open-one", amount=1_500, tokens=150)

    html = viewer.get(BILLING).content.decode()

    assert 'data-credits="balance">1,000,000<' in html
    assert 'data-credits="reserved">1,500<' in html
    assert 'data-credits="available">998,500<' in html
    assert "chatcmpl-open-one" in html
    quota = re.search(r'data-quota="chat_tokens".*?</p>', html, re.S).group(0)
    assert 'aria-valuenow="75"' in quota and "150 held of 200" in quota


def test_the_ledger_is_paginated_newest_first(owner, tenant, other_tenant):
    for number in range(30):
        credits_grant(account=tenant.account, amount=1, reason=f"top-up {number}")
    credits_grant(account=other_tenant.account, amount=1, reason="someone else's")

    first = owner.get(BILLING).content.decode()
    second = owner.get(BILLING, {"page": 2}).content.decode()

    assert "Page 1 of 2" in first and "top-up 29" in first and "top-up 5" in first
    assert "top-up 4" not in first
    assert "top-up 4" in second and "test credits" in second
    assert "someone else" not in first + second


def test_the_ledger_exports_as_csv(owner, tenant, other_tenant):
    credits_grant(account=tenant.account, amount=5, reason="=HYPERLINK(\"x\")")
    credits_grant(account=other_tenant.account, amount=1, reason="someone else's")

    response = owner.get("/portal/billing/ledger.csv")

    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="novakit-ledger-acme.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["reason"] for row in rows] == ["'=HYPERLINK(\"x\")", "test credits"]
    assert [int(row["amount"]) for row in rows] == [5, 1_000_000]
    assert rows[0]["balance_after"] == "1000005"
    assert dt.datetime.fromisoformat(rows[0]["created_at"]).tzinfo is not None


def test_the_home_page_shows_this_organizations_last_30_days(viewer, tenant, other_tenant):
    usage_record(tenant, model="openai/gpt-4o-mini", credits=10)
    usage_record(tenant, model="anthropic/claude-3-haiku", credits=30)
    usage_record(other_tenant, model="openai/gpt-4o-mini", credits=777)
    usage_rollup()

    html = viewer.get("/portal/").content.decode()

    stats = dict(re.findall(
        r'<div class="label">([^<]+)</div><div class="value">([^<]+)</div>', html))
    assert stats["Requests, 30 days"] == "2"
    assert stats["Credits used, 30 days"] == "40"
