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

A refund (`charge.refunded`, which carries the charge's refunds so far) or a
lost dispute (`charge.dispute.closed`) takes back the credits that part of
the payment bought, once, through billing.ledger.credits_reverse: what the
organization has free is taken, the rest becomes its debt. One that arrives
before its payment's grant is answered 503 and left unrecorded, so Stripe
sends it again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.services import audit_record
from billing.ledger import account_for_organization, credits_grant, credits_reverse
from billing.models import LedgerEntry, Payment, StripeEvent
from billing.recharge import card_saved, recharge_failed
from billing.topups import PAYMENT_METADATA

logger = logging.getLogger(__name__)


class EventRefused(ValueError):
    """A delivery that is not a genuine, current Stripe event: answered 400, nothing done."""


def _payment_id(obj: dict[str, Any]) -> int | None:
    """The NovaKit payment a Stripe object names in its metadata, or None (not ours)."""
    raw = str((obj.get("metadata") or {}).get(PAYMENT_METADATA, ""))
    return int(raw) if raw.isdigit() else None


def _payment_of(obj: dict[str, Any]) -> Payment | None:
    payment_id = _payment_id(obj)
    return None if payment_id is None else Payment.objects.filter(pk=payment_id).first()


@dataclass(frozen=True, slots=True)
class PaidObject:
    """What a "paid" event says, read from a Checkout Session or a PaymentIntent."""

    payment_id: int | None
    amount: int | None
    currency: str
    payment_intent: str | None
    checkout_session: str | None
    # The saved card, where the buyer asked to save it (a PaymentIntent's).
    customer: str | None = None
    payment_method: str | None = None


def stripe_event_receive(*, payload: bytes, signature: str | None) -> str:
    """Verify a webhook delivery and handle its event; returns what handling did."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise EventRefused("no webhook secret is configured")
    import stripe  # when a payment needs it (billing.topups.stripe_client)

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
    return PaidObject(payment_id=_payment_id(session), amount=session.get("amount_total"),
                      currency=str(session.get("currency", "")),
                      payment_intent=session.get("payment_intent"),
                      checkout_session=session.get("id"))


def _intent_paid(intent: dict[str, Any]) -> PaidObject:
    return PaidObject(payment_id=_payment_id(intent), amount=intent.get("amount_received"),
                      currency=str(intent.get("currency", "")),
                      payment_intent=intent.get("id"), checkout_session=None,
                      customer=intent.get("customer"), payment_method=intent.get("payment_method"))


def _paid(paid: PaidObject | None) -> tuple[str, Payment | None]:
    if paid is None:
        return "ignored: not paid yet", None
    if paid.payment_id is None:
        return "ignored: not a NovaKit payment", None
    payment = Payment.objects.select_for_update().filter(pk=paid.payment_id).first()
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
    if payment.save_card and paid.customer and paid.payment_method:
        card_saved(payment=payment, customer_id=str(paid.customer),
                   payment_method_id=str(paid.payment_method))
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
    payment = _payment_of(obj)
    if payment is None:
        return "ignored: not a NovaKit payment", None
    changed = Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
        status=Payment.Status.FAILED)
    return ("failed" if changed else "ignored: not pending"), payment


class NotYet(Exception):
    """An event about a payment whose grant has not arrived yet: answered 503, recorded
    nowhere, so Stripe delivers it again (it retries for days) after the grant."""


def _reversed(obj: dict[str, Any], *, refunded: int | None = None,
              disputed: int | None = None) -> tuple[str, Payment | None]:
    """A refund (`refunded`: the charge's refunds so far, in cents) or a lost dispute
    (`disputed`) takes back the credits that part of the payment bought, once."""
    intent = obj.get("payment_intent")
    payment = Payment.objects.select_for_update().filter(payment_intent_id=intent).first() if (
        intent) else None
    if payment is None:
        ours = _payment_of(obj)
        if ours is None:
            return "ignored: not a NovaKit payment", None
        raise NotYet(f"payment {ours.pk} is not granted yet")
    if refunded is not None:
        payment.amount_refunded = max(payment.amount_refunded, min(refunded, payment.amount))
    if disputed is not None:
        payment.amount_disputed = max(payment.amount_disputed, min(disputed, payment.amount))
    returned = min(payment.amount, payment.amount_refunded + payment.amount_disputed)
    owed = payment.credits * returned // payment.amount
    more = owed - payment.credits_reversed
    if more <= 0:
        payment.save(update_fields=["amount_refunded", "amount_disputed"])
        return "already reversed", payment
    _, shortfall = credits_reverse(
        account_id=account_for_organization(organization=payment.organization_id).pk,
        credits=more, idempotency_key=f"stripe-reversal:{payment.pk}:{owed}",
        reason=f"Stripe payment {payment.payment_intent_id} "
               f"{'refunded' if refunded is not None else 'lost in a dispute'}: "
               f"{returned / 100:.2f} of {payment.amount / 100:.2f} {payment.currency.upper()}")
    payment.credits_reversed = owed
    payment.save(update_fields=["amount_refunded", "amount_disputed", "credits_reversed"])
    return f"reversed {more} credits" + (f", {shortfall} owed" if shortfall else ""), payment


def _intent_failed(intent: dict[str, Any]) -> tuple[str, Payment | None]:
    """A charge of the saved card that failed after it was made (a bank's late decline):
    auto-recharge turns off. A buyer's failed attempt at checkout may be tried again."""
    payment = _payment_of(intent)
    if payment is None or not payment.automatic:
        return "ignored: a checkout may be tried again", payment
    error = intent.get("last_payment_error") or {}
    recharge_failed(payment=payment, reason=str(error.get("message") or "the payment failed"))
    return "failed", payment


def _dispute_closed(dispute: dict[str, Any]) -> tuple[str, Payment | None]:
    if dispute.get("status") != "lost":
        return f"ignored: dispute {dispute.get('status')}", None
    return _reversed(dispute, disputed=int(dispute.get("amount") or 0))


_HANDLERS: dict[str, Callable[[dict[str, Any]], tuple[str, Payment | None]]] = {
    "charge.refunded": lambda charge: _reversed(
        charge, refunded=int(charge.get("amount_refunded") or 0)),
    "charge.dispute.closed": _dispute_closed,
    "payment_intent.payment_failed": _intent_failed,
    "checkout.session.completed": lambda obj: _paid(_checkout_paid(obj)),
    "checkout.session.async_payment_succeeded": lambda obj: _paid(_checkout_paid(obj)),
    "payment_intent.succeeded": lambda obj: _paid(_intent_paid(obj)),
    "checkout.session.expired": _failed,
    "checkout.session.async_payment_failed": _failed,
}
