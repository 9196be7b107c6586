"""Credit accounts, the append-only ledger, reservations and quotas.

Nothing here changes a balance: `billing.services` does, inside transactions.
Credits are whole numbers (BigInteger); prices are worked out in Decimal and
rounded once per request (see `billing.pricing`).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import APIKey, Organization


class CreditAccount(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="credit_account"
    )
    # `balance` is the sum of this account's ledger entries, kept here so the hot
    # path need not add them up; it changes in the same transaction as the entry.
    balance = models.BigIntegerField(default=0)
    # Credits held by open reservations; always <= balance.
    reserved = models.BigIntegerField(default=0)
    # Credits taken back for a refunded or disputed payment that had been spent already
    # (billing.ledger.credits_reverse): owed, and repaid from the next credits to arrive.
    debt = models.BigIntegerField(default=0, db_default=0)
    low_balance_threshold = models.BigIntegerField(null=True, blank=True)
    # Set when the balance went under the threshold and its owners were told;
    # cleared when it is back above, so each crossing alerts once.
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # Last line of defence: the services never let these fail, but if a
            # bug tried, the database refuses rather than overdrawing.
            models.CheckConstraint(
                condition=Q(balance__gte=0), name="credit_balance_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(reserved__gte=0), name="credit_reserved_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(reserved__lte=F("balance")), name="credit_reserved_within_balance"
            ),
            models.CheckConstraint(condition=Q(debt__gte=0), name="credit_debt_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.organization.slug}: {self.balance}"

    @property
    def available(self) -> int:
        return self.balance - self.reserved


class LedgerEntryQuerySet(models.QuerySet["LedgerEntry"]):
    """Refuses bulk edits and deletes, which bypass `LedgerEntry.save()` and `.delete()`.

    The one update allowed is clearing a link to a deleted API key or user:
    Django's SET_NULL runs it through `QuerySet.update`, and it leaves the
    entry's money facts (kind, amount, balance, request, reason) untouched.
    """

    _DETACHABLE = frozenset({"api_key", "api_key_id", "actor", "actor_id"})

    def update(self, **kwargs):  # type: ignore[no-untyped-def]
        detaching = set(kwargs) <= self._DETACHABLE and all(v is None for v in kwargs.values())
        if not kwargs or not detaching:
            raise ValueError("ledger entries are append-only: record a new entry instead")
        return super().update(**kwargs)

    def delete(self):  # type: ignore[no-untyped-def]
        raise ValueError("ledger entries are append-only: record a new entry instead")

    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_update(self, objs, fields, batch_size=None):  # type: ignore[no-untyped-def]
        raise ValueError("ledger entries are append-only: record a new entry instead")


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        PURCHASE = "purchase", "Purchase"
        USAGE = "usage", "Usage"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"
        EXPIRY = "expiry", "Expiry"
        # Credits of a payment Stripe refunded or lost in a dispute, taken back (or a
        # debt from one, repaid).
        REVERSAL = "reversal", "Payment reversal"

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="Signed: positive adds credits, negative spends")
    balance_after = models.BigIntegerField()
    # NULL, not "": the unique constraints below must ignore entries without one.
    request_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=100, blank=True)
    reason = models.TextField(blank=True)
    # Makes a grant or purchase safe to submit twice (a retried payment webhook).
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request_id"],
                condition=Q(kind="usage"),
                name="ledger_one_usage_entry_per_request",
            ),
            models.UniqueConstraint(
                fields=["account", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="ledger_idempotency_key_unique",
            ),
        ]
        indexes = [models.Index(fields=["account", "-created_at"], name="ledger_account_recent")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d}"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.pk is not None:
            raise ValueError("ledger entries are append-only: record a new entry instead")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("ledger entries are append-only: record a new entry instead")


class Reservation(models.Model):
    """Credits (and quota) held for one in-flight request until it is settled."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    request_id = models.CharField(max_length=64, unique=True)
    account = models.ForeignKey(
        CreditAccount, on_delete=models.PROTECT, related_name="reservations"
    )
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    amount = models.BigIntegerField()
    tokens = models.BigIntegerField(default=0)
    # What an interrupted request is charged (its process died before settling it):
    # its prompt, as a client that leaves pays for it (README "Credits").
    prompt_credits = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    # What the caller knew at admission, handed back when the expiry job closes the
    # reservation (completions writes the interrupted request's usage record from it).
    details = models.JSONField(default=dict)
    # [[quota_counter_id, held_amount], ...]: what to give back at settlement.
    quota_holds = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    charged = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="reservation_open_expiry")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="reservation_amount_gte_0")
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status} {self.amount}"


