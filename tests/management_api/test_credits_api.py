"""GET /api/v1/credits and /api/v1/credits/ledger: the caller's organization's books."""

from __future__ import annotations

import pytest

from billing.models import Quota
from billing.services import credits_grant, quota_set
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db

CREDITS = "/api/v1/credits"
LEDGER = "/api/v1/credits/ledger"


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
