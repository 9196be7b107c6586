"""The management API's keys: list, create, change, revoke, rotate; by key or by session."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import auth
from accounts.keys import visible_prefix
from accounts.models import APIKey, AuditEvent, Membership
from accounts.scopes import KEYS_WRITE
from billing.models import Quota
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db

KEYS = "/api/v1/keys"


def works(secret: str) -> int:
    """The status a request to the management API gets with `secret`, read afresh."""
    auth.cache_clear()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.get(KEYS).status_code


# --- listing ---------------------------------------------------------------------------------


def test_given_two_organizations_a_key_lists_only_its_own_organizations_keys(
        tenant, other_tenant, key_client):
    response = key_client(tenant).get(KEYS)

    assert response.status_code == 200
    prefixes = {row["prefix"] for row in response.json()["data"]}
    assert tenant.key.prefix in prefixes
    assert other_tenant.key.prefix not in prefixes
    for row in response.json()["data"]:
        assert "secret" not in row and "key_hash" not in row


def test_a_key_without_keys_write_cannot_list_keys(tenant, key_client):
    response = key_client(tenant, scopes=("chat", "usage:read")).get(KEYS)

    assert_error(response, 403, "forbidden")


def test_without_credentials_the_keys_are_refused_with_401(tenant, client):
    assert_error(client.get(KEYS), 401, "unauthorized")


@pytest.mark.parametrize("role", Membership.Role.values)
def test_every_member_may_read_the_key_list(tenant, person, session_client, role):
    response = session_client(person(tenant, role)).get(KEYS)

    assert response.status_code == 200
    assert [row["prefix"] for row in response.json()["data"]] == [tenant.key.prefix]
    assert response.json()["data"][0]["created_by"] == tenant.user.username


def test_a_signed_in_user_of_no_organization_is_refused(outsider, session_client):
    assert_error(session_client(outsider).get(KEYS), 403, "forbidden")


# --- creating -----------------------------------------------------------------------------


def test_creating_a_key_returns_its_secret_once_and_stores_only_a_hash(tenant, key_client):
    expires = (timezone.now() + dt.timedelta(days=30)).replace(microsecond=0)

    response = key_client(tenant).post(KEYS, {
        "name": "ci", "scopes": ["chat", "models"], "requests_per_minute": 60,
        "tokens_per_minute": 50_000, "max_concurrent_requests": 4, "credit_cap": 2_000,
        "allowed_models": ["openai/gpt-4o-mini"], "expires_at": expires.isoformat(),
    }, format="json")

    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("sk_") and body["prefix"] == visible_prefix(secret)
    assert body["scopes"] == ["chat", "models"]
    assert body["credit_cap"] == 2_000
    key = APIKey.objects.get(pk=body["id"])
    assert (key.requests_per_minute, key.tokens_per_minute, key.max_concurrent_requests) == (
        60, 50_000, 4)
    assert key.allowed_models == ["openai/gpt-4o-mini"] and key.expires_at == expires
    assert secret not in str(APIKey.objects.filter(pk=key.pk).values().get())
    assert Quota.objects.get(api_key=key, metric=Quota.Metric.CREDITS).limit == 2_000
    assert auth.authenticate_secret(secret, scope="chat").key_id == key.pk
    detail = key_client(tenant).get(f"{KEYS}/{key.pk}").json()
    assert "secret" not in detail and detail["credit_cap"] == 2_000
    audit = AuditEvent.objects.get(action="api_key.create", target=key.prefix)
    assert audit.actor_label == f"api key {tenant.key.prefix}"


@pytest.mark.parametrize("payload, param", [
    ({"scopes": ["chat", "root"]}, "scopes"),
    ({"scopes": []}, "scopes"),
    ({"requests_per_minute": 0}, "requests_per_minute"),
    ({"credit_cap": -1}, "credit_cap"),
])
def test_an_invalid_key_is_refused_with_400_and_nothing_is_created(
        tenant, key_client, payload, param):
    before = APIKey.objects.count()

    response = key_client(tenant).post(KEYS, payload, format="json")

    body = assert_error(response, 400, "invalid_request")
    assert param in body["error"]["message"] or body["error"]["param"] == param
    assert APIKey.objects.count() == before


def test_a_key_cannot_mint_a_key_with_scopes_it_lacks(tenant, key_client):
    client = key_client(tenant, scopes=(KEYS_WRITE,))
    before = APIKey.objects.count()

    response = client.post(KEYS, {"name": "escalate", "scopes": ["chat", "keys:write"]},
                           format="json")

    body = assert_error(response, 403, "forbidden")
    assert "chat" in body["error"]["message"]
    assert APIKey.objects.count() == before


def test_a_key_cannot_grant_another_key_scopes_it_lacks(tenant, key_client):
    client = key_client(tenant, scopes=(KEYS_WRITE,))

    response = client.patch(f"{KEYS}/{tenant.key.pk}", {"scopes": ["billing:read"]},
                            format="json")

    assert_error(response, 403, "forbidden")
    tenant.key.refresh_from_db()
    assert "keys:write" in tenant.key.scopes


@pytest.mark.parametrize("role, allowed", [
    (Membership.Role.OWNER, True), (Membership.Role.ADMIN, True),
    (Membership.Role.DEVELOPER, True), (Membership.Role.VIEWER, False),
])
def test_which_roles_may_create_keys(tenant, person, session_client, role, allowed):
    user = person(tenant, role)

    response = session_client(user).post(KEYS, {"name": "mine"}, format="json")

    if allowed:
        assert response.status_code == 201
        assert APIKey.objects.get(pk=response.json()["id"]).created_by == user
    else:
        assert_error(response, 403, "forbidden")
        assert not APIKey.objects.filter(name="mine").exists()


def test_a_session_caller_must_send_the_csrf_token(tenant, session_client):
    client = session_client(tenant.user, enforce_csrf_checks=True)

    response = client.post(KEYS, {"name": "no-csrf"}, format="json")

    assert_error(response, 403, "forbidden")
    assert not APIKey.objects.filter(name="no-csrf").exists()


# --- changing, revoking, rotating ---------------------------------------------------------


def test_patching_a_key_changes_its_settings_and_credit_cap(tenant, key_client):
    client = key_client(tenant)
    url = f"{KEYS}/{tenant.key.pk}"

    changed = client.patch(url, {"name": "renamed", "requests_per_minute": 10,
                                 "credit_cap": 500}, format="json")
    removed = client.patch(url, {"credit_cap": None}, format="json")

    assert changed.status_code == 200
    assert changed.json()["name"] == "renamed" and changed.json()["credit_cap"] == 500
    assert removed.json()["credit_cap"] is None
    assert not Quota.objects.filter(api_key=tenant.key).exists()
    assert AuditEvent.objects.filter(action="api_key.update", target=tenant.key.prefix).exists()


def test_a_revoked_key_is_refused_from_then_on(tenant, key_client):
    spare = key_client(tenant).post(KEYS, {"name": "spare", "scopes": ["keys:write"]},
                                    format="json").json()
    assert works(spare["secret"]) == 200

    response = key_client(tenant).post(f"{KEYS}/{spare['id']}/revoke", {"reason": "leaked"},
                                       format="json")

    assert response.status_code == 200 and response.json()["revoked_at"]
    assert works(spare["secret"]) == 401
    audit = AuditEvent.objects.get(action="api_key.revoke", target=spare["prefix"])
    assert audit.reason == "leaked"


def test_rotating_keeps_the_old_key_working_through_the_grace_period_then_refuses_it(
        tenant, key_client):
    old = key_client(tenant).post(KEYS, {"name": "rotating", "scopes": ["keys:write"],
                                         "credit_cap": 700}, format="json").json()

    rotated = key_client(tenant).post(f"{KEYS}/{old['id']}/rotate", {"grace_seconds": 1},
                                      format="json")

    assert rotated.status_code == 201
    new = rotated.json()
    assert new["secret"] != old["secret"] and new["name"] == "rotating"
    assert new["scopes"] == ["keys:write"] and new["credit_cap"] == 700
    stops = dt.datetime.fromisoformat(new["replaces"]["stops_working_at"])
    assert new["replaces"]["id"] == old["id"]
    assert works(old["secret"]) == 200  # within the grace period
    assert works(new["secret"]) == 200
    time.sleep(max(0.0, (stops - timezone.now()).total_seconds()) + 0.05)
    assert works(old["secret"]) == 401  # its revocation time has come
    assert works(new["secret"]) == 200


def test_rotating_without_grace_stops_the_old_key_at_once(tenant, key_client):
    old = key_client(tenant).post(KEYS, {"name": "now", "scopes": ["keys:write"]},
                                  format="json").json()

    key_client(tenant).post(f"{KEYS}/{old['id']}/rotate", {"grace_seconds": 0}, format="json")

    assert works(old["secret"]) == 401


def test_a_revoked_key_cannot_be_rotated(tenant, key_client):
    spare = key_client(tenant).post(KEYS, {"name": "gone"}, format="json").json()
    key_client(tenant).post(f"{KEYS}/{spare['id']}/revoke", format="json")

    response = key_client(tenant).post(f"{KEYS}/{spare['id']}/rotate", {"grace_seconds": 60},
                                       format="json")

    assert_error(response, 400, "invalid_request")



@pytest.mark.parametrize("change", [{"name": "renamed"}, {"credit_cap": 5}])
def test_a_revoked_key_cannot_be_changed(tenant, key_client, change):
    spare = key_client(tenant).post(KEYS, {"name": "gone", "credit_cap": 10},
                                    format="json").json()
    key_client(tenant).post(f"{KEYS}/{spare['id']}/revoke", format="json")

    response = key_client(tenant).patch(f"{KEYS}/{spare['id']}", change, format="json")

    assert_error(response, 400, "invalid_request")
    after = key_client(tenant).get(f"{KEYS}/{spare['id']}").json()
    assert (after["name"], after["credit_cap"]) == ("gone", 10)
    assert not AuditEvent.objects.filter(action="api_key.update", target=spare["prefix"]).exists()


# --- another organization's keys ------------------------------------------------------------


@pytest.mark.parametrize("method, suffix, payload", [
    ("get", "", None),
    ("patch", "", {"name": "hijacked"}),
    ("post", "/revoke", {}),
    ("post", "/rotate", {"grace_seconds": 0}),
])
def test_another_organizations_key_is_404_by_key_and_by_session(
        tenant, other_tenant, key_client, session_client, method, suffix, payload):
    url = f"{KEYS}/{other_tenant.key.pk}{suffix}"
    for client in (key_client(tenant), session_client(tenant.user)):
        response = getattr(client, method)(url, payload, format="json")

        assert_error(response, 404, "not_found")
        assert other_tenant.key.prefix not in response.content.decode()
    other_tenant.key.refresh_from_db()
    assert other_tenant.key.name == "test" and other_tenant.key.revoked_at is None
    assert APIKey.objects.filter(organization=other_tenant.org).count() == 1


def test_the_session_acts_for_the_chosen_organization_among_its_own(
        tenant, other_tenant, tenant_factory, session_client):
    from accounts.services import membership_add

    membership_add(organization=other_tenant.org, user=tenant.user,
                   role=Membership.Role.DEVELOPER)
    stranger = tenant_factory("initech")

    chosen = session_client(tenant.user, organization_id=other_tenant.org.pk).get(KEYS)
    not_mine = session_client(tenant.user, organization_id=stranger.org.pk).get(KEYS)

    assert [row["prefix"] for row in chosen.json()["data"]] == [other_tenant.key.prefix]
    # Not a member of the one in the session: back to their own, never the stranger's.
    assert [row["prefix"] for row in not_mine.json()["data"]] == [tenant.key.prefix]
