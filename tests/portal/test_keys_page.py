"""The API keys page: the list (revoked keys on request), creating a key (secret shown once),
editing, revoking, rotating."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from accounts import auth, services
from accounts.keys import visible_prefix
from accounts.models import APIKey, AuditEvent, Membership
from billing.key_caps import api_key_update_with_cap
from billing.models import Quota
from billing.services import key_credit_cap

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


# --- editing a key ------------------------------------------------------------------------------


def edit_url(key: APIKey) -> str:
    return f"/portal/keys/{key.pk}/edit"


def in_days(days: int) -> dt.date:
    return (timezone.now() + dt.timedelta(days=days)).astimezone(dt.UTC).date()


def key_row(html: str, key: APIKey) -> str:
    row = re.search(rf'<tr[^>]*data-key-prefix="{key.prefix}".*?</tr>', html, re.S)
    assert row, f"no row for {key.prefix}"
    return row.group(0)


def settings_of(key: APIKey) -> tuple:  # type: ignore[type-arg]
    key = APIKey.objects.prefetch_related("quotas").get(pk=key.pk)
    return (key.name, key.requests_per_minute, key.tokens_per_minute, key.max_concurrent_requests,
            key_credit_cap(key), key.allowed_models, key.expires_at, key.revoked_at)


def test_editing_a_key_saves_each_field_the_list_and_the_api_show_it_and_it_is_audited(
        owner, tenant):
    expiry = in_days(30)

    response = owner.post(edit_url(tenant.key), {
        "name": "renamed", "requests_per_minute": "40", "tokens_per_minute": "50000",
        "max_concurrent_requests": "3", "credit_cap": "700",
        "allowed_models": ["openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"],
        "expires_on": expiry.isoformat(),
    })

    assert response.status_code == 302 and response["Location"] == KEYS
    page = owner.get(KEYS).content.decode()
    assert f"Saved {tenant.key.prefix}…: name, " in page
    row = key_row(page, tenant.key)
    for text in ("renamed", "40 req/min", "50,000 tok/min", "3 at once", "700 credits/month",
                 "2 models", f"expires {expiry.isoformat()}"):
        assert text in row, text
    listed = next(k for k in owner.get("/api/v1/keys").json()["data"] if k["id"] == tenant.key.pk)
    assert {name: listed[name] for name in (
        "name", "requests_per_minute", "tokens_per_minute", "max_concurrent_requests",
        "credit_cap", "allowed_models")} == {
        "name": "renamed", "requests_per_minute": 40, "tokens_per_minute": 50000,
        "max_concurrent_requests": 3, "credit_cap": 700,
        "allowed_models": ["anthropic/claude-3.5-sonnet", "openai/gpt-4o-mini"]}
    assert dt.datetime.fromisoformat(listed["expires_at"]) == dt.datetime.combine(
        expiry, dt.time.min, tzinfo=dt.UTC)
    update = AuditEvent.objects.get(action="api_key.update", target=tenant.key.prefix)
    assert update.actor == tenant.user
    assert (update.before["name"], update.after["name"]) == ("test", "renamed")
    assert AuditEvent.objects.filter(action="quota.set", actor=tenant.user).exists()
    # The same secret, the new settings.
    auth.cache_clear()
    assert auth.authenticate_secret(tenant.secret, scope="chat").key_id == tenant.key.pk


def test_the_edit_form_is_prefilled_and_emptying_it_clears_limits_cap_models_and_expiry(
        owner, tenant):
    api_key_update_with_cap(key=tenant.key, changes={
        "requests_per_minute": 12, "tokens_per_minute": 3400, "max_concurrent_requests": 2,
        "credit_cap": 55, "allowed_models": ["openai/gpt-4o-mini"],
        "expires_at": dt.datetime.combine(in_days(9), dt.time.min, tzinfo=dt.UTC)})

    form = owner.get(edit_url(tenant.key)).context["form"]

    assert {name: form[name].value() for name in form.fields} == {
        "name": "test", "requests_per_minute": 12, "tokens_per_minute": 3400,
        "max_concurrent_requests": 2, "credit_cap": 55, "allowed_models": ["openai/gpt-4o-mini"],
        "expires_on": in_days(9)}
    response = owner.post(edit_url(tenant.key), {"name": "test"})
    assert response.status_code == 302
    assert settings_of(tenant.key) == ("test", None, None, None, None, [], None, None)
    assert "organization's" in key_row(owner.get(KEYS).content.decode(), tenant.key)


def test_given_an_edit_saved_when_the_same_form_is_sent_again_then_nothing_more_changes(
        owner, tenant):
    data = {"name": "once", "requests_per_minute": "7", "credit_cap": "90"}
    first = owner.post(edit_url(tenant.key), data)
    assert first.status_code == 302
    assert owner.get(first["Location"]).status_code == 200  # the reload repeats this GET
    saved = settings_of(tenant.key)
    audited = AuditEvent.objects.filter(target=tenant.key.prefix).count()

    again = owner.post(edit_url(tenant.key), data, follow=True)

    assert f"Nothing changed on {tenant.key.prefix}" in again.content.decode()
    assert settings_of(tenant.key) == saved
    assert AuditEvent.objects.filter(target=tenant.key.prefix).count() == audited
    assert Quota.objects.filter(api_key=tenant.key).count() == 1


def test_an_expiry_set_at_another_hour_stays_as_it_is_when_other_fields_are_edited(owner, tenant):
    # Set through the API: later today, not at midnight; the form shows only its day.
    later_today = (timezone.now() + dt.timedelta(minutes=5)).replace(second=0, microsecond=0)
    api_key_update_with_cap(key=tenant.key, changes={"expires_at": later_today})

    response = owner.post(edit_url(tenant.key), {
        "name": "renamed", "expires_on": later_today.astimezone(dt.UTC).date().isoformat()})

    assert response.status_code == 302
    tenant.key.refresh_from_db()
    assert (tenant.key.name, tenant.key.expires_at) == ("renamed", later_today)


def test_a_model_gone_from_the_catalog_stays_allowed_when_the_key_is_saved(owner, tenant):
    api_key_update_with_cap(key=tenant.key,
                            changes={"allowed_models": ["gone/model", "openai/gpt-4o-mini"]})

    page = owner.get(edit_url(tenant.key)).content.decode()
    response = owner.post(edit_url(tenant.key), {
        "name": "test", "allowed_models": ["gone/model", "openai/gpt-4o-mini"]})

    assert "gone/model (not in the catalog)" in page
    assert response.status_code == 302
    tenant.key.refresh_from_db()
    assert tenant.key.allowed_models == ["gone/model", "openai/gpt-4o-mini"]


@pytest.mark.parametrize("fields, field", [
    ({"requests_per_minute": "-5"}, "requests_per_minute"),
    ({"tokens_per_minute": "0"}, "tokens_per_minute"),
    ({"max_concurrent_requests": "-1"}, "max_concurrent_requests"),
    ({"credit_cap": "-1"}, "credit_cap"),
    ({"requests_per_minute": "many"}, "requests_per_minute"),
    ({"allowed_models": ["no/such-model"]}, "allowed_models"),
    ({"expires_on": "2020-01-01"}, "expires_on"),
    ({"name": ""}, "name"),
])
def test_an_invalid_edit_shows_the_field_error_and_changes_nothing(owner, tenant, fields, field):
    before = settings_of(tenant.key)

    response = owner.post(edit_url(tenant.key), {"name": "changed", **fields})

    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert 'class="errorlist"' in response.content.decode()
    assert settings_of(tenant.key) == before
    assert not AuditEvent.objects.filter(target=tenant.key.prefix).exclude(
        action="api_key.create").exists()


def test_an_expired_key_can_be_given_a_later_expiry(member_client, tenant):
    admin = member_client(Membership.Role.ADMIN)
    APIKey.objects.filter(pk=tenant.key.pk).update(
        expires_at=timezone.now() - dt.timedelta(days=1))
    assert ">Edit<" in key_row(admin.get(KEYS).content.decode(), tenant.key)

    response = admin.post(edit_url(tenant.key), {"name": "test",
                                                 "expires_on": in_days(5).isoformat()})

    assert response.status_code == 302
    auth.cache_clear()
    assert auth.authenticate_secret(tenant.secret, scope="chat").key_id == tenant.key.pk


def test_a_viewer_sees_no_edit_action_and_is_refused_the_edit_page_and_its_post(viewer, tenant):
    before = settings_of(tenant.key)

    assert ">Edit<" not in viewer.get(KEYS).content.decode()
    assert viewer.get(edit_url(tenant.key)).status_code == 403
    assert viewer.post(edit_url(tenant.key), {"name": "viewer's"}).status_code == 403
    assert settings_of(tenant.key) == before


def test_another_organizations_key_cannot_be_edited(owner, other_tenant):
    before = settings_of(other_tenant.key)

    assert owner.get(edit_url(other_tenant.key)).status_code == 404
    assert owner.post(edit_url(other_tenant.key), {"name": "mine now"}).status_code == 404
    assert settings_of(other_tenant.key) == before


@pytest.mark.parametrize("grace", [None, dt.timedelta(hours=1)], ids=["revoked", "rotating"])
def test_a_revoked_or_rotated_key_cannot_be_edited(owner, tenant, grace):
    services.api_key_revoke(key=tenant.key, reason="test",
                            at=timezone.now() + grace if grace else None)
    before = settings_of(tenant.key)

    page = owner.get(edit_url(tenant.key), follow=True)
    posted = owner.post(edit_url(tenant.key), {"name": "revived", "credit_cap": "5"}, follow=True)

    assert page.redirect_chain == [(KEYS, 302)] and posted.redirect_chain == [(KEYS, 302)]
    assert "cannot be edited" in posted.content.decode()
    assert settings_of(tenant.key) == before
    listing = owner.get(f"{KEYS}?revoked=1").content.decode()
    assert ">Edit<" not in key_row(listing, tenant.key)


# --- revoked keys: listed on request -------------------------------------------------------------


def test_revoked_keys_are_hidden_until_asked_for_and_keys_in_their_grace_period_are_not(
        owner, tenant, other_tenant):
    revoked, _ = services.api_key_create(organization=tenant.org, name="old")
    services.api_key_revoke(key=revoked, reason="test")
    rotating, _ = services.api_key_create(organization=tenant.org, name="rotating")
    services.api_key_revoke(key=rotating, reason="test",
                            at=timezone.now() + dt.timedelta(hours=1))
    services.api_key_revoke(key=other_tenant.key, reason="test")

    default = owner.get(KEYS).content.decode()
    asked = owner.get(f"{KEYS}?revoked=1").content.decode()

    assert tenant.key.prefix in default and rotating.prefix in default
    assert revoked.prefix not in default
    assert f'href="{KEYS}?revoked=1" data-testid="revoked-toggle">Show revoked (1)<' in default
    assert revoked.prefix in asked and tenant.key.prefix in asked and rotating.prefix in asked
    assert "revoked" in key_row(asked, revoked) and "Hide revoked" in asked
    assert other_tenant.key.prefix not in asked


def test_with_no_revoked_key_there_is_no_toggle_and_with_only_revoked_keys_no_empty_table(
        owner, tenant):
    assert "revoked-toggle" not in owner.get(KEYS).content.decode()
    services.api_key_revoke(key=tenant.key, reason="test")

    page = owner.get(KEYS).content.decode()

    assert tenant.key.prefix not in page and "No active keys." in page
    assert "Show revoked (1)" in page
