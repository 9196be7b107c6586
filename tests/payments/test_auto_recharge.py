"""Auto-recharge (billing/recharge.py): a card saved at a top-up is charged once per crossing of
the threshold, within the monthly cap; a declined charge turns it off and tells the owners."""

from __future__ import annotations

import threading
from decimal import Decimal

import openai
import pytest
from django.core import mail
from django.db import connections

from accounts.models import AuditEvent, WebhookDelivery
from accounts.webhooks import webhook_endpoint_create
from billing.ledger import credits_adjust
from billing.models import AutoRecharge, LedgerEntry, Payment
from billing.recharge import _charge, _claim, auto_recharge_scan
from billing.tasks import auto_recharge_task
from tests.completions.helpers import assert_books_balance
from tests.payments.helpers import bought, buy

BILLING = "/portal/billing/"


@pytest.fixture(autouse=True)
def _a_cent_a_credit(settings):  # type: ignore[no-untyped-def]
    settings.CREDIT_PRICE_USD = Decimal("0.01")  # 5 USD buys 500 credits


def _saved_card(buyer, fake_stripe) -> AutoRecharge:  # type: ignore[no-untyped-def]
    """A top-up with "save the card" ticked, then auto-recharge set in the portal."""
    saving = buy(buyer, "5", save_card=True)
    assert fake_stripe.requests[-1][3]["payment_intent_data"]["setup_future_usage"] == (
        "off_session")
    for event in fake_stripe.pay(str(saving.checkout_session_id)):
        fake_stripe.deliver(event)
    setup = AutoRecharge.objects.get()
    assert setup.payment_method_id.startswith("pm_test_") and not setup.enabled
    page = buyer.post("/portal/billing/auto-recharge/", {
        "enabled": "on", "threshold": "300", "amount": "10", "monthly_cap": "25"}, follow=True)
    assert "Auto-recharge is on." in page.content.decode()
    setup.refresh_from_db()
    return setup


def _spend_down_to(tenant, left: int) -> None:  # type: ignore[no-untyped-def]
    account = tenant.refresh_account()
    credits_adjust(account=account, amount=-(account.balance - left), kind="expiry",
                   reason="spent, as far as this test is concerned")


def test_a_crossing_charges_the_saved_card_once_and_the_webhook_grants_it(
    buyer, tenant, fake_stripe
):
    setup = _saved_card(buyer, fake_stripe)
    assert (setup.threshold, setup.amount, setup.monthly_cap) == (300, 1000, 2500)
    _spend_down_to(tenant, 299)

    assert auto_recharge_task.apply().get() == 1
    assert auto_recharge_scan() == 0  # the same crossing: nothing more

    [charge] = Payment.objects.filter(automatic=True)
    assert (charge.status, charge.credits, charge.amount) == ("paid", 1000, 1000)
    assert fake_stripe.intents[charge.payment_intent_id]["payment_method"] == (
        setup.payment_method_id)
    assert tenant.refresh_account().balance == 1299
    # Back above the threshold: re-armed, so the next crossing charges again, up to the cap.
    auto_recharge_scan()
    assert AutoRecharge.objects.get().charging is None
    _spend_down_to(tenant, 100)
    assert auto_recharge_scan() == 1
    auto_recharge_scan()
    _spend_down_to(tenant, 100)
    assert auto_recharge_scan() == 0  # 10 + 10 + 10 USD would pass the 25 USD cap
    assert Payment.objects.filter(automatic=True).count() == 2
    assert_books_balance(tenant)


