"""Staff edits in the Django admin leave an audit row: who, what, before and after, when, why.

`AuditedAdmin` adds a mandatory "reason for this change" field to the change
form and records every changed field, in the same transaction as the save.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models, transaction
from django.http import HttpRequest

from accounts.services import audit_record


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return str(value)
    return value


class AuditedForm(forms.ModelForm):
    change_reason = forms.CharField(
        label="Reason for this change", max_length=500,
        help_text="Recorded in the audit log with your name.",
        widget=forms.TextInput(attrs={"size": 60}),
    )


class AuditedAdmin(admin.ModelAdmin):
    form = AuditedForm
    # Fields never written to the audit row (secrets, derived values).
    audit_exclude: tuple[str, ...] = ()

    def audit_target(self, obj: models.Model) -> str:
        return f"{obj._meta.model_name} {obj}"

    def audit_organization_id(self, obj: models.Model) -> int | None:
        return getattr(obj, "organization_id", None)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        names = [name for _, options in fieldsets for name in options["fields"]]
        if "change_reason" not in names:
            fieldsets = [*fieldsets, ("Audit", {"fields": ["change_reason"]})]
        return fieldsets

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        edited = [name for name in form.changed_data if name != "change_reason"]
        shown = [name for name in edited if name not in self.audit_exclude]
        # A secret that changed is recorded as changed, never by value.
        hidden = {name: "(changed)" for name in edited if name in self.audit_exclude}
        before = {}
        if change and obj.pk:
            original = type(obj).objects.get(pk=obj.pk)
            before = {name: _plain(getattr(original, name, None)) for name in shown}
        with transaction.atomic():
            self.save_audited(request, obj, form, change)
            after = {name: _plain(getattr(obj, name, None)) for name in shown}
            # A form can call a field changed whose value is the same (JSON spacing).
            for name in [name for name in shown if before.get(name, object()) == after[name]]:
                before.pop(name)
                after.pop(name)
            audit_record(
                action=f"admin.{obj._meta.model_name}.{'change' if change else 'add'}",
                actor=request.user,
                organization_id=self.audit_organization_id(obj),
                target=self.audit_target(obj),
                before=before or None,
                after={**after, **hidden},
                reason=form.cleaned_data.get("change_reason", ""),
            )

    def save_audited(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
