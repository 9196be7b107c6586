"""Recent requests on the usage page, and each one's receipt: the API's numbers, the ledger's."""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from html import unescape

import pytest
from django.test import Client

from accounts.models import Membership
from accounts.services import api_key_create
from billing.models import LedgerEntry
from billing.pricing import price_request
from billing.services import credits_reserve
from completions.models import UsageRecord
from completions.services import Ending, RequestOutcome, request_settle
from tests.management_api.helpers import usage_record

pytestmark = pytest.mark.django_db

USAGE = "/portal/usage/"
_ids = itertools.count(1)


def settled_request(tenant, *, model: str = "openai/gpt-4o", prompt_tokens: int = 120,  # type: ignore[no-untyped-def]
                    completion_tokens: int = 80, reserve: int = 5_000, status: str = "ok",
                    web_search: bool = False, key=None) -> UsageRecord:
    """A request reserved and settled through the gateway's own settlement service."""
    request_id = f"chatcmpl-portal-{next(_ids)}"
    key = key or tenant.key
    reservation = credits_reserve(organization_id=tenant.org.pk, api_key_id=key.pk,
                                  request_id=request_id, amount=reserve,
                                  tokens=prompt_tokens + 500)
    multiplier = Decimal("2.00")
    request_settle(outcome=RequestOutcome(
        request_id=request_id, organization_id=tenant.org.pk, api_key_id=key.pk, model=model,
        multiplier=multiplier, credits_reserved=reserve, streamed=status == "cancelled",
        provider="openrouter", prompt_tokens=prompt_tokens,
        ending=Ending.CANCELLED if status == "cancelled" else Ending.COMPLETED,
        quota_holds=reservation.quota_holds,
        completion_tokens=completion_tokens, latency_ms=850, ttft_ms=120,
        price=price_request(multiplier=multiplier, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, web_search=web_search),
    ))
    return UsageRecord.objects.get(request_id=request_id)


def receipt_page(client: Client, request_id: str) -> str:
    response = client.get(f"{USAGE}{request_id}/")
    assert response.status_code == 200
    return response.content.decode()


def shown(html: str, name: str) -> str:
    found = re.search(rf'data-receipt="{name}">([^<]*)<', html)
    assert found, f"no {name} on the receipt"
    return found.group(1)


def embedded_json(html: str) -> dict:
    found = re.search(r"<pre><code>(.*?)</code></pre>", html, re.S)
    assert found, "no JSON on the receipt page"
    return json.loads(unescape(found.group(1)))


# --- the recent requests table -----------------------------------------------------------------


def test_the_usage_page_lists_recent_requests_with_a_link_to_each_receipt(
        viewer, tenant, other_tenant):
    older = settled_request(tenant, model="openai/gpt-4o-mini")
    newer = settled_request(tenant, model="openai/gpt-4o")
    foreign = settled_request(other_tenant)

    html = viewer.get(USAGE).content.decode()

    recent = re.search(r'id="recent".*?</section>', html, re.S)
    assert recent, html
    table = recent.group(0)
    for record in (older, newer):
        row = re.search(rf'<tr data-request-id="{record.request_id}">.*?</tr>', table, re.S)
        assert row, table
        assert f'href="/portal/usage/{record.request_id}/"' in row.group(0)
        assert record.model in row.group(0) and f'class="num">{record.credits}<' in row.group(0)
    assert table.index(newer.request_id) < table.index(older.request_id)
    assert foreign.request_id not in html


def test_recent_requests_follow_the_key_and_model_filter_and_stop_at_fifty(owner, tenant):
    second, _ = api_key_create(organization=tenant.org, name="second")
    by_second = settled_request(tenant, key=second, model="openai/gpt-4o-mini")
    by_first = settled_request(tenant, model="openai/gpt-4o")

    html = owner.get(USAGE, {"key_id": second.pk}).content.decode()
    assert by_second.request_id in html and by_first.request_id not in html
    html = owner.get(USAGE, {"model": "openai/gpt-4o"}).content.decode()
    assert by_first.request_id in html and by_second.request_id not in html

    for _ in range(55):
        usage_record(tenant)
    table = re.search(r'id="recent".*?</section>',
                      owner.get(USAGE).content.decode(), re.S).group(0)
    assert table.count("<tr data-request-id=") == 50


