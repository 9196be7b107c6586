"""In headless Chromium: a staff member grants credits and suspends an organization in the admin.

Screenshots land in tests/artifacts/screenshots/ (staff-*.png, admin-*.png; each page at
390 px as `<page>-390.png` and at desktop as `desktop-<page>.png`).
"""

from __future__ import annotations

import openai
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import AuditEvent, Organization
from billing.models import LedgerEntry
from tests.portal.conftest import browser, off_loop  # noqa: F401 (the fixture)
from tests.portal.test_browser import (
    PHONE,
    assert_on_screen,
    assert_only_local,
    assert_reload_sends_nothing_again,
    check_every_width,
    navigations_of,
    open_page,
    screenshot,
)

PASSWORD = "staff-password-for-tests-1"


def _select_and_run(page, organization_pk: int, action: str) -> None:
    page.goto("/admin/accounts/organization/")
    page.locator(f'input[name="_selected_action"][value="{organization_pk}"]').check()
    page.locator('select[name="action"]').select_option(action)
    page.locator('button[name="index"]').click()


def test_a_staff_member_grants_credits_and_suspends_an_organization(
    tenant, browser, live_gateway  # noqa: F811
):
    off_loop(get_user_model().objects.create_superuser, "staff", "staff@example.test", PASSWORD)
    page, _ = open_page(browser, live_gateway)
    page.goto("/admin/login/?next=/admin/accounts/organization/")
    page.locator("#id_username").fill("staff")
    page.locator("#id_password").fill(PASSWORD)
    page.locator('input[type="submit"]').click()
    expect(page).to_have_url(live_gateway.url + "/admin/accounts/organization/")

    _select_and_run(page, tenant.org.pk, "grant_credits")
    page.locator("#id_amount").fill("5000")
    page.locator("#id_reason").fill("goodwill after the outage")
    screenshot(page, "staff-grant-form")
    page.locator('input[name="apply"]').click()
    expect(page.locator(".messagelist")).to_contain_text("Granted 5000 credits")
    screenshot(page, "staff-granted")

    _select_and_run(page, tenant.org.pk, "suspend")
    page.locator("#id_reason").fill("chargeback under review")
    page.locator('input[name="apply"]').click()
    expect(page.locator(".messagelist")).to_contain_text("Suspended 1 organization")
    screenshot(page, "staff-suspended")

    page.goto("/staff/")
    expect(page.get_by_role("heading", name="Platform dashboard")).to_be_visible()
    screenshot(page, "staff-dashboard")

    grant = off_loop(lambda: LedgerEntry.objects.select_related("actor").get(
        kind="grant", reason="goodwill after the outage"))
    assert (grant.amount, grant.actor.username) == (5000, "staff")
    organization = off_loop(Organization.objects.get, pk=tenant.org.pk)
    assert (organization.is_active, organization.suspended_reason) == (
        False, "chargeback under review")
    assert off_loop(lambda: AuditEvent.objects.filter(action="organization.suspend",
                                                      actor__username="staff").count()) == 1
    client = openai.OpenAI(api_key=tenant.secret, base_url=live_gateway.api_base, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()


def test_a_staff_member_works_on_one_organizations_page_at_desktop_and_390_pixels(
    tenant, other_tenant, browser, live_gateway  # noqa: F811
):
    off_loop(get_user_model().objects.create_superuser, "staff", "staff@example.test", PASSWORD)
    page, requested = open_page(browser, live_gateway)
    page.goto(f"/admin/login/?next=/admin/accounts/organization/{tenant.org.pk}/change/")
    page.locator("#id_username").fill("staff")
    page.locator("#id_password").fill(PASSWORD)
    page.locator('input[type="submit"]').click()
    page.get_by_role("link", name="View on site").click()
    expect(page.get_by_role("heading", name="Acme (acme)")).to_be_visible()

    page.locator("#id_credits-amount").fill("2500")
    page.locator("#id_credits-reason").fill("support ticket 42")
    page.locator("#action-credits input[type=submit]").click()
    expect(page.locator(".messagelist")).to_contain_text("Grant +2500: balance 1002500")
    expect(page.locator("#kpi-balance")).to_have_text("1002500")
    # After post/redirect/get, reloading sends nothing again: the grant is made once
    navigations = navigations_of(page)
    assert_reload_sends_nothing_again(page, navigations, "the staff credit grant")
    page.locator("#id_quota-limit").fill("50000")
    page.locator("#id_quota-reason").fill("pilot")
    page.locator("#action-quota input[type=submit]").click()
    expect(page.locator("#quotas")).to_contain_text("50000")
    assert_reload_sends_nothing_again(page, navigations, "the staff quota form")
    assert_only_local(requested, live_gateway)

    # Each staff page, and the admin's, fits 390 px and 375 px; screenshots at 390 and desktop
    for name, path in {"staff-organization": f"/staff/organizations/{tenant.org.pk}/",
                       "staff-dashboard": "/staff/",
                       "admin-index": "/admin/",
                       "admin-organizations": "/admin/accounts/organization/"}.items():
        check_every_width(page, name, path)
    page.set_viewport_size(PHONE)
    page.goto(f"/staff/organizations/{tenant.org.pk}/")
    expect(page.locator("#action-suspend")).to_be_visible()
    assert_on_screen(page, page.locator("main, #content").first,
                     ("Record", "Set quota", "Suspend"), PHONE["width"])

    assert off_loop(lambda: LedgerEntry.objects.filter(reason="support ticket 42").count()) == 1
    assert off_loop(tenant.refresh_account).balance == 1_002_500
    assert off_loop(lambda: AuditEvent.objects.filter(action="quota.set", reason="pilot",
                                                      actor__username="staff").count()) == 1
