from django.contrib import admin, messages
from django.db import transaction
from django.shortcuts import render
from django.urls import reverse

from accounts.admin_audit import AuditedAdmin
from accounts.forms import ReasonForm
from accounts.models import APIKey, AuditEvent, Membership, Organization, WebhookEndpoint
from accounts.services import api_key_revoke, organization_set_active


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    list_display = ["slug", "name", "is_active", "suspended_reason", "requests_per_minute",
                    "tokens_per_minute", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]
    # billing/admin.py registers this admin's subclass, which adds granting credits
    # and the CSV export with balances: both are billing's.
    actions = ["suspend"]

    def audit_organization_id(self, obj: Organization) -> int | None:
        return obj.pk

    def view_on_site(self, obj: Organization) -> str:
        # "View on site" opens the staff page of the organization: everything about it,
        # with its actions.
        return reverse("staff-organization", args=[obj.pk])

    def save_audited(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        # Suspending or reinstating goes through the service, which also makes
        # every process drop its cached keys of this organization.
        if change and "is_active" in form.changed_data:
            is_active, change_reason = obj.is_active, form.cleaned_data["change_reason"]
            # Reinstating: the form still shows the suspension's reason, which is not
            # why the organization is back.
            reason = change_reason if is_active else (obj.suspended_reason or change_reason)
            obj.is_active = not is_active
            super().save_audited(request, obj, form, change)
            organization_set_active(organization=obj, active=is_active, reason=reason,
                                    actor=request.user)
        else:
            super().save_audited(request, obj, form, change)

    def _bulk_form(self, request, queryset, form_class, title):  # type: ignore[no-untyped-def]
        form = form_class(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            return form
        context = {**self.admin_site.each_context(request), "title": title, "form": form,
                   "organizations": queryset, "action": request.POST.get("action"),
                   "opts": self.model._meta}
        return render(request, "admin/accounts/organization/bulk_action.html", context)

    @admin.action(description="Suspend selected organizations")
    def suspend(self, request, queryset):  # type: ignore[no-untyped-def]
        form = self._bulk_form(request, queryset, ReasonForm, "Suspend organizations")
        if not isinstance(form, ReasonForm):
            return form
        with transaction.atomic():
            for organization in queryset.filter(is_active=True):
                organization_set_active(organization=organization, active=False,
                                        reason=form.cleaned_data["reason"], actor=request.user)
        self.message_user(request, f"Suspended {queryset.count()} organization(s).",
                          messages.SUCCESS)
        return None


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "organization__slug"]


@admin.register(APIKey)
class APIKeyAdmin(AuditedAdmin):
    # Never the hash (nor, of course, the secret, which is not stored).
    list_display = ["prefix", "name", "organization", "scopes", "created_at", "last_used_at",
                    "expires_at", "revoked_at"]
    list_filter = ["organization"]
    search_fields = ["prefix", "name", "organization__slug"]
    exclude = ["key_hash"]
    readonly_fields = ["prefix", "organization", "created_by", "created_at", "last_used_at",
                       "revoked_at"]
    actions = ["revoke_selected"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # keys are created where their secret can be shown once: the portal or CLI

    def save_audited(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        from accounts.services import api_key_update

        changes = {name: form.cleaned_data[name] for name in form.changed_data
                   if name != "change_reason"}
        original = APIKey.objects.get(pk=obj.pk)
        api_key_update(key=original, changes=changes, actor=request.user)

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request, queryset):  # type: ignore[no-untyped-def]
        revoked = sum(
            api_key_revoke(key=key, actor=request.user, reason="revoked in admin")
            for key in queryset.select_related("organization")
        )
        self.message_user(request, f"Revoked {revoked} key(s).")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "organization", "events", "is_active", "created_at"]
    list_filter = ["is_active"]
    exclude = ["secret_encrypted"]
    # Read-only: pausing and deleting go through the webhook services (portal, API),
    # which write the audit rows; an admin edit here would skip them.
    readonly_fields = ["organization", "url", "events", "is_active", "created_by",
                       "created_at"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "action", "target", "organization", "actor", "actor_label",
                    "reason"]
    list_filter = ["action"]
    search_fields = ["target", "reason", "organization__slug"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
