"""GET /api/v1/credits and /api/v1/credits/ledger: the caller's organization's books, and only
its: by scoped API key and by the portal's session."""

from __future__ import annotations

import pytest

from accounts.scopes import BILLING_READ, CHAT, MODELS
from accounts.services import api_key_create
from billing.models import Quota
from billing.services import credits_grant, credits_reserve, credits_settle, quota_set
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db

CREDITS = CREDITS_URL = "/api/v1/credits"
LEDGER = LEDGER_URL = "/api/v1/credits/ledger"


@pytest.mark.parametrize("url", [CREDITS, LEDGER])
def test_credits_need_the_billing_read_scope(tenant, key_client, url):
    assert_error(key_client(tenant, scopes=("chat", "usage:read")).get(url), 403, "forbidden")
    assert key_client(tenant, scopes=("billing:read",)).get(url).status_code == 200


def test_credits_show_the_organizations_balance_and_quotas_only(tenant, other_tenant,
                                                                 key_client):
    quota_set(organization=tenant.org, limit=50_000, metric=Quota.Metric.CHAT_TOKENS)
    credits_grant(account=other_tenant.account, amount=123_456, reason="theirs")

    body = key_client(tenant, scopes=("billing:read",)).get(CREDITS).json()

    assert body["balance"] == 1_000_000 and body["reserved"] == 0
    assert body["available"] == 1_000_000 and body["currency"] == "credits"
    (quota,) = body["quotas"]
    assert (quota["metric"], quota["limit"], quota["used"], quota["remaining"]) == (
        "chat_tokens", 50_000, 0, 50_000)


def test_the_ledger_is_paginated_newest_first_and_holds_only_the_organizations_entries(
        tenant, other_tenant, key_client):
    for number in range(55):
        credits_grant(account=tenant.account, amount=1, reason=f"grant {number}")
    credits_grant(account=other_tenant.account, amount=5, reason="not yours")
    client = key_client(tenant, scopes=("billing:read",))

    first = client.get(LEDGER).json()
    second = client.get(LEDGER, {"page": 2}).json()

    assert first["count"] == 56  # the fixture's starting grant and these 55
    assert len(first["results"]) == 50 and len(second["results"]) == 6
    assert first["next"] and second["previous"]
    assert first["results"][0]["reason"] == "grant 54"
    assert second["results"][-1]["reason"] == "test credits"
    reasons = {row["reason"] for row in first["results"] + second["results"]}
    assert "not yours" not in reasons


def test_a_signed_in_viewer_reads_the_credits(tenant, person, session_client):
    response = session_client(person(tenant, "viewer")).get(CREDITS)

    assert response.status_code == 200 and response.json()["balance"] == 1_000_000

def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_given_a_billing_read_key_then_credits_shows_balance_reserved_available_and_quotas(
    client, tenant
):
    _, secret = api_key_create(organization=tenant.org, scopes=[BILLING_READ])
    quota_set(organization=tenant.org, limit=50_000)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="open-1",
                    amount=1_234, tokens=2_000)

    response = client.get(CREDITS_URL, **bearer(secret))

    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("balance", "reserved", "available", "currency")} == {
        "balance": 1_000_000, "reserved": 1_234, "available": 1_000_000 - 1_234,
        "currency": "credits",
    }
    assert set(body) == {"balance", "reserved", "available", "debt", "currency", "quotas"}
    assert body["debt"] == 0
    (quota,) = body["quotas"]
    assert (quota["metric"], quota["limit"], quota["reserved"], quota["remaining"]) == (
        "chat_tokens", 50_000, 2_000, 48_000)
    assert quota["resets_at"]


@pytest.mark.parametrize("url", [CREDITS_URL, LEDGER_URL])
def test_given_a_key_without_billing_read_then_403(client, tenant, url):
    _, secret = api_key_create(organization=tenant.org, scopes=[CHAT, MODELS])

    body = assert_error(client.get(url, **bearer(secret)), 403, "forbidden")

    assert "billing:read" in body["error"]["message"]


@pytest.mark.parametrize("url", [CREDITS_URL, LEDGER_URL])
def test_given_no_credentials_then_401(client, db, url):
    assert_error(client.get(url), 401, "unauthorized")


def test_given_entries_then_the_ledger_is_paginated_newest_first(client, tenant):
    for n in range(1, 56):
        credits_grant(account=tenant.account, amount=n, reason=f"grant {n}")

    first = client.get(LEDGER_URL, **bearer(tenant.secret)).json()
    second = client.get(LEDGER_URL + "?page=2", **bearer(tenant.secret)).json()

    assert first["count"] == second["count"] == 56  # 55 grants and the fixture's first one
    assert len(first["results"]) == 50 and len(second["results"]) == 6
    assert first["next"] and first["previous"] is None and second["next"] is None
    entries = first["results"] + second["results"]
    assert [e["reason"] for e in entries[:3]] == ["grant 55", "grant 54", "grant 53"]
    assert entries[-1]["reason"] == "test credits"
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)
    assert set(entries[0]) == {"id", "kind", "amount", "balance_after", "request_id",
                               "api_key_prefix", "reason", "created_at"}
    assert entries[0]["balance_after"] == 1_000_000 + sum(range(1, 56))


def test_given_a_usage_entry_then_the_ledger_names_its_request_and_key(client, tenant):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk, request_id="r-9",
                    amount=100, tokens=10)
    credits_settle(request_id="r-9", credits=42, tokens=10)

    newest = client.get(LEDGER_URL, **bearer(tenant.secret)).json()["results"][0]

    assert (newest["kind"], newest["amount"], newest["request_id"], newest["api_key_prefix"]) == (
        "usage", -42, "r-9", tenant.key.prefix)


def test_given_two_organizations_then_neither_sees_the_others_credits_or_ledger(
    client, tenant, other_tenant
):
    credits_grant(account=other_tenant.account, amount=777, reason="globex secret deal")
    credits_reserve(organization_id=other_tenant.org.pk, api_key_id=None, request_id="g-1",
                    amount=55, tokens=1)
    quota_set(organization=other_tenant.org, limit=123)

    summary = client.get(CREDITS_URL, **bearer(tenant.secret)).json()
    ledger = client.get(LEDGER_URL, **bearer(tenant.secret)).json()

    assert (summary["balance"], summary["reserved"], summary["quotas"]) == (1_000_000, 0, [])
    assert ledger["count"] == 1
    assert "globex secret deal" not in str(ledger)
    other = client.get(LEDGER_URL, **bearer(other_tenant.secret)).json()
    assert other["count"] == 2 and other["results"][0]["reason"] == "globex secret deal"


def test_given_a_signed_in_member_then_the_portal_session_sees_their_organization(
    client, tenant, other_tenant
):
    client.force_login(tenant.user)

    response = client.get(CREDITS_URL)

    assert response.status_code == 200 and response.json()["balance"] == 1_000_000


def test_given_a_signed_in_outsider_then_403(client, outsider):
    client.force_login(outsider)

    assert_error(client.get(CREDITS_URL), 403, "forbidden")
    assert_error(client.get(LEDGER_URL), 403, "forbidden")
