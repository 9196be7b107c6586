"""Stripe's webhook: the one way a bought credit arrives.

Every delivery's `Stripe-Signature` is checked by the stripe library against
`STRIPE_WEBHOOK_SECRET` (and its timestamp against a five-minute tolerance,
which stops replays); anything else is refused before it is read.

A verified event is handled once: its id is recorded in the same commit as
what it did, so a delivery Stripe repeats finds its row and changes nothing.
A payment is granted once: `checkout.session.completed` and
`payment_intent.succeeded` both say it was paid, in either order, and the
first to arrive grants under a lock on the payment row (the ledger's
idempotency key is the second fence). An event whose amount or currency is
not the payment's grants nothing and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.services import audit_record
from billing.ledger import account_for_organization, credits_grant
from billing.models import LedgerEntry, Payment, StripeEvent
from billing.topups import PAYMENT_METADATA

logger = logging.getLogger(__name__)


class EventRefused(ValueError):
    """A delivery that is not a genuine, current Stripe event: answered 400, nothing done."""


@dataclass(frozen=True, slots=True)
class PaidObject:
    """What a "paid" event says, read from a Checkout Session or a PaymentIntent."""

    payment_id: str
    amount: int | None
    currency: str
    payment_intent: str | None
    checkout_session: str | None


def stripe_event_receive(*, payload: bytes, signature: str | None) -> str:
    """Verify a webhook delivery and handle its event; returns what handling did."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise EventRefused("no webhook secret is configured")
    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as exc:
        raise EventRefused(f"bad signature: {exc.user_message or 'does not verify'}") from None
    except ValueError:
        raise EventRefused("the body is not a Stripe event") from None
    return stripe_event_handle(event.to_dict())


@transaction.atomic
def stripe_event_handle(event: dict[str, Any]) -> str:
    """Handle one verified event, once by its id."""
    record, created = StripeEvent.objects.get_or_create(
        event_id=str(event["id"]), defaults={"type": str(event.get("type", "")), "outcome": ""})
    if not created:
        return "duplicate"
    handler = _HANDLERS.get(record.type)
    obj = (event.get("data") or {}).get("object") or {}
    outcome, payment = handler(obj) if handler else ("ignored", None)
    record.outcome, record.payment = outcome[:200], payment
    record.save(update_fields=["outcome", "payment"])
    return outcome


def _checkout_paid(session: dict[str, Any]) -> PaidObject | None:
    if session.get("payment_status") != "paid":
        return None  # a delayed method (a bank debit): async_payment_succeeded follows
    return PaidObject(payment_id=str((session.get("metadata") or {}).get(PAYMENT_METADATA, "")),
                      amount=session.get("amount_total"),
                      currency=str(session.get("currency", "")),
                      payment_intent=session.get("payment_intent"),
                      checkout_session=session.get("id"))


def _intent_paid(intent: dict[str, Any]) -> PaidObject:
    return PaidObject(payment_id=str((intent.get("metadata") or {}).get(PAYMENT_METADATA, "")),
                      amount=intent.get("amount_received"),
                      currency=str(intent.get("currency", "")),
                      payment_intent=intent.get("id"), checkout_session=None)


def _paid(paid: PaidObject | None) -> tuple[str, Payment | None]:
    if paid is None:
        return "ignored: not paid yet", None
    if not paid.payment_id.isdigit():
        return "ignored: not a NovaKit payment", None
    payment = Payment.objects.select_for_update().filter(pk=int(paid.payment_id)).first()
    if payment is None:
        logger.error("a Stripe event names payment %s, which does not exist", paid.payment_id)
        return "refused: no such payment", None
    if (paid.amount, paid.currency) != (payment.amount, payment.currency):
        logger.error("a Stripe event for payment %s says %s %s, the payment is %s %s: "
                     "nothing granted", payment.pk, paid.amount, paid.currency, payment.amount,
                     payment.currency)
        return "refused: amount differs", payment
    if paid.checkout_session and paid.checkout_session != payment.checkout_session_id:
        logger.error("a Stripe event for payment %s names another checkout", payment.pk)
        return "refused: another checkout", payment
    if payment.status == Payment.Status.PAID:
        return "already granted", payment
    entry = credits_grant(
        account=account_for_organization(organization=payment.organization_id),
        amount=payment.credits, kind=LedgerEntry.Kind.PURCHASE, actor_label="stripe",
        reason=f"Stripe payment {paid.payment_intent or payment.checkout_session_id}",
        idempotency_key=f"stripe-payment:{payment.pk}")
    payment.status, payment.entry, payment.paid_at = Payment.Status.PAID, entry, timezone.now()
    payment.payment_intent_id = paid.payment_intent or payment.payment_intent_id
    payment.save(update_fields=["status", "entry", "paid_at", "payment_intent_id"])
    audit_record(action="credits.purchased", actor_label="stripe",
                 organization_id=payment.organization_id, target=f"payment:{payment.pk}",
                 after={"credits": payment.credits, "amount": payment.amount,
                        "currency": payment.currency, "payment_intent": paid.payment_intent})
    return "granted", payment


def _failed(obj: dict[str, Any]) -> tuple[str, Payment | None]:
    payment_id = str((obj.get("metadata") or {}).get(PAYMENT_METADATA, ""))
    if not payment_id.isdigit():
        return "ignored: not a NovaKit payment", None
    changed = Payment.objects.filter(pk=int(payment_id), status=Payment.Status.PENDING).update(
        status=Payment.Status.FAILED)
    return ("failed" if changed else "ignored: not pending"), Payment.objects.filter(
        pk=int(payment_id)).first()


_HANDLERS: dict[str, Callable[[dict[str, Any]], tuple[str, Payment | None]]] = {
    "checkout.session.completed": lambda obj: _paid(_checkout_paid(obj)),
    "checkout.session.async_payment_succeeded": lambda obj: _paid(_checkout_paid(obj)),
    "payment_intent.succeeded": lambda obj: _paid(_intent_paid(obj)),
    "checkout.session.expired": _failed,
    "checkout.session.async_payment_failed": _failed,
}