def test_fifty_requests_crossing_together_while_jobs_run_charge_once(
    buyer, tenant, fake_stripe, fake_upstream, client_for
):
    _saved_card(buyer, fake_stripe)
    _spend_down_to(tenant, 400)  # 50 requests of a few credits each take it under 300
    client = client_for(tenant)
    barrier = threading.Barrier(58)
    refused: list[int] = []

    def ask() -> None:
        barrier.wait()
        try:
            client.chat.completions.create(model="openai/gpt-4o-mini", max_tokens=8,
                                           messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as exc:  # out of credits before the recharge arrived
            refused.append(exc.status_code)

    def scan() -> None:
        barrier.wait()
        try:
            for _ in range(20):
                auto_recharge_scan()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ask) for _ in range(50)]
    threads += [threading.Thread(target=scan) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    auto_recharge_scan()

    assert set(refused) <= {402}
    assert LedgerEntry.objects.filter(kind="usage", balance_after__lt=300).exists()  # crossed
    automatic = Payment.objects.filter(automatic=True)
    assert automatic.count() == 1 and automatic.get().status == "paid"
    charged = [i for i in fake_stripe.intents.values() if i["metadata"].get("automatic")]
    assert len(charged) == 1
    assert LedgerEntry.objects.filter(kind="purchase", amount=1000).count() == 1
    assert_books_balance(tenant)


def test_a_declined_card_turns_auto_recharge_off_and_tells_the_owner_and_the_webhooks(
    buyer, tenant, fake_stripe, settings
):
    setup = _saved_card(buyer, fake_stripe)
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]  # a receiver on loopback
    webhook_endpoint_create(organization=tenant.org, url="http://127.0.0.1:9/novakit",
                            events=["auto_recharge.failed"])
    fake_stripe.declined.add(setup.payment_method_id)
    _spend_down_to(tenant, 10)
    mail.outbox.clear()

    assert auto_recharge_scan() == 1
    assert auto_recharge_scan() == 0  # off now: no second attempt

    setup.refresh_from_db()
    assert not setup.enabled and "declined" in setup.disabled_reason
    assert Payment.objects.get(automatic=True).status == "failed"
    assert tenant.refresh_account().balance == 10
    [email] = mail.outbox
    assert "auto-recharge" in email.subject and tenant.user.email in email.to
    delivery = WebhookDelivery.objects.get(event="auto_recharge.failed")
    assert delivery.payload["data"]["reason"] == "Your card was declined."
    assert AuditEvent.objects.filter(action="credits.auto_recharge_failed").count() == 1
    page = buyer.get(BILLING).content.decode()
    assert "The card was refused" in page


def test_a_late_decline_event_turns_it_off_too_and_a_checkout_failure_does_not(
    buyer, tenant, fake_stripe
):
    setup = _saved_card(buyer, fake_stripe)
    _spend_down_to(tenant, 10)
    auto_recharge_scan()
    charge = Payment.objects.get(automatic=True)
    Payment.objects.filter(pk=charge.pk).update(status="pending")  # as if not yet settled
    intent = {**fake_stripe.intents[charge.payment_intent_id], "status": "requires_payment_method",
              "last_payment_error": {"message": "The bank reversed the charge."}}

    response = fake_stripe.deliver(fake_stripe.event("payment_intent.payment_failed", intent))

    assert response.json()["outcome"] == "failed"
    setup.refresh_from_db()
    assert not setup.enabled and "reversed" in setup.disabled_reason
    checkout = bought(buyer, fake_stripe, "5")
    other = {**fake_stripe.intents[checkout.payment_intent_id], "status": "requires_payment_method"}
    assert fake_stripe.deliver(fake_stripe.event("payment_intent.payment_failed", other)).json()[
        "outcome"] == "ignored: a checkout may be tried again"


def test_auto_recharge_needs_a_saved_card_and_sensible_numbers(buyer, tenant, fake_stripe):
    page = buyer.post("/portal/billing/auto-recharge/", {
        "enabled": "on", "threshold": "300", "amount": "10", "monthly_cap": "25"}, follow=True)
    assert "Save a card first" in page.content.decode()
    _saved_card(buyer, fake_stripe)
    page = buyer.post("/portal/billing/auto-recharge/", {
        "enabled": "on", "threshold": "300", "amount": "10", "monthly_cap": "5"}, follow=True)
    assert "must allow one recharge" in page.content.decode()
    assert AutoRecharge.objects.get().monthly_cap == 2500


def test_a_job_that_died_after_its_claim_or_is_retried_charges_the_card_once(
    buyer, tenant, fake_stripe
):
    setup = _saved_card(buyer, fake_stripe)
    _spend_down_to(tenant, 10)
    payment = _claim(setup, available=10)  # claimed, and the process died before Stripe
    assert payment is not None and _claim(setup, available=10) is None

    assert auto_recharge_scan() == 0  # the next run resumes the claimed charge: not a new one
    setup.refresh_from_db()
    _charge(setup, payment)  # a retried task asks again, with the payment's idempotency key

    charged = [i for i in fake_stripe.intents.values() if i["metadata"].get("automatic")]
    assert len(charged) == 1 and fake_stripe.deliveries.count(200) >= 1
    payment.refresh_from_db()
    assert payment.status == "paid" and tenant.refresh_account().balance == 1010
    assert_books_balance(tenant)
