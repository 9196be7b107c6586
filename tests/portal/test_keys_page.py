"""The API keys page: the list, creating a key (secret shown once), revoking, rotating."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from accounts import auth
from accounts.keys import visible_prefix
from accounts.models import APIKey, AuditEvent, Membership
from billing.models import Quota

pytestmark = pytest.mark.django_db

KEYS = "/portal/keys/"


def secret_in(html: str) -> str:
    found = re.search(r'id="new-secret"[^>]*>(sk_[^<]+)<', html)
    assert found, "no secret on the page"
    return found.group(1)


def test_the_list_shows_prefix_scopes_creator_and_last_use(owner, tenant, other_tenant):
    APIKey.objects.filter(pk=tenant.key.pk).update(
        last_used_at=dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC))

    page = owner.get(KEYS).content.decode()

    row = re.search(rf'<tr[^>]*data-key-prefix="{tenant.key.prefix}".*?</tr>', page, re.S)
    assert row, page
    for text in (f"{tenant.key.prefix}…", "chat", "keys:write", "acme-owner", "2026-03-04 05:06",
                 "active"):
        assert text in row.group(0)
    assert other_tenant.key.prefix not in page


def test_creating_a_key_shows_its_secret_once_and_never_again(owner, tenant):
    response = owner.post(KEYS, {
        "name": "deploy", "scopes": ["chat", "usage:read"], "requests_per_minute": "30",
        "credit_cap": "500", "allowed_models": ["openai/gpt-4o-mini"],
        "expires_on": (timezone.now() + dt.timedelta(days=10)).date().isoformat(),
    }, follow=True)

    assert response.redirect_chain[0][1] == 302
    assert response["Cache-Control"] == "no-store"
    html = response.content.decode()
    secret = secret_in(html)
    assert "shown this once" in html and 'data-copy="#new-secret"' in html
    key = APIKey.objects.get(prefix=visible_prefix(secret))
    assert (key.name, key.scopes, key.requests_per_minute) == ("deploy", ["chat", "usage:read"], 30)
    assert key.allowed_models == ["openai/gpt-4o-mini"] and key.created_by == tenant.user
    assert key.expires_at is not None and key.expires_at.hour == 0
    assert Quota.objects.get(api_key=key, metric=Quota.Metric.CREDITS).limit == 500
    assert auth.authenticate_secret(secret, scope="chat").key_id == key.pk
    # Nowhere to find it again: not in the session, not in the list.
    assert secret not in str(dict(owner.session))
    assert secret not in owner.get(KEYS).content.decode()


@pytest.mark.parametrize("fields, field", [
    ({"scopes": []}, "scopes"),
    ({"scopes": ["root"]}, "scopes"),
    ({"requests_per_minute": "0"}, "requests_per_minute"),
    ({"allowed_models": ["no/such-model"]}, "allowed_models"),
    ({"expires_on": "2020-01-01"}, "expires_on"),
    ({"name": ""}, "name"),
])
def test_an_invalid_key_form_shows_the_field_error_and_creates_nothing(owner, fields, field):
    before = APIKey.objects.count()

    response = owner.post(KEYS, {"name": "x", "scopes": ["chat"], **fields})

    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert 'class="errorlist"' in response.content.decode()
    assert APIKey.objects.count() == before


def test_a_viewer_sees_the_keys_without_any_button_and_is_refused_every_change(viewer, tenant):
    page = viewer.get(KEYS).content.decode()

    assert tenant.key.prefix in page
    assert "Create the key" not in page and ">Revoke<" not in page and ">Rotate<" not in page
    assert viewer.post(KEYS, {"name": "nope", "scopes": ["chat"]}).status_code == 403
    assert viewer.post(f"/portal/keys/{tenant.key.pk}/revoke").status_code == 403
    assert viewer.post(f"/portal/keys/{tenant.key.pk}/rotate",
                       {"grace_seconds": "0"}).status_code == 403
    tenant.key.refresh_from_db()
    assert tenant.key.revoked_at is None and not APIKey.objects.filter(name="nope").exists()


def test_a_developer_creates_and_revokes_keys(member_client):
    developer = member_client(Membership.Role.DEVELOPER)

    created = developer.post(KEYS, {"name": "dev", "scopes": ["chat"]}, follow=True)

    assert 'id="new-secret"' in created.content.decode()
    key = APIKey.objects.get(name="dev")
    assert developer.post(f"/portal/keys/{key.pk}/revoke").status_code == 302


def test_revoking_a_key_stops_it_at_once_and_is_audited(owner, tenant):
    response = owner.post(f"/portal/keys/{tenant.key.pk}/revoke", follow=True)

    assert f"Revoked {tenant.key.prefix}" in response.content.decode()
    tenant.key.refresh_from_db()
    assert tenant.key.is_revoked
    auth.cache_clear()
    with pytest.raises(auth.ApiError) as refused:
        auth.authenticate_secret(tenant.secret, scope="chat")
    assert refused.value.status == 401
    assert AuditEvent.objects.get(action="api_key.revoke").actor == tenant.user


def test_rotating_a_key_shows_the_new_secret_and_keeps_the_old_one_for_the_grace(owner, tenant):
    Quota.objects.create(organization=tenant.org, api_key=tenant.key,
                         metric=Quota.Metric.CREDITS, limit=900)

    response = owner.post(f"/portal/keys/{tenant.key.pk}/rotate", {"grace_seconds": "86400"},
                          follow=True)

    assert response.status_code == 200
    assert f"It replaces <span class=\"mono\">{tenant.key.prefix}…</span>" in (
        response.content.decode())
    secret = secret_in(response.content.decode())
    new = APIKey.objects.get(prefix=visible_prefix(secret))
    assert new.scopes == tenant.key.scopes and new.name == tenant.key.name
    assert Quota.objects.get(api_key=new, metric=Quota.Metric.CREDITS).limit == 900
    tenant.key.refresh_from_db()
    grace = tenant.key.revoked_at - timezone.now()
    assert dt.timedelta(hours=23) < grace <= dt.timedelta(hours=24)
    auth.cache_clear()
    assert auth.authenticate_secret(tenant.secret, scope="chat").key_id == tenant.key.pk
    listing = owner.get(KEYS).content.decode()
    assert "rotating" in listing


def test_another_organizations_key_cannot_be_revoked_or_rotated(owner, other_tenant):
    for action in ("revoke", "rotate"):
        response = owner.post(f"/portal/keys/{other_tenant.key.pk}/{action}",
                              {"grace_seconds": "0"})
        assert response.status_code == 404
    other_tenant.key.refresh_from_db()
    assert other_tenant.key.revoked_at is None
    assert APIKey.objects.filter(organization=other_tenant.org).count() == 1


# --- post/redirect/get: a reload repeats the GET, never the POST --------------------------------


def shown_once_then_gone(client, response) -> str:  # type: ignore[no-untyped-def]
    """The secret on the page the POST redirects to, and gone from that page's reload."""
    assert response.status_code == 302, "the POST must redirect, or a reload repeats it"
    shown = client.get(response["Location"])
    assert shown.status_code == 200 and shown["Cache-Control"] == "no-store"
    secret = secret_in(shown.content.decode())
    reloaded = client.get(response["Location"], follow=True)
    assert reloaded.status_code == 200
    assert secret not in reloaded.content.decode() and 'id="new-secret"' not in (
        reloaded.content.decode())
    assert secret not in str(dict(client.session))
    return secret


