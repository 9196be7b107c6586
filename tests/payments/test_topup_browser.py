"""Buying credits in a real browser: the portal, the fake Stripe's payment page, and back."""

from __future__ import annotations

import re

from django.db.models import Sum
from playwright.sync_api import expect

from billing.models import LedgerEntry, Payment
from tests.portal.conftest import off_loop
from tests.portal.test_browser import open_page, screenshot, sign_up


def test_a_new_owner_buys_credits_end_to_end_and_sees_them_arrive(
    browser, live_gateway, fake_stripe, settings
):
    page, _ = open_page(browser, live_gateway)
    sign_up(page, email="buyer@example.test", organization="Buyers")

    page.goto("/portal/billing/")
    expect(page.locator("#topup")).to_contain_text("One US dollar buys 50,000 credits")
    page.locator("#id_amount").fill("20")
    page.get_by_role("button", name="Continue to payment").click()

    # Stripe's page (the fake's): the amount the portal asked for.
    expect(page.locator("#amount")).to_have_text("20.00 USD")
    page.get_by_role("button", name="Pay 20.00 USD").click()

    expect(page).to_have_url(re.compile(r"/portal/billing/topups/\d+/$"))
    expect(page.get_by_test_id("topup-status")).to_have_text("Paid")
    expect(page.locator("#topup-arrived")).to_contain_text("1,000,000 credits were added")
    expect(page.locator('[data-receipt="amount"]')).to_have_text("20.00 USD")
    screenshot(page, "desktop-topup-receipt")
    assert fake_stripe.deliveries == [200, 200]

    payment = off_loop(lambda: Payment.objects.select_related("entry").get())
    assert (payment.status, payment.credits, payment.entry.kind) == ("paid", 1_000_000,
                                                                      "purchase")
    purchased = off_loop(lambda: LedgerEntry.objects.filter(kind="purchase").aggregate(
        total=Sum("amount"))["total"])
    assert purchased == 1_000_000
    # The billing page lists it beside the ledger, with its receipt.
    page.goto("/portal/billing/")
    expect(page.locator("#purchases")).to_contain_text("1,000,000")
    page.locator("#purchases").get_by_role("link", name="Receipt").click()
    expect(page.locator("#topup-arrived")).to_be_visible()
