"""A quota on a key names the key's own organization, whichever way it is set: the
service, the model's validation (every form), the admin's add and change pages; and
0005 moves a quota set before this check to its key's organization."""

from __future__ import annotations

import importlib

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.urls import reverse

from accounts.models import AuditEvent
from billing.models import Quota
from billing.selectors import quota_usage
from billing.services import quota_set

pytestmark = pytest.mark.django_db

realign = importlib.import_module(
    "billing.migrations.0005_key_quotas_belong_to_the_keys_organization").realign


def test_the_service_refuses_a_quota_on_another_organizations_key(tenant, other_tenant):
    with pytest.raises(ValidationError) as refused:
        quota_set(organization=tenant.org, api_key_id=other_tenant.key.pk, limit=100)

    assert refused.value.message_dict == {"api_key": ["This key belongs to another organization."]}
    assert not Quota.objects.exists()
    assert not AuditEvent.objects.filter(action="quota.set").exists()
    # Its own key is accepted.
    assert quota_set(organization=tenant.org, api_key_id=tenant.key.pk, limit=100) is not None


def test_the_models_validation_refuses_another_organizations_key(tenant, other_tenant):
    with pytest.raises(ValidationError) as refused:
        Quota(organization=tenant.org, api_key=other_tenant.key, limit=100).full_clean()

    assert list(refused.value.message_dict) == ["api_key"]
    Quota(organization=tenant.org, api_key=tenant.key, limit=100).full_clean()


def _admin_form(organization, key, limit: int = 100) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"organization": organization.pk, "api_key": key.pk, "metric": "chat_tokens",
            "period": "monthly", "limit": limit, "change_reason": "support ticket"}


def test_the_admins_add_page_refuses_another_organizations_key(admin_client, tenant,
                                                               other_tenant):
    url = reverse("admin:billing_quota_add")

    refused = admin_client.post(url, _admin_form(tenant.org, other_tenant.key))

    assert refused.status_code == 200
    assert "This key belongs to another organization." in refused.content.decode()
    assert not Quota.objects.exists()
    accepted = admin_client.post(url, _admin_form(tenant.org, tenant.key))
    assert accepted.status_code == 302
    assert Quota.objects.get().api_key == tenant.key


def test_the_admins_change_page_refuses_moving_a_quota_to_another_organizations_key(
    admin_client, tenant, other_tenant
):
    quota = quota_set(organization=tenant.org, api_key_id=tenant.key.pk, limit=100)
    url = reverse("admin:billing_quota_change", args=[quota.pk])

    refused = admin_client.post(url, _admin_form(tenant.org, other_tenant.key, limit=200))

    assert refused.status_code == 200
    assert "This key belongs to another organization." in refused.content.decode()
    quota.refresh_from_db()
    assert (quota.api_key_id, quota.limit) == (tenant.key.pk, 100)


def test_0005_moves_a_mismatched_quota_to_its_keys_organization(tenant, other_tenant):
    # Written as the admin could before the check: the tenant's page showed the other's key.
    mismatched = Quota.objects.create(organization=tenant.org, api_key=other_tenant.key,
                                      limit=100)
    own = Quota.objects.create(organization=tenant.org, api_key=tenant.key, limit=50)
    assert [row["key_prefix"] for row in quota_usage(organization_id=tenant.org.pk)] == [
        other_tenant.key.prefix, tenant.key.prefix]

    realign(MigrationLoader(connection).project_state(
        ("billing", "0005_key_quotas_belong_to_the_keys_organization")).apps, None)

    mismatched.refresh_from_db()
    own.refresh_from_db()
    assert (mismatched.organization_id, own.organization_id) == (other_tenant.org.pk,
                                                                 tenant.org.pk)
    assert [row["key_prefix"] for row in quota_usage(organization_id=tenant.org.pk)] == [
        tenant.key.prefix]
    assert [row["key_prefix"] for row in quota_usage(organization_id=other_tenant.org.pk)] == [
        other_tenant.key.prefix]