def test_given_a_key_just_created_when_its_page_is_reloaded_then_no_other_key_and_no_secret(
        owner, tenant):
    before = APIKey.objects.filter(organization=tenant.org).count()

    response = owner.post(KEYS, {"name": "deploy", "scopes": ["chat"]})

    secret = shown_once_then_gone(owner, response)
    assert APIKey.objects.filter(organization=tenant.org).count() == before + 1
    assert APIKey.objects.get(prefix=visible_prefix(secret)).name == "deploy"


def test_given_a_key_just_rotated_when_its_page_is_reloaded_then_no_other_key_and_no_secret(
        owner, tenant):
    before = APIKey.objects.filter(organization=tenant.org).count()

    response = owner.post(f"/portal/keys/{tenant.key.pk}/rotate", {"grace_seconds": "3600"})

    secret = shown_once_then_gone(owner, response)
    assert APIKey.objects.filter(organization=tenant.org).count() == before + 1
    new = APIKey.objects.get(prefix=visible_prefix(secret))
    assert new.pk != tenant.key.pk and new.name == tenant.key.name


def test_the_page_of_a_new_secret_is_only_for_the_session_that_made_it(
        owner, member_client, tenant):
    response = owner.post(KEYS, {"name": "mine", "scopes": ["chat"]})
    admin = member_client(Membership.Role.ADMIN)

    seen = admin.get(response["Location"], follow=True).content.decode()

    assert 'id="new-secret"' not in seen
    assert secret_in(owner.get(response["Location"]).content.decode()).startswith("sk_")
