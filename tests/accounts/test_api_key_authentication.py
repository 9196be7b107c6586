"""API key authentication on both API surfaces: the async inference API (/api/v1/models,
django-ninja) and the management API (/api/v1/credits, DRF).

Every refusal answers in the one error shape; nothing a client can put in the
Authorization header makes the server fail with a 500.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import auth
from accounts.models import APIKey
from accounts.scopes import BILLING_READ, CHAT, MODELS
from accounts.services import api_key_create, api_key_revoke, organization_set_active
from tests.accounts.error_shape import assert_error

MODELS_URL = "/api/v1/models"
CREDITS_URL = "/api/v1/credits"
BOTH = [MODELS_URL, CREDITS_URL]


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.mark.parametrize("url", BOTH)
def test_given_a_valid_key_then_both_surfaces_answer(client, tenant, url):
    response = client.get(url, **bearer(tenant.secret))

    assert response.status_code == 200, response.content


@pytest.mark.parametrize("url", BOTH)
def test_given_a_revoked_key_then_it_is_refused_with_401(client, tenant, url):
    assert client.get(url, **bearer(tenant.secret)).status_code == 200
    api_key_revoke(key=tenant.key, reason="leaked")
    auth.cache_clear()  # what every process does within API_KEY_CACHE_SECONDS

    body = assert_error(client.get(url, **bearer(tenant.secret)), 401, "unauthorized")

    assert body["error"]["type"] == "authentication_error"
    assert "revoked" in body["error"]["message"]


@pytest.mark.parametrize("url", BOTH)
def test_given_a_key_revoked_for_later_then_it_works_until_then(client, tenant, url):
    api_key_revoke(key=tenant.key, at=timezone.now() + timedelta(hours=1), reason="rotation")
    auth.cache_clear()

    assert client.get(url, **bearer(tenant.secret)).status_code == 200


@pytest.mark.parametrize("url", BOTH)
def test_given_an_expired_key_then_it_is_refused_with_401(client, tenant, url):
    _, secret = api_key_create(
        organization=tenant.org, scopes=[MODELS, BILLING_READ],
        expires_at=timezone.now() - timedelta(seconds=1),
    )

    body = assert_error(client.get(url, **bearer(secret)), 401, "unauthorized")

    assert "expired" in body["error"]["message"]


def test_given_a_cached_key_when_it_expires_then_it_is_refused_at_once(client, tenant):
    _, secret = api_key_create(
        organization=tenant.org, scopes=[MODELS], expires_at=timezone.now() + timedelta(seconds=0.5)
    )
    assert client.get(MODELS_URL, **bearer(secret)).status_code == 200

    time.sleep(0.6)  # well inside the 5 s cache, past the expiry

    assert_error(client.get(MODELS_URL, **bearer(secret)), 401, "unauthorized")


def test_given_a_revoked_key_when_the_cache_ttl_passes_then_it_is_refused(
    client, tenant, settings
):
    settings.API_KEY_CACHE_SECONDS = 0.3
    assert client.get(MODELS_URL, **bearer(tenant.secret)).status_code == 200

    api_key_revoke(key=tenant.key, reason="leaked")
    # Nothing clears this process's cached lookup: only its age can retire it.
    time.sleep(0.4)

    assert_error(client.get(MODELS_URL, **bearer(tenant.secret)), 401, "unauthorized")


@pytest.mark.parametrize(
    ("scopes", "url"),
    [([MODELS, CHAT], CREDITS_URL), ([BILLING_READ], MODELS_URL)],
    ids=["no-billing-read-on-credits", "no-models-or-chat-on-models"],
)
def test_given_a_key_without_the_scope_then_it_gets_403(client, tenant, scopes, url):
    _, secret = api_key_create(organization=tenant.org, scopes=scopes)

    body = assert_error(client.get(url, **bearer(secret)), 403, "forbidden")

    assert body["error"]["type"] == "permission_error"
    assert "scope" in body["error"]["message"]


@pytest.mark.parametrize("url", BOTH)
def test_given_a_suspended_organization_then_its_keys_get_403(client, tenant, url):
    organization_set_active(organization=tenant.org, active=False, reason="unpaid invoices")
    auth.cache_clear()

    body = assert_error(client.get(url, **bearer(tenant.secret)), 403, "forbidden")

    assert "suspended" in body["error"]["message"]


def test_given_two_organizations_then_each_key_sees_only_its_own_balance(
    client, tenant_factory
):
    acme = tenant_factory("acme", credits=1_111)
    globex = tenant_factory("globex", credits=2_222)

    acme_view = client.get(CREDITS_URL, **bearer(acme.secret)).json()
    globex_view = client.get(CREDITS_URL, **bearer(globex.secret)).json()

    assert acme_view["balance"] == 1_111
    assert globex_view["balance"] == 2_222


def test_given_a_secret_with_another_keys_prefix_then_it_is_refused(client, tenant, other_tenant):
    # Same visible prefix (which finds the row), different rest: the HMAC decides.
    forged = tenant.secret[:12] + other_tenant.secret[12:]

    assert_error(client.get(CREDITS_URL, **bearer(forged)), 401, "unauthorized")


MALFORMED = {
    "missing": None,
    "empty": "",
    "no-scheme": "sk_" + "a" * 43,
    "basic-scheme": "Basic dXNlcjpwYXNz",
    "bearer-only": "Bearer",
    "bearer-space": "Bearer ",
    "garbage": "Bearer !!not a key!!",
    "short-key": "Bearer sk_abc",
    "unknown-key": "Bearer sk_" + "Z" * 43,
    "non-ascii": "Bearer sk_" + "Ã©" * 20,
    "very-long": "Bearer sk_" + "a" * 20_000,
    "control-chars": "Bearer sk_\x00\x01" + "a" * 40,
}


@pytest.mark.parametrize("url", BOTH)
@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_given_a_malformed_authorization_header_then_401_in_the_error_shape(
    client, tenant, url, header
):
    # `tenant`: a real key exists, so a refusal is not just an empty table.
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}

    assert_error(client.get(url, **extra), 401, "unauthorized")


@pytest.mark.django_db(transaction=True)
async def test_given_the_async_client_then_a_valid_key_lists_models_and_a_revoked_one_is_refused(
    tenant,
):
    client = AsyncClient()

    listed = await client.get(MODELS_URL, headers={"Authorization": f"Bearer {tenant.secret}"})
    assert listed.status_code == 200
    assert listed.json()["object"] == "list" and listed.json()["data"]

    await APIKey.objects.filter(pk=tenant.key.pk).aupdate(revoked_at=timezone.now())
    auth.cache_clear()
    refused = await client.get(MODELS_URL, headers={"Authorization": f"Bearer {tenant.secret}"})
    assert_error(refused, 401, "unauthorized")


def _last_used_writes(queries: CaptureQueriesContext) -> int:
    table = APIKey._meta.db_table
    return sum(
        1 for query in queries.captured_queries
        if query["sql"].startswith("UPDATE") and table in query["sql"]
        and "last_used_at" in query["sql"]
    )


def test_given_two_quick_authentications_then_last_used_at_is_written_once(client, tenant):
    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at is None

    with CaptureQueriesContext(connection) as queries:
        assert client.get(MODELS_URL, **bearer(tenant.secret)).status_code == 200
        assert client.get(CREDITS_URL, **bearer(tenant.secret)).status_code == 200

    assert _last_used_writes(queries) == 1
    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at is not None


def test_given_another_process_wrote_last_used_at_this_minute_then_it_is_not_written_again(
    client, tenant
):
    assert client.get(MODELS_URL, **bearer(tenant.secret)).status_code == 200
    first = APIKey.objects.get(pk=tenant.key.pk).last_used_at
    # A second process: no memory of the write, only the database's.
    auth.cache_clear()

    assert client.get(MODELS_URL, **bearer(tenant.secret)).status_code == 200

    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at == first


def test_given_last_used_over_a_minute_ago_then_the_next_use_records_it(client, tenant):
    long_ago = timezone.now() - timedelta(minutes=5)
    APIKey.objects.filter(pk=tenant.key.pk).update(last_used_at=long_ago)

    assert client.get(MODELS_URL, **bearer(tenant.secret)).status_code == 200

    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at > long_ago + timedelta(minutes=4)
