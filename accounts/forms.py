"""Forms of the developer portal's account pages: sign-up, sign-in, API keys, members."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from accounts.models import APIKey, Membership
from accounts.scopes import ALL_SCOPES, DEFAULT_SCOPES, SCOPE_DESCRIPTIONS
from billing.models import Quota
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


class EmailAuthenticationForm(AuthenticationForm):
    """Sign in with an email address (portal accounts' usernames are their emails) or a username."""

    username = forms.CharField(
        label="Email or username", max_length=254,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}),
    )

    def clean(self) -> dict[str, Any]:
        login = (self.cleaned_data.get("username") or "").strip()
        if "@" in login:
            users = get_user_model().objects
            if not users.filter(username=login).exists():
                match = users.filter(email__iexact=login).order_by("pk").first()
                if match is not None:
                    self.cleaned_data["username"] = match.get_username()
        return super().clean()


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
    credit_cap = forms.IntegerField(**column_bounds(Quota, "limit", minimum=0), required=False,
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
        """The cleaned data as `api_key_create` takes it (the credit cap apart)."""
        data = self.cleaned_data
        day = data.get("expires_on")
        return {
            "name": data["name"],
            "scopes": data["scopes"],
            "allowed_models": data.get("allowed_models") or [],
            "requests_per_minute": data.get("requests_per_minute"),
            "tokens_per_minute": data.get("tokens_per_minute"),
            "max_concurrent_requests": data.get("max_concurrent_requests"),
            "expires_at": dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) if day else None,
        }


class RotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(choices=GRACE_CHOICES, coerce=int, initial=3600,
                                           label="Old key keeps working for")


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)
