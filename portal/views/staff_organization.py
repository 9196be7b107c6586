"""The staff page of one organization (/staff/organizations/<id>/): everything about it on
one page, and what staff do to it as forms on that page.

Each action goes through the service the admin's actions use (credits_change,
quota_set, organization_set_active), needs the same model permission, leaves
the same audit row, and answers with a redirect back (post/redirect/get).
Every list is bounded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.forms import ReasonForm
from accounts.models import APIKey, AuditEvent, Membership, Organization, WebhookDelivery
from accounts.services import organization_set_active
from billing import selectors as billing_selectors
from billing.forms import CreditChangeForm, QuotaForm
from billing.services import account_for_organization, credits_change, quota_set
from completions import selectors
from novakit.errors import ApiError
from portal.views.staff import staff_context

LEDGER_ROWS = 20
REQUEST_ROWS = 20
AUDIT_ROWS = 30
DELIVERY_ROWS = 10
# Failed requests are looked for this far back, so the page reads a bounded range.
ERRORS_SINCE = dt.timedelta(days=7)


def _actor(request: HttpRequest) -> AbstractBaseUser:
    # staff_member_required let only a signed-in staff member this far.
    return cast(AbstractBaseUser, request.user)


def _credits(request: HttpRequest, organization: Organization, form: forms.Form) -> str:
    data = form.cleaned_data
    entry = credits_change(account=account_for_organization(organization=organization),
                           kind=data["kind"], amount=data["amount"], reason=data["reason"],
                           actor=_actor(request), idempotency_key=data["idempotency_key"] or None)
    return f"{entry.kind} {entry.amount:+d}: balance {entry.balance_after}"


def _quota(request: HttpRequest, organization: Organization, form: forms.Form) -> str:
    data = form.cleaned_data
    key: APIKey | None = data["api_key"]
    quota_set(organization=organization, api_key_id=key.pk if key else None,
              limit=data["limit"], metric=data["metric"], period=data["period"],
              actor=_actor(request), reason=data["reason"])
    subject = f"key {key.prefix}" if key else "the organization"
    limit = "removed" if data["limit"] is None else f"{data['limit']:,} per {data['period']}"
    return f"{data['metric']} quota of {subject}: {limit}"


def _activity(active: bool) -> Callable[[HttpRequest, Organization, forms.Form], str]:
    def change(request: HttpRequest, organization: Organization, form: forms.Form) -> str:
        if organization.is_active == active:  # a second submission of the same page
            raise ValueError("It is already " + ("active." if active else "suspended."))
        organization_set_active(organization=organization, active=active,
                                reason=form.cleaned_data["reason"], actor=_actor(request))
        return "Reinstated." if active else "Suspended: its keys are refused from now on."
    return change


# action name -> (form class, permission it needs, what it does)
ACTIONS: dict[str, tuple[type[forms.Form], str, Callable[..., str]]] = {
    "credits": (CreditChangeForm, "billing.add_ledgerentry", _credits),
    "quota": (QuotaForm, "billing.change_quota", _quota),
    "suspend": (ReasonForm, "accounts.change_organization", _activity(False)),
    "reinstate": (ReasonForm, "accounts.change_organization", _activity(True)),
}


def _form(action: str, organization: Organization, data: Any = None) -> forms.Form:
    form_class = ACTIONS[action][0]
    kwargs: dict[str, Any] = {"prefix": action}
    if form_class is QuotaForm:
        kwargs["organization"] = organization
    return form_class(data, **kwargs)


def _page(request: HttpRequest, organization: Organization, forms_by_action: dict[str, Any],
          status: int = 200) -> HttpResponse:
    pk = organization.pk
    now = timezone.now()
    context = {
        **staff_context(request),
        "title": f"{organization.name} ({organization.slug})",
        "organization": organization,
        "summary": billing_selectors.credit_summary(organization_id=pk),
        "ledger": billing_selectors.ledger_entries(organization_id=pk)
        .select_related("actor")[:LEDGER_ROWS],
        "open_reservations": billing_selectors.open_reservations(organization_id=pk)[:10],
        "keys": [(key, key.state(now)) for key in APIKey.objects.filter(
            organization=organization).order_by("revoked_at", "-created_at")[:50]],
        "members": Membership.objects.filter(organization=organization)
        .select_related("user").order_by("role", "user__username"),
        "recent": selectors.recent_usage_records(organization_id=pk, limit=REQUEST_ROWS),
        "failed": selectors.recent_usage_records(organization_id=pk, limit=REQUEST_ROWS,
                                                 failed_since=now - ERRORS_SINCE),
        "errors_since_days": ERRORS_SINCE.days,
        "endpoints": organization.webhook_endpoints.order_by("-created_at"),
        "deliveries": WebhookDelivery.objects.filter(endpoint__organization=organization)
        .select_related("endpoint").order_by("-created_at")[:DELIVERY_ROWS],
        "audit": AuditEvent.objects.filter(organization=organization)
        .select_related("actor").order_by("-created_at", "-pk")[:AUDIT_ROWS],
        **{f"{action}_form": form for action, form in forms_by_action.items()},
    }
    return render(request, "staff/organization.html", context, status=status)


@staff_member_required
@require_http_methods(["GET", "POST"])
def organization_page(request: HttpRequest, organization_id: int) -> HttpResponse:
    organization = get_object_or_404(Organization, pk=organization_id)
    forms_by_action = {action: _form(action, organization) for action in ACTIONS}
    if request.method == "GET":
        return _page(request, organization, forms_by_action)
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        messages.error(request, "Unknown action.")
        return _page(request, organization, forms_by_action, status=400)
    _, permission, perform = ACTIONS[action]
    if not request.user.has_perm(permission):
        messages.error(request, "You may not do this.")
        return _page(request, organization, forms_by_action, status=403)
    form = forms_by_action[action] = _form(action, organization, request.POST)
    if form.is_valid():
        try:
            done = perform(request, organization, form)
        except ValidationError as exc:  # the model's rule, e.g. a key of another organization
            for message in exc.messages:
                form.add_error(None, message)
        except (ValueError, ApiError) as exc:  # the service's refusal
            form.add_error(None, str(exc))  # an ApiError's str is its message
        else:
            messages.success(request, done)
            return redirect(reverse("staff-organization", args=[organization.pk]))
    return _page(request, organization, forms_by_action, status=400)
