"""Buying credits in the tests: through the portal, paid on the fake Stripe, granted by its
webhook."""

from __future__ import annotations

from typing import Any

from django.test import Client

from billing.models import Payment
from tests.support.fake_stripe import FakeStripe

TOPUP = "/portal/billing/topups/"


def buy(buyer: Client, amount: str = "20", *, save_card: bool = False) -> Payment:
    """Start a top-up in the portal: the answer sends the browser to Stripe's page."""
    response = buyer.post(TOPUP, {"amount": amount, **({"save_card": "on"} if save_card else {})})
    assert response.status_code == 302, response.content.decode()[:500]
    payment = Payment.objects.order_by("-pk").first()
    assert payment is not None
    assert response["Location"].endswith(f"/pay/{payment.checkout_session_id}")
    return payment


def bought(buyer: Client, fake_stripe: FakeStripe, amount: str = "20") -> Payment:
    """A top-up paid and granted (its events delivered, in Stripe's order)."""
    payment = buy(buyer, amount)
    outcomes = [fake_stripe.deliver(event).json()["outcome"]
                for event in fake_stripe.pay(str(payment.checkout_session_id))]
    assert outcomes == ["granted", "already granted"]
    payment.refresh_from_db()
    return payment


def outcome(fake_stripe: FakeStripe, event: dict[str, Any]) -> str:
    response = fake_stripe.deliver(event)
    assert response.status_code == 200, response.text
    return str(response.json()["outcome"])
