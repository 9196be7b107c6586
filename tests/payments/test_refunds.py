"""A refund or a lost dispute takes back the credits that part of the payment bought
(billing/stripe_events.py, billing.ledger.credits_reverse): never below zero, the rest owed as
a debt that the next credits repay."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import AuditEvent
from billing.holds import credits_reserve
from billing.ledger import account_for_organization, credits_adjust, credits_grant
from billing.models import LedgerEntry, StripeEvent
from tests.completions.helpers import assert_books_balance
from tests.payments.helpers import bought, buy, outcome


@pytest.fixture(autouse=True)
def _a_cent_a_credit(settings):  # type: ignore[no-untyped-def]
    settings.CREDIT_PRICE_USD = Decimal("0.01")  # 5 USD buys 500 credits


def _spend_all_but(tenant, left: int) -> None:  # type: ignore[no-untyped-def]
    account = tenant.refresh_account()
    credits_adjust(account=account, amount=-(account.balance - left), kind="expiry",
                   reason="spent, as far as this test is concerned")


def test_a_refund_after_the_credits_were_spent_leaves_the_balance_at_zero_and_the_debt_recorded(
    buyer, tenant, fake_stripe, admin_client
):
    payment = bought(buyer, fake_stripe, "5")
    _spend_all_but(tenant, 150)
    credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id="running",
                    amount=50, tokens=1)  # a request in flight holds 50 of the 150

    result = outcome(fake_stripe, fake_stripe.refund(payment.payment_intent_id))

    assert result == "reversed 500 credits, 400 owed"
    account = tenant.refresh_account()
    assert (account.balance, account.reserved, account.debt) == (50, 50, 400)
    reversal = LedgerEntry.objects.get(kind="reversal")
    assert reversal.amount == -100 and "refunded" in reversal.reason
    payment.refresh_from_db()
    assert (payment.amount_refunded, payment.credits_reversed) == (500, 500)
    # Staff see the debt on the organization's page; the organization on its billing page.
    staff_page = admin_client.get(f"/staff/organizations/{tenant.org.pk}/").content.decode()
    assert 'id="debt"' in staff_page and "400" in staff_page
    assert "400 credits" in buyer.get("/portal/billing/").content.decode()


def test_the_next_purchase_and_a_grant_repay_the_debt_first(buyer, tenant, fake_stripe, settings):
    payment = bought(buyer, fake_stripe, "5")
    _spend_all_but(tenant, 0)
    outcome(fake_stripe, fake_stripe.refund(payment.payment_intent_id))
    account = tenant.refresh_account()
    assert (account.balance, account.debt) == (0, 500)  # spent: never below zero, owed instead

    second = bought(buyer, fake_stripe, "7")  # 700 credits: 500 of them repay the debt

    account = tenant.refresh_account()
    assert (account.balance, account.debt) == (200, 0)
    # The repayment has its own audit row beside its ledger entry, as every credit movement.
    repaid = AuditEvent.objects.get(organization=tenant.org, action="credits.debt_repaid")
    assert (repaid.before, repaid.after["debt"], repaid.after["balance"]) == (
        {"debt": 500, "balance": 700}, 0, 200)
    assert LedgerEntry.objects.get(pk=repaid.after["entry"]).amount == -500
    outcome(fake_stripe, fake_stripe.refund(second.payment_intent_id))  # 700 back, 200 free
    assert tenant.refresh_account().debt == 500
    # Credits given away repay it too (DEBT_TAKES_FREE_CREDITS), unless staff turn that off.
    account = account_for_organization(organization=tenant.org)
    credits_grant(account=account, amount=300, reason="a gift")
    assert (tenant.refresh_account().balance, tenant.refresh_account().debt) == (0, 200)
    settings.DEBT_TAKES_FREE_CREDITS = False
    credits_grant(account=account, amount=300, reason="another gift")
    assert (tenant.refresh_account().balance, tenant.refresh_account().debt) == (300, 200)
    assert_books_balance(tenant)


def test_partial_refunds_take_back_their_share_once_each(buyer, tenant, fake_stripe):
    payment = bought(buyer, fake_stripe, "5")
    balance = tenant.refresh_account().balance

    first = fake_stripe.refund(payment.payment_intent_id, amount=200)  # 2 of 5 USD
    assert outcome(fake_stripe, first) == "reversed 200 credits"
    assert outcome(fake_stripe, first) == "duplicate"
    assert outcome(fake_stripe, fake_stripe.refund(payment.payment_intent_id)) == (
        "reversed 300 credits")

    account = tenant.refresh_account()
    assert (account.balance, account.debt) == (balance - 500, 0)
    assert StripeEvent.objects.filter(type="charge.refunded").count() == 2
    assert_books_balance(tenant)


def test_a_lost_dispute_takes_the_credits_back_and_a_won_one_does_not(
    buyer, tenant, fake_stripe
):
    payment = bought(buyer, fake_stripe, "5")
    balance = tenant.refresh_account().balance

    assert outcome(fake_stripe, fake_stripe.dispute(payment.payment_intent_id, "won")) == (
        "ignored: dispute won")
    assert tenant.refresh_account().balance == balance
    assert outcome(fake_stripe, fake_stripe.dispute(payment.payment_intent_id, "lost")) == (
        "reversed 500 credits")
    # A refund of what the dispute already took back takes nothing more.
    assert outcome(fake_stripe, fake_stripe.refund(payment.payment_intent_id)) == (
        "already reversed")
    assert tenant.refresh_account().balance == balance - 500


def test_a_refund_that_arrives_before_its_grant_is_asked_again_later(buyer, tenant, fake_stripe):
    payment = buy(buyer, "5")
    _, succeeded = fake_stripe.pay(str(payment.checkout_session_id))
    intent = succeeded["data"]["object"]["id"]
    refund = fake_stripe.refund(intent)
    refund["data"]["object"]["metadata"] = {"novakit_payment": str(payment.pk)}

    early = fake_stripe.deliver(refund)

    assert early.status_code == 503 and early.json()["error"]["code"] == "retry_later"
    assert not StripeEvent.objects.filter(type="charge.refunded").exists()
    assert outcome(fake_stripe, succeeded) == "granted"
    assert outcome(fake_stripe, refund) == "reversed 500 credits"  # Stripe's retry
    account = tenant.refresh_account()
    assert_books_balance(tenant)
    assert account.debt == 0
