"""The staff page of one organization: its books, keys, members, requests, webhooks and audit
trail on one page, and the actions staff take there (credits, quotas, suspension), each
through the admin's services, audited, and answered with a redirect."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from accounts.models import AuditEvent, Membership
from billing.models import LedgerEntry, Quota
from billing.services import credits_reserve, quota_set
from completions.rollups import usage_rollup
from tests.management_api.helpers import usage_record

pytestmark = pytest.mark.django_db


def url_for(tenant) -> str:  # type: ignore[no-untyped-def]
    return reverse("staff-organization", args=[tenant.org.pk])


def section(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}".*?</table>', html, re.S)
    assert found, f"no #{element_id}"
    return found.group(0)


def test_the_page_shows_the_organization_and_nothing_of_another(staff_client, tenant,
                                                                 other_tenant):
    quota_set(organization=tenant.org, api_key_id=tenant.key.pk, limit=5_000)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                    request_id="held-1", amount=700, tokens=100)
    usage_record(tenant, credits=10)
    usage_record(tenant, credits=0, status="error", model="openai/gpt-4o")
    usage_record(other_tenant, credits=999, model="meta-llama/llama-3.1-405b")
    Membership.objects.create(organization=tenant.org, user=get_user_model().objects.create_user(
        "dev@acme.test", "dev@acme.test", "pw"), role="developer")

    response = staff_client.get(url_for(tenant))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="kpi-balance">1000000<' in html and 'id="kpi-reserved">700<' in html
    assert f"key {tenant.key.prefix}…" in section(html, "quotas")
    assert "held-1" in section(html, "reservations")
    assert tenant.key.prefix in section(html, "keys")
    assert "dev@acme.test" in section(html, "members")
    assert len(re.findall(r"chatcmpl-test-", section(html, "recent-requests"))) == 2
    failed = section(html, "failed-requests")
    assert "openai/gpt-4o" in failed and len(re.findall(r"chatcmpl-test-", failed)) == 1
    assert other_tenant.key.prefix not in html and "llama-3.1-405b" not in html


def test_granting_credits_records_an_entry_once_even_when_the_form_is_sent_twice(
    staff_client, tenant
):
    form = staff_client.get(url_for(tenant)).content.decode()
    key = re.search(r'name="credits-idempotency_key" value="([^"]+)"', form).group(1)
    post = {"action": "credits", "credits-kind": "grant", "credits-amount": "2500",
            "credits-reason": "support ticket 42", "credits-idempotency_key": key}

    first = staff_client.post(url_for(tenant), post)
    again = staff_client.post(url_for(tenant), post)

    assert first.status_code == again.status_code == 302
    assert first["Location"] == url_for(tenant)
    entries = LedgerEntry.objects.filter(account=tenant.account, reason="support ticket 42")
    assert [(entry.kind, entry.amount) for entry in entries] == [("grant", 2500)]
    assert tenant.refresh_account().balance == 1_002_500
    event = AuditEvent.objects.get(action="credits.grant", reason="support ticket 42")
    assert (event.actor.username, event.reason) == ("staff", "support ticket 42")
    page = staff_client.get(url_for(tenant)).content.decode()
    assert "support ticket 42" in section(page, "ledger") and "Grant +2500: balance 1002500" in page


def test_an_adjustment_below_what_is_available_is_refused_on_the_form(staff_client, tenant):
    response = staff_client.post(url_for(tenant), {
        "action": "credits", "credits-kind": "adjustment", "credits-amount": "-2000000",
        "credits-reason": "cleanup"})

    assert response.status_code == 400
    assert tenant.refresh_account().balance == 1_000_000
    assert not LedgerEntry.objects.filter(reason="cleanup").exists()


def test_setting_and_removing_a_quota_on_the_page(staff_client, tenant):
    post = {"action": "quota", "quota-api_key": tenant.key.pk, "quota-metric": "credits",
            "quota-period": "daily", "quota-limit": "40000", "quota-reason": "pilot budget"}

    set_response = staff_client.post(url_for(tenant), post)

    assert set_response.status_code == 302
    quota = Quota.objects.get(organization=tenant.org)
    assert (quota.api_key_id, quota.metric, quota.period, quota.limit) == (
        tenant.key.pk, "credits", "daily", 40_000)
    assert AuditEvent.objects.get(action="quota.set").reason == "pilot budget"

    staff_client.post(url_for(tenant), {**post, "quota-limit": ""})
    assert not Quota.objects.filter(organization=tenant.org).exists()


def test_a_quota_cannot_name_another_organizations_key(staff_client, tenant, other_tenant):
    response = staff_client.post(url_for(tenant), {
        "action": "quota", "quota-api_key": other_tenant.key.pk, "quota-metric": "chat_tokens",
        "quota-period": "monthly", "quota-limit": "10", "quota-reason": "typo"})

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not Quota.objects.exists()


def test_suspending_and_reinstating_on_the_page_each_leave_their_own_reason(staff_client,
                                                                          tenant):
    suspended = staff_client.post(url_for(tenant), {"action": "suspend",
                                                    "suspend-reason": "chargeback"})
    assert suspended.status_code == 302
    page = staff_client.get(url_for(tenant)).content.decode()
    assert "Suspended</strong>: chargeback" in page and 'id="action-reinstate"' in page
    assert staff_client.post(url_for(tenant), {"action": "suspend", "suspend-reason": "again"}
                             ).status_code == 400  # already suspended: nothing recorded

    staff_client.post(url_for(tenant), {"action": "reinstate", "reinstate-reason": "resolved"})

    tenant.org.refresh_from_db()
    assert (tenant.org.is_active, tenant.org.suspended_reason) == (True, "")
    reasons = list(AuditEvent.objects.filter(organization=tenant.org, action__in=[
        "organization.suspend", "organization.activate"]).order_by("pk").values_list(
        "action", "reason"))
    assert reasons == [("organization.suspend", "chargeback"),
                       ("organization.activate", "resolved")]
    assert "organization.activate" in section(staff_client.get(url_for(tenant)).content.decode(),
                                              "audit")


def test_an_action_without_a_reason_changes_nothing(staff_client, tenant):
    response = staff_client.post(url_for(tenant), {"action": "suspend", "suspend-reason": ""})

    assert response.status_code == 400
    tenant.org.refresh_from_db()
    assert tenant.org.is_active
    assert not AuditEvent.objects.filter(action="organization.suspend").exists()


def test_staff_without_the_permission_cannot_act_and_non_staff_cannot_see(client, tenant):
    viewer = get_user_model().objects.create_user("support", "s@example.test", "pw",
                                                  is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_organization"))
    client.force_login(viewer)

    assert client.get(url_for(tenant)).status_code == 200
    refused = client.post(url_for(tenant), {"action": "credits", "credits-kind": "grant",
                                            "credits-amount": "10", "credits-reason": "x"})
    assert refused.status_code == 403
    assert tenant.refresh_account().balance == 1_000_000

    client.force_login(tenant.user)
    response = client.get(url_for(tenant))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_admin_is_novakits_and_it_and_the_dashboard_link_to_the_page(staff_client, tenant):
    index = staff_client.get(reverse("admin:index")).content.decode()
    assert "<title>Platform administration | NovaKit admin</title>" in index
    assert f'href="{reverse("staff-dashboard")}" id="staff-dashboard-link"' in index
    change = staff_client.get(reverse("admin:accounts_organization_change", args=[tenant.org.pk]))
    assert url_for(tenant) in change.content.decode()  # its "View on site"
    usage_record(tenant, credits=10)
    usage_rollup()
    quota_set(organization=tenant.org, limit=10)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="near",
                    amount=1, tokens=9)

    dashboard = staff_client.get(reverse("staff-dashboard")).content.decode()

    # From the top organizations and from the ones near a limit.
    assert dashboard.count(f'href="{url_for(tenant)}"') == 2
