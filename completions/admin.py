from django import forms
from django.contrib import admin
from django.db import transaction

from accounts.admin_audit import AuditedAdmin, AuditedForm
from completions.catalog import CAPABILITY_FIELDS, catalog_cache
from completions.models import (
    CatalogModel,
    ModelRoute,
    Provider,
    ProviderKey,
    ReconciliationFinding,
    UsageRecord,
)


class _WriteOnlyKeyForm(AuditedForm):
    """A form whose `api_key` is write-only: the stored key is never shown; blank keeps it."""

    api_key = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                              help_text="Leave blank to keep the current key.")

    def save(self, commit=True):  # type: ignore[no-untyped-def]
        obj = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            obj.set_api_key(self.cleaned_data["api_key"])
        if commit:
            obj.save()
        return obj


class ProviderForm(_WriteOnlyKeyForm):
    class Meta:
        model = Provider
        fields = ["slug", "name", "kind", "base_url", "api_version", "supports_web_search",
                  "is_active"]


@admin.register(Provider)
class ProviderAdmin(AuditedAdmin):
    form = ProviderForm
    # The key itself never reaches the audit log; that it changed does.
    audit_exclude = ("api_key",)
    list_display = ["slug", "name", "kind", "base_url", "supports_web_search", "is_active"]


class ProviderKeyForm(_WriteOnlyKeyForm):
    class Meta:
        model = ProviderKey
        fields = ["provider", "organization", "label", "weight", "requests_per_minute",
                  "is_active"]

    def clean_api_key(self) -> str:
        api_key: str = self.cleaned_data.get("api_key", "")
        if not self.instance.api_key_encrypted and not api_key:
            raise forms.ValidationError("A new key needs its secret.")
        return api_key


@admin.register(ProviderKey)
class ProviderKeyAdmin(AuditedAdmin):
    form = ProviderKeyForm
    audit_exclude = ("api_key",)
    list_display = ["provider", "label", "organization", "weight", "requests_per_minute",
                    "is_active", "created_at"]
    list_filter = ["provider", "is_active"]
    # Empty organization: one of the platform's keys; set: that organization's own.

    def save_audited(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_audited(request, obj, form, change)
        # This process reads its routes again at once; the others within CATALOG_CACHE_SECONDS.
        transaction.on_commit(catalog_cache.clear)


class RouteInline(admin.TabularInline):
    model = ModelRoute
    extra = 0


@admin.register(CatalogModel)
class CatalogModelAdmin(AuditedAdmin):
    list_display = ["model_id", "tier", "multiplier", "context_length", "supports_vision",
                    "is_active", "staff_override"]
    list_filter = ["tier", "is_active", "supports_vision"]
    search_fields = ["model_id", "name"]
    inlines = [RouteInline]

    def save_audited(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        decisions = {"tier", "multiplier", "is_active", *CAPABILITY_FIELDS}
        if change and decisions & set(form.changed_data):
            obj.staff_override = True  # a catalog sync must not undo a staff decision
        super().save_audited(request, obj, form, change)


@admin.register(ReconciliationFinding)
class ReconciliationFindingAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "organization", "provider", "model", "kind"]
    list_filter = ["kind", "provider"]
    search_fields = ["request_id"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "organization", "model", "status", "streamed",
                    "prompt_tokens", "completion_tokens", "credits", "upstream_cost_usd",
                    "latency_ms"]
    list_filter = ["status", "streamed", "cost_source", "model"]
    search_fields = ["request_id", "organization__slug", "end_user"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
