"""Money in: top-ups paid through Stripe, the Stripe events handled, auto-recharge.

Nothing here changes a balance: billing.topups, billing.stripe_events and
billing.recharge do, through billing.ledger.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization


class Payment(models.Model):
    """A credit top-up paid through Stripe Checkout (billing.topups).

    Its credits are granted only by Stripe's signed webhook (billing.stripe_events),
    once, with the purchase's ledger entry linked here.
    """

    class Status(models.TextChoices):
        # The checkout is open: the buyer has not paid, or Stripe has not said so yet.
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        # The checkout expired or the payment failed: nothing was granted.
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    bought_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    credits = models.PositiveBigIntegerField()
    # What the buyer pays, in the currency's smallest unit (cents), and the price of a
    # credit it was worked out at.
    amount = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    credit_price = models.DecimalField(max_digits=12, decimal_places=8)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # NULL, not "": unique, and empty until Stripe gives them.
    checkout_session_id = models.CharField(max_length=255, null=True, blank=True,
                                           unique=True)
    payment_intent_id = models.CharField(max_length=255, null=True, blank=True,
                                         unique=True)
    entry = models.OneToOneField("billing.LedgerEntry", null=True, blank=True,
                                 on_delete=models.PROTECT, related_name="payment")
    # What Stripe has given back to the buyer (cents): refunds so far, and a lost dispute;
    # and the credits taken back for it (billing.stripe_events), part of them as debt.
    # Made by auto-recharge (billing.recharge) with the saved card, not by a buyer at checkout.
    automatic = models.BooleanField(default=False)
    # The buyer asked to save the card for auto-recharge.
    save_card = models.BooleanField(default=False)
    amount_refunded = models.PositiveIntegerField(default=0)
    amount_disputed = models.PositiveIntegerField(default=0)
    credits_reversed = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(credits__gte=1) & Q(amount__gte=1),
                                   name="payment_positive"),
        ]

    def __str__(self) -> str:
        return f"payment {self.pk}: {self.credits} credits ({self.status})"

    @property
    def amount_major(self) -> Decimal:
        """The amount in the currency's main unit (dollars, not cents)."""
        return Decimal(self.amount) / 100


class StripeEvent(models.Model):
    """A Stripe event NovaKit has handled: one row per event id, so a delivery repeated
    by Stripe (it retries until answered 2xx) is recognised and changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="events")
    # What handling it did: "granted", "already granted", "ignored", "refused: ..."
    outcome = models.CharField(max_length=200)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class AutoRecharge(models.Model):
    """An organization's standing order: when its available balance falls below `threshold`
    credits, buy `amount` (cents) with the card it saved, at most `monthly_cap` a month.

    One charge per crossing: `charging` names the payment of the crossing under way, and
    is cleared when the balance is back above the threshold (billing.recharge).
    """

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE,
                                        related_name="auto_recharge")
    # The card saved at a top-up: Stripe's customer and payment method, never the card.
    customer_id = models.CharField(max_length=255)
    payment_method_id = models.CharField(max_length=255)
    card_saved_at = models.DateTimeField(default=timezone.now)
    enabled = models.BooleanField(default=False)
    threshold = models.PositiveBigIntegerField(default=0)
    amount = models.PositiveIntegerField(default=0)
    monthly_cap = models.PositiveIntegerField(default=0)
    charging = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    # Why it turned itself off (a declined card), for the owner to read.
    disabled_reason = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"auto-recharge of organization {self.organization_id} ({state})"

    @property
    def amount_major(self) -> Decimal:
        return Decimal(self.amount) / 100

    @property
    def monthly_cap_major(self) -> Decimal:
        return Decimal(self.monthly_cap) / 100