# --- the receipt --------------------------------------------------------------------------------


def test_the_receipt_shows_what_the_ledger_charged(viewer, tenant):
    record = settled_request(tenant, web_search=True)
    entry = LedgerEntry.objects.get(request_id=record.request_id, kind=LedgerEntry.Kind.USAGE)

    html = receipt_page(viewer, record.request_id)

    assert record.credits > 0 and entry.amount == -record.credits
    assert shown(html, "credits_used") == f"{-entry.amount:,}"
    assert shown(html, "prompt_tokens") == "120" and shown(html, "completion_tokens") == "80"
    assert shown(html, "ledger_amount") == (
        f"#{entry.pk}: {entry.amount:,}, balance after {entry.balance_after:,}")
    assert record.credits_breakdown["web_search"] > 0
    for part, amount in record.credits_breakdown.items():
        assert f'data-breakdown="{part}">{amount:,}<' in html
    assert sum(record.credits_breakdown.values()) == -entry.amount
    assert "openai/gpt-4o" in html and f"{tenant.key.prefix}…" in html and "2.00\u00d7" in html
    assert "1E+" not in html  # rates in plain digits (a normalized Decimal prints as 1E+2)


def test_the_receipt_page_shows_exactly_what_the_api_returns(owner, tenant):
    record = settled_request(tenant)

    html = receipt_page(owner, record.request_id)
    api = Client().get(f"/api/v1/generations/{record.request_id}",
                       HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")

    assert api.status_code == 200
    assert embedded_json(html) == api.json()
    assert f"/api/v1/generations/{record.request_id}" in html


def test_a_cancelled_stream_shows_what_was_delivered_charged_and_released(owner, tenant):
    record = settled_request(tenant, status="cancelled", completion_tokens=17, reserve=4_000)
    entry = LedgerEntry.objects.get(request_id=record.request_id, kind=LedgerEntry.Kind.USAGE)

    html = receipt_page(owner, record.request_id)

    assert 'data-testid="receipt-status">cancelled<' in html
    assert shown(html, "delivered_completion_tokens") == "17"
    assert shown(html, "cancelled_charged") == f"{-entry.amount:,}"
    assert shown(html, "cancelled_released") == f"{4_000 + entry.amount:,}"
    assert embedded_json(html)["cancelled"] == {
        "delivered_completion_tokens": 17, "charged": -entry.amount,
        "released": 4_000 + entry.amount}


def test_a_request_still_running_has_a_pending_receipt(owner, tenant):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="chatcmpl-still-running", amount=1_234, tokens=100)

    html = receipt_page(owner, "chatcmpl-still-running")

    assert 'data-testid="receipt-status">pending<' in html
    assert "1,234 credits are held" in html


def test_another_organizations_or_an_unknown_request_is_not_found(owner, tenant, other_tenant):
    foreign = settled_request(other_tenant)
    credits_reserve(organization_id=other_tenant.org.pk, api_key_id=other_tenant.key.pk,
                    request_id="chatcmpl-theirs-running", amount=10, tokens=10)

    for request_id in (foreign.request_id, "chatcmpl-theirs-running", "chatcmpl-no-such"):
        response = owner.get(f"{USAGE}{request_id}/")
        assert response.status_code == 404
        assert str(foreign.credits_reserved) not in response.content.decode()


def test_signed_out_visitors_are_sent_to_sign_in(tenant):
    record = settled_request(tenant)

    response = Client().get(f"{USAGE}{record.request_id}/")

    assert response.status_code == 302
    assert response["Location"].startswith("/portal/signin/?next=")


@pytest.mark.parametrize("role", Membership.Role.values)
def test_every_member_reads_a_receipt(member_client, tenant, role):
    record = settled_request(tenant)

    html = receipt_page(member_client(role), record.request_id)

    assert shown(html, "credits_used") == f"{record.credits:,}"
