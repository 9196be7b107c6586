from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class Organization(models.Model):
    """A tenant. Everything billable or secret belongs to exactly one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    suspended_reason = models.TextField(blank=True)
    # Organization-wide rate limits; null means the platform default applies.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        DEVELOPER = "developer", "Developer"
        VIEWER = "viewer", "Viewer"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class APIKey(models.Model):
    """An API key. The secret itself is never stored: only its HMAC and a prefix.

    The prefix (`sk_` plus nine characters of the secret) names the key in lists
    and finds its row; the HMAC-SHA256 of the whole secret proves possession.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    # Empty list: every catalog model is allowed.
    allowed_models = models.JSONField(default=list, blank=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None and self.revoked_at <= timezone.now()

    def state(self, now: datetime) -> str:
        """active, expired, rotating (revoked at the end of its grace period) or revoked."""
        if self.revoked_at is not None:
            return "revoked" if self.revoked_at <= now else "rotating"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """Refuses bulk edits and deletes, which bypass `AuditEvent.save()` and `.delete()`.

    The one update allowed is Django's SET_NULL when the actor's user is
    deleted: the event stays, naming no one.
    """

    def update(self, **kwargs):  # type: ignore[no-untyped-def]
        if not kwargs or set(kwargs) - {"actor", "actor_id"} or any(kwargs.values()):
            raise ValueError("audit events are append-only")
        return super().update(**kwargs)

    def delete(self):  # type: ignore[no-untyped-def]
        raise ValueError("audit events are append-only")

    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_update(self, objs, fields, batch_size=None):  # type: ignore[no-untyped-def]
        raise ValueError("audit events are append-only")


class AuditEvent(models.Model):
    """Who changed what, when and why. Written in the same transaction as the change."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # For changes made by a command, a task or an API key rather than a person.
    actor_label = models.CharField(max_length=100, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.pk is not None:
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("audit events are append-only")


class WebhookEndpoint(models.Model):
    """An HTTPS address an organization wants told about budget and key events."""

    class Event(models.TextChoices):
        BALANCE_LOW = "balance.low", "Balance under its threshold"
        QUOTA_80 = "quota.80", "Quota 80 % used"
        QUOTA_100 = "quota.100", "Quota used up"
        KEY_REVOKED = "key.revoked", "API key revoked"
        KEY_EXPIRING = "key.expiring", "API key expires within 7 days"
        AUTO_RECHARGE_FAILED = "auto_recharge.failed", "Auto-recharge failed and was turned off"
        # Sent to the staff organization only (STAFF_ORGANIZATION_SLUG).
        CATALOG_UNCOVERED = ("catalog.uncovered",
                             "Models whose multiplier no longer covers their cost (staff)")

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=500)
    # Encrypted at rest; needed in clear to sign each delivery.
    secret_encrypted = models.TextField(editable=False)
    events = models.JSONField(default=list)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField(max_length=32)
    # What makes the event happen once: e.g. a quota's period and threshold.
    event_key = models.CharField(max_length=200)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # When the due job (accounts.webhooks.webhook_retries_due) sends the next attempt, or a
    # lost first one; null once the delivery succeeded or failed for good.
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_key"], name="webhook_event_once")
        ]
        indexes = [
            # The due job's query, every few seconds: only pending rows are in the index.
            models.Index(fields=["next_attempt_at"], name="webhook_pending_due",
                         condition=models.Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint_id} ({self.status})"
