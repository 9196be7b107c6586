from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import APIKey, Organization
from billing.tiers import MULTIPLIER_RANGES, Tier, multiplier_in_range
from novakit import crypto


class _EncryptedAPIKey:
    """An upstream API key kept encrypted at rest in `api_key_encrypted`."""

    api_key_encrypted: str

    def set_api_key(self, plaintext: str) -> None:
        self.api_key_encrypted = crypto.encrypt(plaintext)

    def get_api_key(self) -> str:
        return crypto.decrypt(self.api_key_encrypted)


class Provider(_EncryptedAPIKey, models.Model):
    """An upstream: OpenRouter by default, or any OpenAI-compatible base URL."""

    class Kind(models.TextChoices):
        # How each is spoken to: completions/kinds.py.
        OPENAI = "openai", "OpenAI-compatible API (OpenRouter, OpenAI, ...)"
        SELF_HOSTED = "self_hosted", "OpenAI-compatible API without a key (vLLM, Ollama, ...)"
        AZURE = "azure", "Azure OpenAI"
        ANTHROPIC = "anthropic", "Anthropic Messages API"
        BUILTIN = "builtin", "Built-in development model"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OPENAI)
    # Blank for `openrouter`: OPENROUTER_BASE_URL / OPENROUTER_API_KEY apply.
    base_url = models.URLField(blank=True)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    # Azure OpenAI only: the `api-version` its deployments are called with.
    api_version = models.CharField(max_length=32, blank=True, default="", db_default="",
                                   help_text="Azure OpenAI's api-version, e.g. 2024-10-21.")
    supports_web_search = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        if self.kind == self.Kind.AZURE and not self.api_version:
            raise ValidationError({"api_version": "An Azure OpenAI provider needs the "
                                                  "api-version its deployments take."})
        if self.kind != self.Kind.BUILTIN and self.slug != "openrouter" and not self.base_url:
            raise ValidationError({"base_url": "This kind of provider needs its base URL."})


class ProviderKey(_EncryptedAPIKey, models.Model):
    """One of a provider's API keys. A provider with active keys spreads its requests over
    them by weight (completions.routing); one without uses its own key (or the setting)."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="keys")
    # Set: an organization's own key (bring your own key), used only for its requests and
    # billed at the BYOK fee; empty: one of the platform's keys.
    organization = models.ForeignKey(Organization, null=True, blank=True,
                                     on_delete=models.CASCADE, related_name="provider_keys")
    label = models.CharField(max_length=100, help_text="How staff tell the keys apart.")
    api_key_encrypted = models.TextField(editable=False)
    weight = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="Its share of the provider's requests: a key of weight 3 gets three times "
                  "the requests of a key of weight 1.")
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The most requests it is sent in a minute, across every process; empty: "
                  "no limit but the provider's own.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "organization", "label"],
                                    name="provider_key_label_unique"),
            models.CheckConstraint(condition=models.Q(weight__gte=1),
                                   name="provider_key_weight_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} / {self.label}"


class CatalogModel(models.Model):
    model_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200, blank=True)
    owned_by = models.CharField(max_length=100, blank=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.BASIC)
    multiplier = models.DecimalField(max_digits=4, decimal_places=2, default=Decimal("1"))
    context_length = models.PositiveIntegerField(default=8192)
    supports_vision = models.BooleanField(default=False)
    # The request parameters the model accepts (OpenRouter's `supported_parameters`);
    # empty: not known, and what the client sent is forwarded as sent.
    supported_parameters = models.JSONField(default=list, blank=True)
    # A reasoning model (o1, o3, R1 ...): its budget is `max_completion_tokens`, and
    # it refuses sampling parameters.
    is_reasoning = models.BooleanField(default=False)
    # The longest answer it can give, when smaller than its context window.
    max_completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    prompt_usd_per_m = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    completion_usd_per_m = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("0")
    )
    # The rates of the tokens some providers price apart (OpenRouter's `input_cache_read`,
    # `internal_reasoning` and `image`); empty: a cached prompt token costs a prompt
    # token's price, a reasoning token a completion token's, an input image nothing more.
    cached_prompt_usd_per_m = models.DecimalField(max_digits=12, decimal_places=4, null=True,
                                                  blank=True)
    reasoning_usd_per_m = models.DecimalField(max_digits=12, decimal_places=4, null=True,
                                              blank=True)
    # Defaults in the database too (here and on the cost columns below): a process of the
    # release before, still running during a deploy, inserts rows without these columns.
    image_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"),
                                    db_default=Decimal("0"),
                                    help_text="USD per input image, beside its tokens.")
    is_development = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    # Set when staff edit tier, multiplier or active: a catalog sync leaves those alone.
    staff_override = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_id"]

    def __str__(self) -> str:
        return self.model_id

    def clean(self) -> None:
        if not multiplier_in_range(self.tier, self.multiplier):
            low, high = MULTIPLIER_RANGES[self.tier]
            raise ValidationError(
                {"multiplier": f"A {self.tier} model's multiplier must be within {low} to {high}."}
            )


class ModelRoute(models.Model):
    """One way to serve a catalog model: a provider and the model's name there, tried in order."""

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="routes")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="routes")
    upstream_model = models.CharField(max_length=200)
    priority = models.PositiveSmallIntegerField(default=0)
    # False when the provider's last model listing (catalog sync) did not include it.
    is_listed = models.BooleanField(default=True)

    class Meta:
        ordering = ["model", "priority", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["model", "provider"], name="route_one_per_provider")
        ]

    def __str__(self) -> str:
        return f"{self.model} via {self.provider} ({self.priority})"


