"""The sign-in form (the portal's sign-in page and the sign-in throttle's lockout page render
it), and the reason staff give for an action that leaves an audit row."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm


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


class ReasonForm(forms.Form):
    """Why staff are doing what they do: recorded in the audit row with their name."""

    reason = forms.CharField(max_length=500, widget=forms.TextInput(attrs={"size": 60}))
