"""Forms of the developer portal's pages: sign-up, API keys, members, webhooks, usage.

The sign-in form is accounts' (accounts/forms.py): the admin's sign-in
throttle renders it too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import APIKey, Membership, WebhookEndpoint
from accounts.scopes import ALL_SCOPES, DEFAULT_SCOPES, SCOPE_DESCRIPTIONS
from billing.key_caps import CREDIT_CAP_BOUNDS
from completions.models import Provider, UsageRollup
from novakit.inputs import column_bounds

SCOPE_CHOICES = [(scope, f"{scope} — {SCOPE_DESCRIPTIONS[scope]}") for scope in ALL_SCOPES]
# Grace periods offered when rotating a key: how long the old secret keeps working.
GRACE_CHOICES = [
    (0, "Stop the old key now"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
]


class SignUpForm(forms.Form):
    email = forms.EmailField(max_length=150)
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters, not a common password, not only digits.",
    )
    organization = forms.CharField(
        label="Organization name", max_length=200,
        help_text="Your team or company; you can invite others later.",
    )

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        users = get_user_model().objects
        if users.filter(email__iexact=email).exists() or users.filter(username=email).exists():
            raise forms.ValidationError("An account with this email exists: sign in instead.")
        return email

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            user = get_user_model()(username=cleaned.get("email", ""),
                                    email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password, user)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


class APIKeyForm(forms.Form):
    name = forms.CharField(max_length=100, initial="default")
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES, initial=list(DEFAULT_SCOPES), widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do. Give it only what it needs.",
    )
    # Bounded as the management API bounds them: by what their columns hold.
    requests_per_minute = forms.IntegerField(
        **column_bounds(APIKey, "requests_per_minute", minimum=1), required=False,
        label="Requests per minute")
    tokens_per_minute = forms.IntegerField(
        **column_bounds(APIKey, "tokens_per_minute", minimum=1), required=False,
        label="Tokens per minute")
    max_concurrent_requests = forms.IntegerField(
        **column_bounds(APIKey, "max_concurrent_requests", minimum=1), required=False,
        label="Max concurrent requests")
    credit_cap = forms.IntegerField(**CREDIT_CAP_BOUNDS, required=False,
                                    label="Credit cap per month")
    allowed_models = forms.MultipleChoiceField(
        choices=(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every model in the catalog.",
    )
    expires_on = forms.DateField(
        required=False, label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The key stops working at 00:00 UTC that day. Empty: never.",
    )

    def __init__(self, *args: Any, model_ids: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["allowed_models"].choices = [(model, model) for model in model_ids]

    def clean_expires_on(self) -> dt.date | None:
        day = self.cleaned_data.get("expires_on")
        if day is not None and day <= timezone.now().astimezone(dt.UTC).date():
            raise forms.ValidationError("Pick a day after today.")
        return day

    def service_arguments(self) -> dict[str, Any]:
        """The cleaned data as `api_key_create_with_cap` takes it."""
        return {"scopes": self.cleaned_data["scopes"], **self._settings()}

    def _settings(self) -> dict[str, Any]:
        """The settings besides scopes, by the names the key services give them."""
        data = self.cleaned_data
        day = data.get("expires_on")
        return {
            "name": data["name"],
            "allowed_models": data.get("allowed_models") or [],
            "requests_per_minute": data.get("requests_per_minute"),
            "tokens_per_minute": data.get("tokens_per_minute"),
            "max_concurrent_requests": data.get("max_concurrent_requests"),
            "expires_at": dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) if day else None,
            "credit_cap": data.get("credit_cap"),
        }


# The key forms' fields that the key services name otherwise.
_SERVICE_NAMES = {"expires_on": "expires_at"}


class APIKeyEditForm(APIKeyForm):
    """A key's settings, prefilled; only what the member changed is sent to the service.

    So an unchanged field is never rewritten: a resubmitted form changes nothing,
    and an expiry set through the API at another time of day is not moved to
    midnight because the form shows days. Scopes are not edited here.
    """

    scopes = None  # type: ignore[assignment]

    def __init__(self, *args: Any, key: APIKey, credit_cap: int | None, model_ids: list[str],
                 **kwargs: Any) -> None:
        expires_on = key.expires_at.astimezone(dt.UTC).date() if key.expires_at else None
        initial = {
            "name": key.name, "requests_per_minute": key.requests_per_minute,
            "tokens_per_minute": key.tokens_per_minute,
            "max_concurrent_requests": key.max_concurrent_requests, "credit_cap": credit_cap,
            "allowed_models": list(key.allowed_models), "expires_on": expires_on,
        }
        # A model the key allows that left the catalog stays a choice, so saving keeps it.
        kept = sorted(set(key.allowed_models) - set(model_ids))
        super().__init__(*args, initial=initial, model_ids=model_ids, **kwargs)
        field = self.fields["allowed_models"]
        field.choices = [*field.choices, *((m, f"{m} (not in the catalog)") for m in kept)]

    def clean_expires_on(self) -> dt.date | None:
        if "expires_on" not in self.changed_data:  # an expiry already set may be today's
            return self.initial["expires_on"]
        return super().clean_expires_on()

    def changes(self) -> dict[str, Any]:
        """The changed fields as `api_key_update_with_cap` takes them (empty: nothing to do)."""
        settings = self._settings()
        names = (_SERVICE_NAMES.get(field, field) for field in self.changed_data)
        return {name: settings[name] for name in names}


class RotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(choices=GRACE_CHOICES, coerce=int, initial=3600,
                                           label="Old key keeps working for")


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


# --- webhooks ---------------------------------------------------------------------------


class WebhookEndpointForm(forms.Form):
    url = forms.URLField(
        label="Endpoint URL", max_length=500, assume_scheme="https",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/novakit-webhooks",
                                     "autocomplete": "off"}),
        help_text="An https address reachable from the internet; private addresses are refused.",
    )
    events = forms.MultipleChoiceField(
        choices=[(value, f"{value} — {label}") for value, label in WebhookEndpoint.Event.choices],
        widget=forms.CheckboxSelectMultiple, label="Events",
        help_text="What this endpoint is told about.",
    )


class WebhookActiveForm(forms.Form):
    is_active = forms.TypedChoiceField(choices=[("1", "Enable"), ("0", "Disable")],
                                       coerce=lambda value: value == "1")


# --- usage ------------------------------------------------------------------------------


class UsageFilterForm(forms.Form):
    granularity = forms.ChoiceField(choices=UsageRollup.Granularity.choices, initial="day",
                                    required=False)
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                            label="From")
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                          label="To (inclusive)")
    key_id = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Key")
    model = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, key_choices: list[tuple[int, str]], model_ids: list[str],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["key_id"].choices = [("", "All keys"), *key_choices]
        self.fields["model"].choices = [("", "All models"), *((m, m) for m in model_ids)]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            self.add_error("end", "The end is before the start.")
        cleaned["granularity"] = cleaned.get("granularity") or "day"
        return cleaned

    def bounds(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The chosen days as moments: from the first one's midnight to the last one's end (UTC)."""
        start, end = self.cleaned_data.get("start"), self.cleaned_data.get("end")
        return (
            dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC) if start else None,
            # Inside the last hour of the day: the selector rounds it up to the day's end.
            dt.datetime.combine(end, dt.time(23, 30), tzinfo=dt.UTC) if end else None,
        )


class OwnProviderKeyForm(forms.Form):
    provider = forms.ModelChoiceField(queryset=Provider.objects.none(), empty_label=None)
    label = forms.CharField(max_length=100, help_text="How your team tells its keys apart.")
    secret = forms.CharField(max_length=500, strip=True, label="API key",
                             widget=forms.PasswordInput(render_value=False),
                             help_text="Encrypted at rest and never shown again.")

    def __init__(self, *args: Any, providers: QuerySet[Provider], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["provider"].queryset = providers  # type: ignore[attr-defined]
