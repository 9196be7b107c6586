import csv

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse

from accounts.admin import OrganizationAdmin as AccountsOrganizationAdmin
from accounts.admin_audit import AuditedAdmin
from accounts.forms import ReasonForm
from accounts.models import Organization
from accounts.new_secrets import secret_stash, secret_take
from billing.codes import code_create
from billing.forms import CreditChangeForm
from billing.models import (
    CreditAccount,
    LedgerEntry,
    Payment,
    Quota,
    RedemptionCode,
    Reservation,
    StripeEvent,
)
from billing.services import account_for_organization, credits_change, credits_grant
from novakit.errors import ApiError


class ReadOnlyMixin:
    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


class LedgerInline(ReadOnlyMixin, admin.TabularInline):
    model = LedgerEntry
    fields = ["created_at", "kind", "amount", "balance_after", "request_id", "reason", "actor",
              "actor_label"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    max_num = 0
    show_change_link = False


@admin.register(CreditAccount)
class CreditAccountAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["organization", "balance", "reserved", "available", "updated_at"]
    search_fields = ["organization__slug"]
    readonly_fields = ["organization", "balance", "reserved", "low_balance_threshold",
                       "updated_at"]
    inlines = [LedgerInline]
    change_form_template = "admin/billing/creditaccount/change_form.html"

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return request.user.has_perm("billing.view_creditaccount")

    def get_urls(self):  # type: ignore[no-untyped-def]
        return [
            path("<int:pk>/change-credits/", self.admin_site.admin_view(self.change_credits),
                 name="billing_creditaccount_change_credits"),
            *super().get_urls(),
        ]

    def change_credits(self, request, pk):  # type: ignore[no-untyped-def]
        """Grant or adjust credits through the billing service; a reason is mandatory."""
        if not request.user.has_perm("billing.add_ledgerentry"):
            messages.error(request, "You may not change credits.")
            return redirect(reverse("admin:billing_creditaccount_change", args=[pk]))
        account = get_object_or_404(CreditAccount, pk=pk)
        form = CreditChangeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                entry = credits_change(account=account, kind=data["kind"], amount=data["amount"],
                                       reason=data["reason"], actor=request.user,
                                       idempotency_key=data["idempotency_key"] or None)
            except (ValueError, ApiError) as exc:  # the service's refusal, shown on the form
                form.add_error("amount", str(exc))  # an ApiError's str is its message
            else:
                messages.success(request, f"{entry.kind} {entry.amount:+d}: balance "
                                          f"{entry.balance_after}")
                return redirect(reverse("admin:billing_creditaccount_change", args=[pk]))
        context = {**self.admin_site.each_context(request), "form": form, "account": account,
                   "opts": self.model._meta, "title": f"Change credits of {account.organization}"}
        return render(request, "admin/billing/change_credits.html", context)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["created_at", "account", "kind", "amount", "balance_after", "request_id",
                    "actor", "actor_label", "reason"]
    list_filter = ["kind"]
    search_fields = ["request_id", "account__organization__slug", "reason"]

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["request_id", "account", "status", "amount", "charged", "created_at",
                    "expires_at"]
    list_filter = ["status"]
    search_fields = ["request_id"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Top-ups, as Stripe's webhooks left them: nothing here is edited by hand."""

    list_display = ["created_at", "organization", "credits", "amount", "currency", "status",
                    "payment_intent_id", "paid_at"]
    list_filter = ["status"]
    search_fields = ["organization__slug", "checkout_session_id", "payment_intent_id"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["received_at", "type", "event_id", "payment", "outcome"]
    list_filter = ["type"]
    search_fields = ["event_id"]


@admin.register(Quota)
class QuotaAdmin(AuditedAdmin):
    list_display = ["organization", "api_key", "metric", "period", "limit"]
    list_filter = ["metric", "period"]
    search_fields = ["organization__slug"]


# --- organizations: what staff do to their credits ---------------------------------


class BulkGrantForm(ReasonForm):
    amount = forms.IntegerField(min_value=1)


# accounts registers the organization admin; billing's subclass replaces it to add
# the actions that touch credits, so accounts needs to know nothing of billing.
admin.site.unregister(Organization)


@admin.register(Organization)
class OrganizationAdmin(AccountsOrganizationAdmin):
    actions = ["grant_credits", *AccountsOrganizationAdmin.actions, "export_csv"]

    @admin.action(description="Grant credits to selected organizations")
    def grant_credits(self, request, queryset):  # type: ignore[no-untyped-def]
        form = self._bulk_form(request, queryset, BulkGrantForm, "Grant credits")
        if not isinstance(form, BulkGrantForm):
            return form
        # Each grant is a ledger entry naming the staff member and the reason.
        with transaction.atomic():
            for organization in queryset:
                credits_grant(account=account_for_organization(organization=organization),
                              amount=form.cleaned_data["amount"],
                              reason=form.cleaned_data["reason"], actor=request.user)
        self.message_user(request, f"Granted {form.cleaned_data['amount']} credits to "
                                   f"{queryset.count()} organization(s).", messages.SUCCESS)
        return None

    @admin.action(description="Export selected organizations as CSV")
    def export_csv(self, request, queryset):  # type: ignore[no-untyped-def]
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="organizations.csv"'
        writer = csv.writer(response)
        writer.writerow(["slug", "name", "active", "suspended_reason", "balance", "reserved",
                         "created_at"])
        for organization in queryset.select_related("credit_account"):
            account = getattr(organization, "credit_account", None)
            writer.writerow([organization.slug, organization.name, organization.is_active,
                             organization.suspended_reason,
                             account.balance if account else 0,
                             account.reserved if account else 0,
                             organization.created_at.isoformat()])
        return response


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(AuditedAdmin):
    """Codes are made here and shown once, on the page after saving; afterwards only their
    prefix. A change (expiry, uses, switching off) is audited like any admin change."""

    list_display = ["prefix", "credits", "uses", "max_uses", "expires_at", "is_active", "note",
                    "created_at"]
    list_filter = ["is_active"]
    search_fields = ["prefix", "note"]

    def get_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return ["credits", "max_uses", "expires_at", "note"]
        return ["prefix", "credits", "uses", "max_uses", "expires_at", "is_active", "note"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ["prefix", "credits", "uses"] if obj is not None else []

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new code is made (and audited) by the service, which alone sees the code.
        code, shown = code_create(credits=obj.credits, max_uses=obj.max_uses,
                                  expires_at=obj.expires_at, note=obj.note,
                                  created_by=request.user)
        for name in ("pk", "code_hash", "prefix", "uses", "created_by_id", "created_at"):
            setattr(obj, name, getattr(code, name))
        obj._state.adding = False
        # Post/redirect/get, as for API keys (accounts.new_secrets): reloading the page
        # that shows the code repeats a GET, never the POST that made a code.
        secret_stash(request, _shown_name(code.pk), shown)

    def response_add(self, request, obj, post_url_continue=None):  # type: ignore[no-untyped-def]
        return redirect("admin:billing_redemptioncode_created", obj.pk)

    def get_urls(self):  # type: ignore[no-untyped-def]
        return [
            path("<int:pk>/created/", self.admin_site.admin_view(self.created),
                 name="billing_redemptioncode_created"),
            *super().get_urls(),
        ]

    def created(self, request, pk):  # type: ignore[no-untyped-def]
        """The one page a new code appears on; a reload finds it taken."""
        code = get_object_or_404(RedemptionCode, pk=pk)
        taken = secret_take(request, _shown_name(code.pk))
        # admin_view already marks it never cached (Cache-Control: no-store, ...).
        return render(request, "admin/billing/redemptioncode/created.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta,
            "title": "Redemption code created", "code": code,
            "shown": taken["secret"] if taken else None,
        })


def _shown_name(code_id: int) -> str:
    return f"redemption-code:{code_id}"
