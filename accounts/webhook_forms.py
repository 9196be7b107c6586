"""Forms of the portal's webhooks page: registering an endpoint, pausing or resuming it."""

from __future__ import annotations

from django import forms

from accounts.models import WebhookEndpoint


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
