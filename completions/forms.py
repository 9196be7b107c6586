"""Forms of the developer portal's usage page."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms

from completions.models import UsageRollup


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
