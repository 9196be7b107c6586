"""Buying credits: a top-up is a Stripe Checkout Session for an amount within staff-set bounds.

Starting one grants nothing: it records a pending `Payment` and sends the
buyer to Stripe's page. The credits arrive when Stripe's signed webhook says
the payment succeeded (billing.stripe_events), whatever the buyer's browser
does afterwards.
"""

from __future__ import annotations

import logging
import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from accounts.models import Organization
from accounts.services import audit_record
from billing.models import Payment

if TYPE_CHECKING:
    import stripe

logger = logging.getLogger(__name__)
CURRENCY = "usd"
CENT = Decimal("0.01")
# The metadata key, on the Checkout Session and its PaymentIntent, naming the Payment.
PAYMENT_METADATA = "novakit_payment"


class TopupRefused(ValueError):
    """A top-up that cannot start, with a message for the buyer."""


def topups_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY and settings.STRIPE_WEBHOOK_SECRET)


def stripe_client() -> stripe.StripeClient:
    """The Stripe API client. The library is imported here, when a payment needs it, not
    with the URLs: imported and used it holds ~3.4 MB in a serving process (measured
    beside the URLconf), and most processes never take a payment."""
    import stripe

    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, max_network_retries=2,
                               base_addresses={"api": settings.STRIPE_API_BASE})


def credits_for(amount_usd: Decimal) -> int:
    """How many credits `amount_usd` buys at the credit price (whole credits, rounded down)."""
    return math.floor(amount_usd / settings.CREDIT_PRICE_USD)


def topup_amount(raw: str | Decimal) -> Decimal:
    """The amount a buyer asked for, checked: whole cents, within the staff's bounds."""
    try:
        amount = Decimal(str(raw).strip())
    except InvalidOperation:
        raise TopupRefused("Enter an amount in US dollars, such as 20 or 12.50.") from None
    low, high = settings.TOPUP_MIN_USD, settings.TOPUP_MAX_USD
    if not amount.is_finite() or amount != amount.quantize(CENT):
        raise TopupRefused("Enter an amount in US dollars, with at most two decimals.")
    if not low <= amount <= high:
        raise TopupRefused(f"A top-up is between {low} and {high} USD.")
    return amount


def topup_start(*, organization: Organization, user: AbstractBaseUser, amount_usd: Decimal,
                success_url: str, cancel_url: str, save_card: bool = False
                ) -> tuple[Payment, str]:
    """Record a pending payment and open its Stripe Checkout Session; returns the payment
    and the address of Stripe's payment page.

    `success_url` may hold `{CHECKOUT_SESSION_ID}`, which Stripe fills in. No
    transaction is held across the call to Stripe; a failed call leaves the
    payment failed, and nothing granted.
    """
    if not topups_enabled():
        raise TopupRefused("Buying credits is not set up on this platform.")
    amount = topup_amount(amount_usd)
    credits = credits_for(amount)
    if credits < 1:
        raise TopupRefused("That amount buys less than one credit.")
    payment = Payment.objects.create(
        organization=organization, bought_by_id=user.pk, credits=credits,
        amount=int(amount / CENT), currency=CURRENCY, credit_price=settings.CREDIT_PRICE_USD,
        save_card=save_card)
    metadata = {PAYMENT_METADATA: str(payment.pk), "organization": str(organization.pk)}
    params = {
        "mode": "payment",
        "line_items": [{"quantity": 1, "price_data": {
            "currency": CURRENCY, "unit_amount": payment.amount,
            "product_data": {"name": f"{credits:,} NovaKit credits"}}}],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(payment.pk),
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
    }
    if email := getattr(user, "email", ""):
        params["customer_email"] = email
    if save_card:  # kept by Stripe for auto-recharge (billing.recharge)
        params["customer_creation"] = "always"
        params["payment_intent_data"] = {"metadata": metadata,
                                         "setup_future_usage": "off_session"}
    import stripe

    try:
        session = stripe_client().v1.checkout.sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"novakit-topup-{payment.pk}"})
    except stripe.StripeError as exc:
        logger.error("Stripe refused to open a checkout for payment %s: %s", payment.pk,
                     type(exc).__name__)
        Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.FAILED)
        raise TopupRefused("Stripe could not start the payment; nothing was charged. "
                           "Try again in a moment.") from None
    Payment.objects.filter(pk=payment.pk).update(checkout_session_id=session.id)
    payment.checkout_session_id = session.id
    audit_record(action="credits.topup_started", actor=user, organization=organization,
                 target=f"payment:{payment.pk}",
                 after={"credits": credits, "amount": payment.amount, "currency": CURRENCY})
    return payment, str(session.url)


def receipt_amounts(payment: Payment) -> dict[str, Any]:
    """What a receipt shows of the amount paid: the tax it includes (RECEIPT_TAX_PERCENT,
    rounded half up to the cent), the rest, and who sold it."""
    total = payment.amount_major
    rate = settings.RECEIPT_TAX_PERCENT
    tax = (total * rate / (100 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)
    return {"total": total, "tax": tax, "net": total - tax, "tax_percent": rate.normalize(),
            "tax_name": settings.RECEIPT_TAX_NAME, "tax_id": settings.RECEIPT_TAX_ID,
            "seller": settings.RECEIPT_SELLER}
