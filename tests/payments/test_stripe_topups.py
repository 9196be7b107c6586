"""Buying credits through Stripe Checkout (billing/topups.py) and granting them only on Stripe's
signed webhook (billing/stripe_events.py), against a fake Stripe on loopback that signs as
Stripe does: the signature check is the stripe library's own."""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal

import pytest
from django.db.models import Sum

from accounts.models import AuditEvent, Membership
from billing.models import LedgerEntry, Payment, StripeEvent
from tests.completions.helpers import assert_books_balance
from tests.payments.helpers import TOPUP, bought, buy
from tests.support.fake_stripe import sign


def _purchased(tenant) -> int:  # type: ignore[no-untyped-def]
    entries = LedgerEntry.objects.filter(account=tenant.refresh_account(),
                                         kind=LedgerEntry.Kind.PURCHASE)
    return entries.aggregate(total=Sum("amount"))["total"] or 0


def test_a_checkout_is_opened_for_the_amount_at_the_credit_price_and_grants_nothing_yet(
    buyer, tenant, fake_stripe, settings
):
    settings.CREDIT_PRICE_USD = Decimal("0.00002")
    payment = buy(buyer, "12.50")

    assert (payment.credits, payment.amount, payment.status) == (625_000, 1250, "pending")
    [(_, path, headers, params)] = fake_stripe.requests
    assert path == "/v1/checkout/sessions" and headers["Idempotency-Key"] == (
        f"novakit-topup-{payment.pk}")
    assert params["line_items"][0]["price_data"]["unit_amount"] == "1250"
    assert params["metadata"]["novakit_payment"] == str(payment.pk)
    assert params["payment_intent_data"]["metadata"]["novakit_payment"] == str(payment.pk)
    assert params["success_url"].endswith("/portal/billing/topups/return?session_id="
                                          "{CHECKOUT_SESSION_ID}")
    assert _purchased(tenant) == 0
    # The page says it is waiting, and shows the price before paying on the billing page.
    assert "Waiting for Stripe" in buyer.get(f"{TOPUP}{payment.pk}/").content.decode()
    assert "50,000 credits" in buyer.get("/portal/billing/").content.decode()


def test_duplicate_and_out_of_order_webhooks_grant_once(buyer, tenant, fake_stripe):
    payment = buy(buyer)
    completed, succeeded = fake_stripe.pay(payment.checkout_session_id)

    outcomes = [fake_stripe.deliver(event).json()["outcome"]
                for event in (succeeded, completed, succeeded, completed)]

    assert outcomes == ["granted", "already granted", "duplicate", "duplicate"]
    payment.refresh_from_db()
    assert payment.status == "paid" and payment.payment_intent_id == succeeded["data"]["object"][
        "id"]
    assert _purchased(tenant) == payment.credits
    assert payment.entry.amount == payment.credits and payment.entry.kind == "purchase"
    assert payment.payment_intent_id in payment.entry.reason
    assert StripeEvent.objects.count() == 2
    assert AuditEvent.objects.filter(action="credits.purchased").count() == 1
    assert_books_balance(tenant)
    receipt = buyer.get(f"{TOPUP}{payment.pk}/").content.decode()
    assert 'id="topup-arrived"' in receipt and payment.payment_intent_id in receipt