class Quota(models.Model):
    class Metric(models.TextChoices):
        CHAT_TOKENS = "chat_tokens", "Chat tokens"
        CREDITS = "credits", "Credits"

    class Period(models.TextChoices):
        MONTHLY = "monthly", "Monthly"
        DAILY = "daily", "Daily"
        NONE = "none", "No reset"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="quotas")
    # Set: the quota binds one key; null: the whole organization.
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    metric = models.CharField(max_length=16, choices=Metric.choices, default=Metric.CHAT_TOKENS)
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    limit = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "metric"],
                condition=Q(api_key__isnull=True),
                name="quota_one_per_org_metric",
            ),
            models.UniqueConstraint(fields=["api_key", "metric"], name="quota_one_per_key_metric"),
            models.CheckConstraint(condition=Q(limit__gte=0), name="quota_limit_gte_0"),
        ]

    def __str__(self) -> str:
        subject = self.api_key.prefix if self.api_key else self.organization.slug
        return f"{subject} {self.metric} {self.limit}/{self.period}"

    def clean(self) -> None:
        # A quota on another tenant's key would show that key to this organization
        # and count its use against a limit this organization never set.
        if (self.api_key is not None and self.organization_id is not None
                and self.api_key.organization_id != self.organization_id):
            raise ValidationError(
                {"api_key": "This key belongs to another organization."}, code="key_of_other_org")


class QuotaCounter(models.Model):
    """Use of one quota in one period. A new period is a new row: resets need no job."""

    quota = models.ForeignKey(Quota, on_delete=models.CASCADE, related_name="counters")
    period_start = models.DateTimeField()
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["quota", "period_start"], name="quota_counter_unique"),
            models.CheckConstraint(condition=Q(used__gte=0), name="quota_used_gte_0"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="quota_reserved_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.quota_id} from {self.period_start:%Y-%m-%d}: {self.used}+{self.reserved}"


class RedemptionCode(models.Model):
    """Credits staff hand out as a code a member redeems in the portal (billing.codes).

    Only a keyed hash of the code is kept, with a short prefix to tell codes
    apart: the code itself is shown once, to the staff member who made it.
    """

    code_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    credits = models.PositiveBigIntegerField()
    max_uses = models.PositiveIntegerField(
        default=1, help_text="How many organizations may redeem it (each at most once).")
    uses = models.PositiveIntegerField(default=0, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True, help_text="What it was given for.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+", editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(uses__lte=F("max_uses")),
                                   name="redemption_code_uses_within_max"),
            models.CheckConstraint(condition=Q(credits__gte=1) & Q(max_uses__gte=1),
                                   name="redemption_code_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.credits} credits)"


class CodeRedemption(models.Model):
    """One organization's redemption of a code, with the ledger entry that granted it."""

    code = models.ForeignKey(RedemptionCode, on_delete=models.PROTECT, related_name="redemptions")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    redeemed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["code", "organization"],
                                    name="code_redeemed_once_per_organization"),
        ]

    def __str__(self) -> str:
        return f"{self.code.prefix}… by organization {self.organization_id}"


# Money in (top-ups, Stripe's events, auto-recharge) has a module of its own.
from billing.payment_models import AutoRecharge, Payment, StripeEvent  # noqa: E402

__all__ = ["AutoRecharge", "CodeRedemption", "CreditAccount", "LedgerEntry", "Payment", "Quota",
           "QuotaCounter", "RedemptionCode", "Reservation", "StripeEvent"]
