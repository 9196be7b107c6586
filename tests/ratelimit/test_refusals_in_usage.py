"""Requests refused at admission (402, 429, 503) are in the usage records: status "refused",
0 credits, named by the refusal's x-request-id, counted as failed once rolled up; an invalid
request is not; and past the per-key rate, refusals are counted by a metric instead."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY

from accounts.services import api_key_create
from completions import refusals
from completions.models import UsageRecord
from completions.rollups import usage_rollup
from completions.selectors import usage_range, usage_report
from tests.completions.helpers import assert_books_balance

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def limited(tenant):  # type: ignore[no-untyped-def]
    """The tenant's secret for a key allowed one request a minute."""
    _, secret = api_key_create(organization=tenant.org, name="one a minute",
                               requests_per_minute=1)
    return secret


def _chat(live_gateway, secret: str, body: dict | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{live_gateway.api_base}/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {secret}"},
                      json=body or {"model": "novakit/echo", "messages": HELLO,
                                    "max_tokens": 16})


def _unrecorded(status: str) -> float:
    return REGISTRY.get_sample_value("novakit_refusals_unrecorded_total",
                                     {"http_status": status}) or 0.0


def test_a_rate_limited_request_is_a_refused_record_the_usage_report_counts_as_failed(
    tenant, limited, live_gateway, fake_upstream
):
    answered = _chat(live_gateway, limited)
    refused = _chat(live_gateway, limited)

    assert (answered.status_code, refused.status_code) == (200, 429)
    record = UsageRecord.objects.get(request_id=refused.headers["x-request-id"])
    assert (record.status, record.http_status, record.error_code) == ("refused", 429,
                                                                       "rate_limited")
    assert (record.credits, record.credits_reserved, record.model) == (0, 0, "novakit/echo")
    assert record.api_key.name == "one a minute"
    assert_books_balance(tenant)

    usage_rollup()
    start, end = usage_range(granularity="day", start=None, end=None)
    totals = usage_report(organization_id=tenant.org.pk, granularity="day", start=start,
                          end=end)["totals"]
    assert (totals["requests"], totals["errors"]) == (2, 1)


def test_a_request_short_of_credits_is_a_refused_record_with_its_receipt(
    tenant_factory, live_gateway, fake_upstream
):
    poor = tenant_factory("poor", credits=1)

    refused = _chat(live_gateway, poor.secret, {"model": "openai/gpt-4o", "messages": HELLO})

    assert refused.status_code == 402
    request_id = refused.headers["x-request-id"]
    receipt = httpx.get(f"{live_gateway.api_base}/generations/{request_id}", timeout=10,
                        headers={"Authorization": f"Bearer {poor.secret}"})
    assert receipt.status_code == 200, receipt.text
    assert UsageRecord.objects.get(request_id=request_id).error_code == "quota_exceeded"
    assert fake_upstream.requests == []


def test_an_invalid_request_is_not_usage(tenant, live_gateway, fake_upstream):
    response = _chat(live_gateway, tenant.secret, {"model": "nope/nope", "messages": HELLO})

    assert response.status_code == 404
    assert not response.headers["x-request-id"].startswith("chatcmpl-")  # the log's id only
    assert not UsageRecord.objects.exists()


def test_past_the_per_key_rate_a_refusal_is_counted_not_written_and_names_no_id(
    tenant, limited, live_gateway, fake_upstream, settings
):
    settings.USAGE_REFUSALS_PER_KEY_PER_SECOND = 0
    refusals._recorded_this_second.clear()
    before = _unrecorded("429")
    _chat(live_gateway, limited)

    refused = [_chat(live_gateway, limited) for _ in range(3)]

    assert [response.status_code for response in refused] == [429] * 3
    # The id every response carries for the logs, not a usage record's.
    assert not any(response.headers["x-request-id"].startswith("chatcmpl-")
                   for response in refused)
    assert not UsageRecord.objects.filter(status="refused").exists()
    assert _unrecorded("429") == before + 3


def test_the_per_key_rate_is_per_key_and_per_second(settings):
    settings.USAGE_REFUSALS_PER_KEY_PER_SECOND = 2
    refusals._recorded_this_second.clear()

    first = [refusals._within_budget(7) for _ in range(3)]
    other = refusals._within_budget(8)
    second, count = refusals._recorded_this_second[7]
    refusals._recorded_this_second[7] = (second - 1, count)  # as if a second had passed

    assert (first, other, refusals._within_budget(7)) == ([True, True, False], True, True)
