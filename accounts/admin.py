from django.contrib import admin

from accounts.models import APIKey, AuditEvent, Membership, Organization
from accounts.services import api_key_revoke


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "requests_per_minute", "tokens_per_minute",
                    "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "organization__slug"]


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
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

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request, queryset):  # type: ignore[no-untyped-def]
        revoked = sum(
            api_key_revoke(key=key, actor=request.user, reason="revoked in admin")
            for key in queryset.select_related("organization")
        )
        self.message_user(request, f"Revoked {revoked} key(s).")


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
