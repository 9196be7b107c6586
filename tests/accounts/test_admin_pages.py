"""The Django admin lists organizations, members and keys, and never shows a key's hash."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import APIKey, AuditEvent, Membership, Organization


@pytest.fixture
def pages(tenant, other_tenant) -> list[str]:  # type: ignore[no-untyped-def]
    membership = Membership.objects.get(organization=tenant.org)
    urls = [reverse(f"admin:accounts_{model}_changelist")
            for model in ("organization", "membership", "apikey", "auditevent")]
    urls += [
        reverse("admin:accounts_organization_change", args=[tenant.org.pk]),
        reverse("admin:accounts_membership_change", args=[membership.pk]),
        reverse("admin:accounts_apikey_change", args=[tenant.key.pk]),
        reverse("admin:accounts_apikey_history", args=[tenant.key.pk]),
        reverse("admin:accounts_apikey_changelist") + f"?q={tenant.key.prefix}",
    ]
    return urls


def test_given_a_superuser_then_the_admin_pages_list_orgs_members_and_keys_without_the_hash(
    admin_client, tenant, other_tenant, pages
):
    hashes = list(APIKey.objects.values_list("key_hash", flat=True))
    assert len(hashes) == 2

    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for key_hash in hashes:
            assert key_hash not in html, f"{url} shows a key hash"
            assert key_hash[:16] not in html, f"{url} shows part of a key hash"
        assert tenant.secret not in html

    keys_page = admin_client.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    assert tenant.key.prefix in keys_page and other_tenant.key.prefix in keys_page
    orgs_page = admin_client.get(reverse("admin:accounts_organization_changelist"))
    assert "acme" in orgs_page.content.decode() and "globex" in orgs_page.content.decode()
    members_page = admin_client.get(reverse("admin:accounts_membership_changelist"))
    assert "acme-owner" in members_page.content.decode()


def test_given_the_key_change_form_when_saved_then_the_hash_is_unchanged(admin_client, tenant):
    before = APIKey.objects.get(pk=tenant.key.pk).key_hash
    url = reverse("admin:accounts_apikey_change", args=[tenant.key.pk])

    response = admin_client.post(url, {
        "name": "renamed", "scopes": '["chat", "models"]', "allowed_models": "[]",
        "requests_per_minute": "", "tokens_per_minute": "", "max_concurrent_requests": "",
        "expires_at_0": "", "expires_at_1": "", "key_hash": "0" * 64,
        "change_reason": "clearer name",
    })

    assert response.status_code == 302, response.content.decode()[:2000]
    key = APIKey.objects.get(pk=tenant.key.pk)
    assert key.name == "renamed" and key.key_hash == before
    audit = AuditEvent.objects.get(action="admin.apikey.change")
    assert audit.reason == "clearer name" and audit.actor.username == "admin"
    assert audit.before["name"] == "test" and audit.after["name"] == "renamed"
    assert "allowed_models" not in audit.after  # unchanged, however the form spelled it


def test_given_the_revoke_action_then_selected_keys_are_revoked_with_an_audit_row(
    admin_client, tenant, other_tenant
):
    response = admin_client.post(reverse("admin:accounts_apikey_changelist"), {
        "action": "revoke_selected", "_selected_action": [tenant.key.pk],
    })

    assert response.status_code == 302
    assert APIKey.objects.get(pk=tenant.key.pk).revoked_at is not None
    assert APIKey.objects.get(pk=other_tenant.key.pk).revoked_at is None
    event = AuditEvent.objects.get(action="api_key.revoke")
    assert event.actor.username == "admin" and event.target == tenant.key.prefix


def test_given_a_non_staff_user_then_the_admin_redirects_to_login(client, tenant):
    client.force_login(tenant.user)

    response = client.get(reverse("admin:accounts_apikey_changelist"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert Organization.objects.count() == 1