def test_many_deliveries_at_once_of_both_events_grant_once(buyer, tenant, fake_stripe):
    payment = buy(buyer)
    events = fake_stripe.pay(payment.checkout_session_id)
    statuses: list[int] = []
    start = threading.Barrier(12)

    def deliver(event):  # type: ignore[no-untyped-def]
        start.wait()
        statuses.append(fake_stripe.deliver(event).status_code)

    threads = [threading.Thread(target=deliver, args=(events[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 12
    assert _purchased(tenant) == payment.credits
    assert LedgerEntry.objects.filter(kind="purchase").count() == 1
    assert_books_balance(tenant)


@pytest.mark.parametrize("forgery", ["wrong secret", "no signature", "old timestamp",
                                     "body changed"])
def test_a_forged_unsigned_or_replayed_event_is_refused_logged_and_grants_nothing(
    buyer, tenant, fake_stripe, forgery, caplog
):
    payment = buy(buyer)
    completed, _ = fake_stripe.pay(payment.checkout_session_id)
    body = json.dumps(completed).encode()
    signature = {
        "wrong secret": sign(body, "whsec_someone_else"),
        "no signature": "",
        "old timestamp": sign(body, timestamp=int(time.time()) - 600),
        "body changed": sign(json.dumps({**completed, "id": "evt_other"}).encode()),
    }[forgery]

    with caplog.at_level(logging.WARNING, logger="billing.views"):
        response = fake_stripe.deliver(completed, signature=signature)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert "refused a Stripe webhook" in caplog.text
    assert "whsec_" not in caplog.text + response.text
    assert _purchased(tenant) == 0 and not StripeEvent.objects.exists()
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_a_signed_event_for_another_amount_grants_nothing(buyer, tenant, fake_stripe):
    payment = buy(buyer)
    completed, succeeded = fake_stripe.pay(payment.checkout_session_id)
    succeeded["data"]["object"]["amount_received"] = 1

    assert fake_stripe.deliver(succeeded).json()["outcome"] == "refused: amount differs"
    assert _purchased(tenant) == 0
    assert fake_stripe.deliver(completed).json()["outcome"] == "granted"  # the true one still does
    assert _purchased(tenant) == payment.credits


def test_an_unpaid_or_expired_checkout_grants_nothing(buyer, tenant, fake_stripe):
    payment = buy(buyer)
    session = fake_stripe.public(fake_stripe.sessions[payment.checkout_session_id])

    unpaid = fake_stripe.deliver(fake_stripe.event("checkout.session.completed", session))
    expired = fake_stripe.deliver(fake_stripe.event("checkout.session.expired", session))

    assert [unpaid.json()["outcome"], expired.json()["outcome"]] == [
        "ignored: not paid yet", "failed"]
    payment.refresh_from_db()
    assert payment.status == "failed" and _purchased(tenant) == 0
    assert "nothing was charged" in buyer.get(f"{TOPUP}{payment.pk}/").content.decode()


@pytest.mark.parametrize(("amount", "message"), [
    ("4.99", "between 5 and 1000 USD"), ("1000.01", "between 5 and 1000 USD"),
    ("20.005", "at most two decimals"), ("twenty", "such as 20 or 12.50"), ("NaN", "decimals"),
])
def test_an_amount_out_of_bounds_is_refused_before_stripe_is_asked(
    buyer, fake_stripe, amount, message, settings
):
    settings.TOPUP_MIN_USD, settings.TOPUP_MAX_USD = Decimal("5"), Decimal("1000")

    page = buyer.post(TOPUP, {"amount": amount}, follow=True).content.decode()

    assert message in page
    assert not Payment.objects.exists() and not fake_stripe.requests


def test_when_stripe_refuses_the_checkout_the_payment_fails_and_nothing_is_charged(
    buyer, fake_stripe, settings
):
    settings.STRIPE_SECRET_KEY = "sk_test_revoked"

    page = buyer.post(TOPUP, {"amount": "20"}, follow=True).content.decode()

    assert "Stripe could not start the payment" in page and "sk_test_revoked" not in page
    assert Payment.objects.get().status == "failed"


def test_only_owners_and_admins_buy_and_members_see_no_form(member_client, fake_stripe):
    for role in (Membership.Role.DEVELOPER, Membership.Role.VIEWER):
        client = member_client(role)
        assert 'id="topup-pay"' not in client.get("/portal/billing/").content.decode()
        assert client.post(TOPUP, {"amount": "20"}).status_code == 403
    assert not Payment.objects.exists()


def test_without_stripe_settings_the_portal_offers_no_top_up(member_client, settings, db):
    settings.STRIPE_SECRET_KEY = ""
    owner = member_client(Membership.Role.OWNER)
    assert 'id="topup-pay"' not in owner.get("/portal/billing/").content.decode()
    assert "not set up" in owner.post(TOPUP, {"amount": "20"}, follow=True).content.decode()


def test_coming_back_with_another_organizations_checkout_shows_nothing_of_it(
    buyer, member_client, other_tenant, fake_stripe
):
    theirs = buy(member_client(Membership.Role.OWNER, of=other_tenant))

    response = buyer.get(f"{TOPUP}return", {"session_id": theirs.checkout_session_id},
                         follow=True)

    assert response.redirect_chain[-1][0] == "/portal/billing/"
    assert "does not belong to this organization" in response.content.decode()
    assert buyer.get(f"{TOPUP}{theirs.pk}/").status_code == 404


def test_the_receipt_shows_the_seller_and_the_tax_its_price_includes(
    buyer, fake_stripe, settings
):
    settings.RECEIPT_SELLER = "NovaKit Ltd\n1 Example Street"
    settings.RECEIPT_TAX_ID, settings.RECEIPT_TAX_NAME = "GB123456789", "VAT"
    settings.RECEIPT_TAX_PERCENT = Decimal("20")
    payment = bought(buyer, fake_stripe, "12.00")

    receipt = buyer.get(f"{TOPUP}{payment.pk}/").content.decode()

    assert 'data-receipt="seller">NovaKit Ltd<br>1 Example Street<' in receipt
    assert 'data-receipt="tax_id">GB123456789<' in receipt
    assert 'data-receipt="net">10.00 USD<' in receipt
    assert "VAT (20 %, included)" in receipt and 'data-receipt="tax">2.00 USD<' in receipt
    assert 'data-receipt="amount">12.00 USD<' in receipt
