"""Auto-recharge: buy credits with the organization's saved card when its balance runs low.

A card is saved at a top-up the buyer asked to save it at (Stripe keeps it,
`setup_future_usage=off_session`; NovaKit keeps the customer and payment
method ids). Owners and admins then set the threshold, the amount and a
monthly cap. A periodic job (`auto_recharge_scan`, every minute) charges
once per crossing:

- claiming the crossing is a conditional UPDATE of the organization's row
  (`charging` from empty to the new payment), in the transaction that
  creates the payment, so requests crossing together or jobs running at once
  make one payment;
- the PaymentIntent is created after that commit with the payment's own
  idempotency key, so a retried job gets Stripe's first answer, not a second
  charge;
- the credits arrive as every purchase's do, by Stripe's signed webhook;
- the row is re-armed when the balance is back above the threshold.

A declined charge fails the payment, turns auto-recharge off with the reason,
and tells the owners by email and the organization's webhooks
(`auto_recharge.failed`).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.emails import owners_notify
from accounts.services import audit_record
from accounts.webhooks import webhook_emit
from billing.models import AutoRecharge, Payment
from billing.topups import CENT, CURRENCY, PAYMENT_METADATA, credits_for, stripe_client

logger = logging.getLogger(__name__)


def card_saved(*, payment: Payment, customer_id: str, payment_method_id: str) -> None:
    """Keep the card a top-up paid with, as its buyer asked; settings already made stay."""
    AutoRecharge.objects.update_or_create(
        organization_id=payment.organization_id,
        defaults={"customer_id": customer_id, "payment_method_id": payment_method_id,
                  "card_saved_at": timezone.now(), "disabled_reason": ""})


def auto_recharge_set(*, organization_id: int, enabled: bool, threshold: int, amount_usd: Decimal,
                      monthly_cap_usd: Decimal, actor: Any) -> AutoRecharge:
    setup = AutoRecharge.objects.get(organization_id=organization_id)
    before = {"enabled": setup.enabled, "threshold": setup.threshold, "amount": setup.amount,
              "monthly_cap": setup.monthly_cap}
    setup.enabled, setup.threshold = enabled, threshold
    setup.amount, setup.monthly_cap = int(amount_usd / CENT), int(monthly_cap_usd / CENT)
    if enabled:
        setup.disabled_reason = ""
    setup.save()
    audit_record(action="credits.auto_recharge_set", actor=actor, organization_id=organization_id,
                 target=f"auto-recharge {setup.pk}", before=before,
                 after={"enabled": enabled, "threshold": threshold, "amount": setup.amount,
                        "monthly_cap": setup.monthly_cap})
    return setup


def spent_this_month(organization_id: int) -> int:
    """Cents auto-recharge charged (or is charging) the organization this calendar month."""
    start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    charged = Payment.objects.filter(
        organization_id=organization_id, automatic=True, created_at__gte=start,
        status__in=[Payment.Status.PENDING, Payment.Status.PAID]).aggregate(total=Sum("amount"))
    return int(charged["total"] or 0)


@transaction.atomic
def _claim(setup: AutoRecharge, available: int) -> Payment | None:
    """The crossing's payment, made once: None when the row was claimed already, the cap is
    reached, or the balance is not under the threshold."""
    if available >= setup.threshold or setup.amount <= 0:
        return None
    if spent_this_month(setup.organization_id) + setup.amount > setup.monthly_cap:
        logger.info("auto-recharge of organization %s skipped: its monthly cap is reached",
                    setup.organization_id)
        return None
    amount_usd = Decimal(setup.amount) * CENT
    payment = Payment.objects.create(
        organization_id=setup.organization_id, credits=credits_for(amount_usd),
        amount=setup.amount, currency=CURRENCY, credit_price=settings.CREDIT_PRICE_USD,
        automatic=True)
    claimed = AutoRecharge.objects.filter(pk=setup.pk, enabled=True, charging__isnull=True
                                          ).update(charging=payment)
    if claimed != 1:
        transaction.set_rollback(True)  # another job claimed this crossing first
        return None
    return payment


def _charge(setup: AutoRecharge, payment: Payment) -> None:
    """Ask Stripe to take the payment off the saved card; idempotent by the payment."""
    import stripe  # when a payment needs it (billing.topups.stripe_client)

    metadata = {PAYMENT_METADATA: str(payment.pk), "organization": str(payment.organization_id),
                "automatic": "true"}
    try:
        intent = stripe_client().v1.payment_intents.create(
            params={"amount": payment.amount, "currency": payment.currency,
                    "customer": setup.customer_id, "payment_method": setup.payment_method_id,
                    "off_session": True, "confirm": True, "metadata": metadata},
            options={"idempotency_key": f"novakit-recharge-{payment.pk}"})
    except stripe.CardError as declined:
        recharge_failed(payment=payment, reason=declined.user_message or "the card was declined")
        return
    Payment.objects.filter(pk=payment.pk, payment_intent_id__isnull=True).update(
        payment_intent_id=intent.id)


def recharge_failed(*, payment: Payment, reason: str) -> None:
    """A charge of the saved card failed: no credits, auto-recharge off, the owners told."""
    with transaction.atomic():
        Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
            status=Payment.Status.FAILED)
        changed = AutoRecharge.objects.filter(
            organization_id=payment.organization_id, enabled=True).update(
            enabled=False, charging=None, disabled_reason=f"The card was refused: {reason}")
        if not changed:
            return  # told already (the decline answered, then its event arrived)
        organization = payment.organization
        audit_record(action="credits.auto_recharge_failed", actor_label="stripe",
                     organization=organization, target=f"payment:{payment.pk}", reason=reason)
        owners_notify(
            organization=organization,
            subject=f"NovaKit: auto-recharge of {organization.name} failed",
            message=(f"Charging the saved card {payment.amount / 100:.2f} "
                     f"{payment.currency.upper()} failed ({reason}), so auto-recharge is now "
                     "off. Buy credits or save another card on the billing page."))
        webhook_emit(organization_id=organization.pk, event="auto_recharge.failed",
                     event_key=f"auto_recharge.failed:{payment.pk}",
                     data={"payment": payment.pk, "amount": payment.amount,
                           "currency": payment.currency, "reason": reason})


def auto_recharge_scan() -> int:
    """Charge each organization whose balance crossed its threshold, once; re-arm those back
    above it; resume a charge whose call to Stripe did not happen. Returns the charges made."""
    charges = 0
    setups = AutoRecharge.objects.filter(enabled=True).select_related(
        "charging", "organization__credit_account")
    for setup in setups:
        account = getattr(setup.organization, "credit_account", None)
        available = account.available if account is not None else 0
        pending = setup.charging
        if pending is not None:
            if available >= setup.threshold and pending.status != Payment.Status.PENDING:
                AutoRecharge.objects.filter(pk=setup.pk, charging=pending).update(charging=None)
            elif pending.status == Payment.Status.PENDING and not pending.payment_intent_id:
                _charge(setup, pending)  # the last run died between its claim and Stripe
            continue
        payment = _claim(setup, available)
        if payment is not None:
            _charge(setup, payment)
            charges += 1
    return charges
