"""The forms staff change credits and quotas with: the admin's pages and the staff
organization page (portal/views/staff_organization.py) share them."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from accounts.models import APIKey, Organization
from billing.models import LedgerEntry, Quota


class CreditChangeForm(forms.Form):
    kind = forms.ChoiceField(choices=[
        (LedgerEntry.Kind.GRANT, "Grant (add credits)"),
        (LedgerEntry.Kind.PURCHASE, "Purchase (add credits)"),
        (LedgerEntry.Kind.ADJUSTMENT, "Adjustment (signed)"),
        (LedgerEntry.Kind.REFUND, "Refund (add credits)"),
    ])
    amount = forms.IntegerField()
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=True)
    # One per rendered form: a second submission of the same page (a double click,
    # a resent POST) is the same ledger entry, not another one.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("idempotency_key", f"staff-{uuid.uuid4().hex}")


class QuotaForm(forms.Form):
    """Set an organization's quota, or one of its keys'; an empty limit removes it."""

    api_key = forms.ModelChoiceField(queryset=APIKey.objects.none(), required=False,
                                     empty_label="The whole organization", label="Applies to")
    metric = forms.ChoiceField(choices=Quota.Metric.choices)
    period = forms.ChoiceField(choices=Quota.Period.choices)
    limit = forms.IntegerField(min_value=0, required=False,
                               help_text="Empty removes the quota.")
    reason = forms.CharField(max_length=500)

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only this organization's keys can be chosen (billing.models.Quota.clean).
        self.fields["api_key"].queryset = APIKey.objects.filter(  # type: ignore[attr-defined]
            organization=organization, revoked_at__isnull=True).order_by("name")


class RedeemCodeForm(forms.Form):
    code = forms.CharField(max_length=64, label="Redemption code", widget=forms.TextInput(
        attrs={"autocomplete": "off", "placeholder": "NOVA-XXXX-XXXX-XXXX-XXXX"}))


class TopupForm(forms.Form):
    """How much to buy, in USD; billing.topups checks the bounds and the cents."""

    amount = forms.CharField(max_length=12, label="Amount (USD)", widget=forms.TextInput(
        attrs={"inputmode": "decimal", "autocomplete": "off", "placeholder": "20"}))
    save_card = forms.BooleanField(required=False, label="Save the card for auto-recharge")


class AutoRechargeForm(forms.Form):
    """When the balance falls below `threshold` credits, buy `amount`, at most `monthly_cap`."""

    enabled = forms.BooleanField(required=False, label="Recharge automatically")
    threshold = forms.IntegerField(min_value=1, label="When the balance falls below (credits)")
    amount = forms.DecimalField(min_value=Decimal("0.01"), decimal_places=2, max_digits=9,
                                label="Buy (USD)")
    monthly_cap = forms.DecimalField(min_value=Decimal("0.01"), decimal_places=2, max_digits=9,
                                     label="At most, per month (USD)")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        amount, cap = data.get("amount"), data.get("monthly_cap")
        if amount is not None:
            low, high = settings.TOPUP_MIN_USD, settings.TOPUP_MAX_USD
            if not low <= amount <= high:
                self.add_error("amount", f"A top-up is between {low} and {high} USD.")
            if cap is not None and cap < amount:
                self.add_error("monthly_cap", "The monthly cap must allow one recharge.")
        return data