class UsageRecord(models.Model):
    """One row per admitted request, written at settlement in the same transaction as its charge."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"
        # Its process died before settling it: recorded by the expiry job.
        INTERRUPTED = "interrupted", "Interrupted"
        # Refused at admission (402, 429, 503): held and charged nothing (completions/refusals.py).
        REFUSED = "refused", "Refused"

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    end_user = models.CharField(max_length=256, blank=True)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=64, blank=True)
    # Whose provider key served it: the platform's, or the organization's own (billed
    # at the BYOK fee, billing.pricing.byok_fee).
    key_class = models.CharField(max_length=16, default="platform", blank=True)
    multiplier = models.DecimalField(max_digits=4, decimal_places=2)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    credits = models.BigIntegerField(default=0)
    credits_breakdown = models.JSONField(default=dict)
    credits_reserved = models.BigIntegerField(default=0)
    # What the provider charged the platform for it, in USD (completions.costs): the
    # provider's own figure ("provider"), else the catalog's prices ("catalog");
    # "organization_key" when the organization's own key served it, and nothing was
    # sent upstream or nothing used ("").
    upstream_cost_usd = models.DecimalField(max_digits=16, decimal_places=10,
                                            default=Decimal("0"), db_default=Decimal("0"))
    cost_source = models.CharField(max_length=16, blank=True, default="", db_default="")
    # The rates in force when the request was priced (settings can change later):
    # credits per 1,000 tokens at 1x, before the multiplier.
    prompt_rate = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    completion_rate = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    status = models.CharField(max_length=16, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=64, blank=True)
    streamed = models.BooleanField(default=False)
    # The provider's own id for the answer (OpenRouter's generation id), for reconciliation.
    upstream_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    usage_source = models.CharField(
        max_length=16, default="upstream",
        help_text="upstream; tokenizer when estimated; clamped when the upstream reported more "
                  "than the request could use; fallback when its settlement failed"
    )
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    # When the request arrived: usage is rolled up into the window it started in.
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    # When it was settled; the rollup job looks for windows with new records by this.
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="usage_org_recent"),
            models.Index(fields=["created_at"], name="usage_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"


class ReconciliationFinding(models.Model):
    """Something the reconciliation job (completions.reconciliation) found a request's
    record and its provider's account of it to disagree on, or a record to be estimated."""

    class Kind(models.TextChoices):
        COST_DRIFT = "cost_drift", "Cost differs from the provider's"
        TOKEN_DRIFT = "token_drift", "Tokens differ from the provider's"
        ESTIMATED = "estimated", "Usage counted by the tokenizer"
        BEYOND_HOLD = "beyond_hold", "Usage reported beyond what the request could use"
        FALLBACK = "fallback", "Charged its hold: its settlement failed"

    request_id = models.CharField(max_length=64)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    provider = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # What NovaKit recorded, and what the provider says (empty when not asked).
    ours = models.JSONField(default=dict)
    theirs = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["request_id", "kind"],
                                               name="finding_once_per_request_and_kind")]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.kind}"


class UsageRollup(models.Model):
    """Usage totals of one organization's key, model and provider in one hour or day.

    Keyed by the request's start time, so a stream that settles after its
    window closed still counts in the window it started in. Rows are
    recomputed from the raw records and upserted, never incremented, so
    running the job twice (or on two workers at once) cannot double-count.
    """

    class Granularity(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    granularity = models.CharField(max_length=8, choices=Granularity.choices)
    window_start = models.DateTimeField()
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # Plain ids, not foreign keys: 0 means "no key" and keeps the unique key NULL-free.
    key_id = models.BigIntegerField(default=0)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=64, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    streamed = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    credits = models.BigIntegerField(default=0)
    upstream_cost_usd = models.DecimalField(max_digits=20, decimal_places=10,
                                            default=Decimal("0"), db_default=Decimal("0"))
    latency_p50_ms = models.PositiveIntegerField(default=0)
    latency_p95_ms = models.PositiveIntegerField(default=0)
    # Percentiles cannot be added across windows; a sum can, for exact means.
    latency_sum_ms = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["granularity", "window_start", "organization", "key_id", "model",
                        "provider"],
                name="rollup_one_row_per_window_key_model_provider",
            )
        ]
        indexes = [
            models.Index(fields=["organization", "granularity", "window_start"],
                         name="rollup_org_series"),
            models.Index(fields=["granularity", "window_start"], name="rollup_platform_series"),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.window_start:%Y-%m-%d %H:00} {self.model}"


class IdempotentRequest(models.Model):
    """A chat completion sent with an `Idempotency-Key`, and its stored answer for 24 hours."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # SHA-256 of the request body (and the stream flag): the same key with
    # another body is a client bug, answered 422.
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    request_id = models.CharField(max_length=64, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict)
    response_body = models.BinaryField(default=b"")
    streamed = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "key"], name="idempotency_key_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"
