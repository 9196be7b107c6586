"""Staff run the platform: the dashboard's numbers, bulk actions, and the audit trail they leave."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.auth import authenticate_secret
from accounts.models import AuditEvent, Organization
from accounts.services import organization_set_active
from billing.models import LedgerEntry, Reservation
from billing.services import credits_reserve
from completions.models import UsageRecord
from completions.rollups import usage_rollup
from novakit.errors import ApiError

pytestmark = pytest.mark.django_db


def _usage(tenant, *, request_id, model, provider, credits, status="ok", latency=100):
    now = timezone.now()
    UsageRecord.objects.create(
        request_id=request_id, organization=tenant.org, api_key=tenant.key, model=model,
        provider=provider, multiplier=Decimal("1"), prompt_tokens=10, completion_tokens=5,
        credits=credits, status=status, latency_ms=latency, started_at=now, created_at=now,
    )


def test_the_dashboard_shows_the_numbers_of_the_seeded_usage(staff_client, tenant, other_tenant):
    _usage(tenant, request_id="a", model="m/one", provider="openrouter", credits=30)
    _usage(tenant, request_id="b", model="m/two", provider="openrouter", credits=5,
           status="error", latency=300)
    _usage(other_tenant, request_id="c", model="m/one", provider="vllm", credits=7)
    usage_rollup()
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="stuck",
                    amount=9, tokens=1, now=timezone.now() - dt.timedelta(hours=1))

    response = staff_client.get(reverse("staff-dashboard"), {"range": "48h"})

    assert response.status_code == 200
    context = response.context
    assert context["totals"]["requests"] == 3
    assert context["totals"]["credits"] == 42
    assert context["totals"]["prompt_tokens"] == 30
    assert context["error_rate"] == pytest.approx(1 / 3)
    assert [(row.label, row.value) for row in context["top_organizations"]] == [
        ("acme", 35), ("globex", 7)]
    assert [(row.label, row.value) for row in context["top_models"]] == [
        ("m/one", 37), ("m/two", 5)]
    providers = {row["provider"]: row for row in context["providers"]}
    assert providers["openrouter"]["requests"] == 2 and providers["openrouter"]["errors"] == 1
    assert providers["openrouter"]["mean_latency_ms"] == 200
    assert [r.request_id for r in context["stale_reservations"]] == ["stuck"]
    html = response.content.decode()
    assert 'id="kpi-credits">42<' in html and "stuck" in html


def test_organizations_near_their_quota_or_balance_threshold_are_listed(staff_client, tenant):
    from billing.services import quota_set

    quota_set(organization=tenant.org, limit=100)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="big",
                    amount=1, tokens=90)
    tenant.account.low_balance_threshold = 10_000_000
    tenant.account.save(update_fields=["low_balance_threshold"])

    rows = staff_client.get(reverse("staff-dashboard")).context["near_limits"]

    reasons = sorted(row["reason"] for row in rows if row["organization"] == "acme")
    assert reasons == ["chat_tokens quota (organization)", "low balance"]


def test_people_who_are_not_staff_get_nothing(client, tenant):
    client.force_login(tenant.user)
    response = client.get(reverse("staff-dashboard"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    anonymous = client.__class__().get(reverse("staff-dashboard"))
    assert anonymous.status_code == 302
    assert client.get(reverse("admin:accounts_organization_changelist")).status_code == 302


def test_staff_grant_credits_to_many_organizations_at_once(staff_client, tenant, other_tenant):
    url = reverse("admin:accounts_organization_changelist")
    picked = [tenant.org.pk, other_tenant.org.pk]

    form = staff_client.post(url, {"action": "grant_credits", "_selected_action": picked})
    done = staff_client.post(url, {"action": "grant_credits", "_selected_action": picked,
                                   "apply": "1", "amount": "250", "reason": "launch promo"})

    assert form.status_code == 200 and b"Grant credits" in form.content
    assert done.status_code == 302
    grants = LedgerEntry.objects.filter(kind="grant", reason="launch promo")
    assert sorted(grants.values_list("account__organization__slug", flat=True)) == [
        "acme", "globex"]
    assert all(entry.actor.username == "staff" for entry in grants)
    assert AuditEvent.objects.filter(action="credits.grant", reason="launch promo").count() == 2


def test_suspending_an_organization_refuses_its_keys_at_once(
    staff_client, tenant, other_tenant, django_capture_on_commit_callbacks
):
    authenticate_secret(tenant.secret, scope="chat")  # warm the key cache

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:accounts_organization_changelist"), {
            "action": "suspend", "_selected_action": [tenant.org.pk], "apply": "1",
            "reason": "unpaid invoice"})

    assert response.status_code == 302
    tenant.org.refresh_from_db()
    assert (tenant.org.is_active, tenant.org.suspended_reason) == (False, "unpaid invoice")
    with pytest.raises(ApiError) as refused:
        authenticate_secret(tenant.secret, scope="chat")
    assert refused.value.status == 403
    assert authenticate_secret(other_tenant.secret, scope="chat").organization_slug == "globex"
    event = AuditEvent.objects.get(action="organization.suspend")
    assert event.actor.username == "staff" and event.reason == "unpaid invoice"


def test_reinstating_an_organization_in_the_admin_records_why_it_is_back_not_why_it_left(
    staff_client, tenant
):
    organization_set_active(organization=tenant.org, active=False, reason="unpaid invoice")
    url = reverse("admin:accounts_organization_change", args=[tenant.org.pk])
    # The change form as the page shows it: the suspension's reason still filled in.
    fields = {"name": "Acme", "slug": "acme", "is_active": "on", "requests_per_minute": "",
              "tokens_per_minute": "", "suspended_reason": "unpaid invoice",
              "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
              "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
              "change_reason": "invoice paid"}

    response = staff_client.post(url, fields)

    assert response.status_code == 302, response.content.decode()[:500]
    tenant.org.refresh_from_db()
    assert (tenant.org.is_active, tenant.org.suspended_reason) == (True, "")
    event = AuditEvent.objects.get(action="organization.activate")
    assert event.reason == "invoice paid"
    assert event.after == {"is_active": True, "suspended_reason": ""}


def test_an_edit_in_the_admin_needs_a_reason_and_is_audited(staff_client, tenant):
    url = reverse("admin:accounts_organization_change", args=[tenant.org.pk])
    fields = {"name": "Acme", "slug": "acme", "is_active": "on", "requests_per_minute": "600",
              "tokens_per_minute": "", "suspended_reason": "", "created_at_0": "2026-01-01",
              "created_at_1": "00:00:00", "memberships-TOTAL_FORMS": "0",
              "memberships-INITIAL_FORMS": "0"}

    refused = staff_client.post(url, fields)
    saved = staff_client.post(url, {**fields, "change_reason": "enterprise plan"})

    assert refused.status_code == 200  # the form comes back: no reason, no change
    assert saved.status_code == 302, saved.content.decode()[:500]
    assert Organization.objects.get(pk=tenant.org.pk).requests_per_minute == 600
    event = AuditEvent.objects.get(action="admin.organization.change")
    assert event.before["requests_per_minute"] is None
    assert event.after["requests_per_minute"] == 600
    assert event.reason == "enterprise plan"


def test_staff_export_organizations_as_csv(staff_client, tenant, other_tenant):
    response = staff_client.post(reverse("admin:accounts_organization_changelist"), {
        "action": "export_csv", "_selected_action": [tenant.org.pk, other_tenant.org.pk]})
    lines = response.content.decode().strip().splitlines()
    assert response["Content-Type"] == "text/csv"
    assert lines[0].startswith("slug,name,active")
    assert sorted(line.split(",")[0] for line in lines[1:]) == ["acme", "globex"]
    assert ",1000000,0," in lines[1]


def test_reservations_are_read_only_in_the_admin(staff_client, tenant):
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="r", amount=1,
                    tokens=1)
    reservation = Reservation.objects.get(request_id="r")
    page = staff_client.get(reverse("admin:billing_reservation_change", args=[reservation.pk]))
    assert page.status_code == 200 and b'name="amount"' not in page.content
