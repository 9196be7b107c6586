"""Developer portal: the organization's webhook endpoints and their delivery attempts.

Every member reads; owners and admins register, pause, resume and delete,
send a test event and redeliver, as in the management API
(`accounts/webhooks_api.py`). Both go through the
services in `accounts/webhooks.py`, which check the target (no private
addresses) and write the audit rows.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Count, Max, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import webhooks
from accounts.api import MANAGERS
from accounts.models import WebhookDelivery, WebhookEndpoint
from accounts.new_secrets import secret_stash, secret_take
from billing.alerts import low_balance_threshold
from billing.models import CreditAccount
from portal.access import PortalMember, forbidden_page, member_view, portal_render, secret_page
from portal.forms import WebhookActiveForm, WebhookEndpointForm

# The attempts listed on an endpoint's page, newest first.
RECENT_DELIVERIES = 50


def _endpoints(member: PortalMember) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization_id=member.membership.organization_id)


def _secret_name(endpoint: WebhookEndpoint) -> str:
    return f"webhook:{endpoint.pk}"


def _balance_threshold(member: PortalMember) -> int:
    """Under what balance `balance.low` is sent (an organization with no account: the default)."""
    organization_id = member.membership.organization_id
    account = (CreditAccount.objects.filter(organization_id=organization_id).first()
               or CreditAccount(organization_id=organization_id))
    return low_balance_threshold(account)


@require_http_methods(["GET", "POST"])
@member_view()
def webhooks_page(request: HttpRequest, member: PortalMember) -> HttpResponse:
    form = WebhookEndpointForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not member.can_manage_members:
            return forbidden_page(request, member, "Only owners and admins manage webhooks.")
        if form.is_valid():
            try:
                endpoint, secret = webhooks.webhook_endpoint_create(
                    organization=member.organization, url=form.cleaned_data["url"],
                    events=form.cleaned_data["events"], actor=request.user)
            except ValueError as exc:  # UnsafeTarget: a private address, plain http, no DNS
                form.add_error("url", str(exc))
            else:
                secret_stash(request, _secret_name(endpoint), secret)
                return redirect("portal:webhook-created", endpoint_id=endpoint.pk)
    endpoints = _endpoints(member).annotate(
        delivery_count=Count("deliveries"), last_delivery_at=Max("deliveries__created_at"),
    ).order_by("-is_active", "-created_at")
    return portal_render(request, member, "portal/webhooks.html", {
        "section": "webhooks", "form": form, "endpoints": endpoints,
        "can_manage": member.can_manage_members,
        # Shown in the register form, which only those who manage webhooks get.
        "balance_threshold": (_balance_threshold(member) if member.can_manage_members
                              else None),
    }, status=400 if form.errors else 200)


@require_GET
@member_view(roles=MANAGERS)
def webhook_created(request: HttpRequest, member: PortalMember, endpoint_id: int
                    ) -> HttpResponse:
    """The signing secret, once: the page the register form redirects to."""
    endpoint = get_object_or_404(_endpoints(member), pk=endpoint_id)
    new = secret_take(request, _secret_name(endpoint))
    if new is None:  # a reload, or another session
        messages.info(request, f"The signing secret of {endpoint.url} was shown once and cannot "
                               "be shown again.")
        return redirect("portal:webhook-detail", endpoint_id=endpoint.pk)
    return secret_page(request, member, "portal/webhook_created.html", {
        "section": "webhooks", "endpoint": endpoint, "secret": new["secret"],
    })


@require_GET
@member_view()
def webhook_detail(request: HttpRequest, member: PortalMember, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_or_404(_endpoints(member).select_related("created_by"),
                                 pk=endpoint_id)
    deliveries = endpoint.deliveries.order_by("-created_at", "-pk")[:RECENT_DELIVERIES]
    labels = dict(WebhookEndpoint.Event.choices)
    context: dict[str, Any] = {
        "section": "webhooks", "endpoint": endpoint, "deliveries": deliveries,
        "can_manage": member.can_manage_members, "max_attempts": webhooks.MAX_ATTEMPTS,
        "events": [(event, labels.get(event, "")) for event in endpoint.events],
    }
    return portal_render(request, member, "portal/webhook_detail.html", context)


@require_POST
@member_view(roles=MANAGERS)
def webhook_set_active(request: HttpRequest, member: PortalMember, endpoint_id: int
                       ) -> HttpResponse:
    endpoint = get_object_or_404(_endpoints(member), pk=endpoint_id)
    form = WebhookActiveForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose to enable or disable the endpoint.")
    elif webhooks.webhook_endpoint_set_active(endpoint=endpoint,
                                              is_active=form.cleaned_data["is_active"],
                                              actor=request.user):
        state = "enabled" if endpoint.is_active else "disabled: it gets no more events"
        messages.success(request, f"{endpoint.url} is {state}.")
    else:
        messages.info(request, f"{endpoint.url} was already "
                               f"{'enabled' if endpoint.is_active else 'disabled'}.")
    return redirect("portal:webhook-detail", endpoint_id=endpoint.pk)


@require_POST
@member_view(roles=MANAGERS)
def webhook_delete(request: HttpRequest, member: PortalMember, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_or_404(_endpoints(member), pk=endpoint_id)
    url = endpoint.url
    webhooks.webhook_endpoint_delete(endpoint=endpoint, actor=request.user)
    messages.success(request, f"Deleted {url} and its delivery history.")
    return redirect("portal:webhooks")


@require_POST
@member_view(roles=MANAGERS)
def webhook_test(request: HttpRequest, member: PortalMember, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_or_404(_endpoints(member).select_related("organization"),
                                 pk=endpoint_id)
    try:
        delivery = webhooks.webhook_test_send(endpoint=endpoint, actor=request.user)
    except ValueError as exc:
        messages.error(request, f"No test event sent: {exc}.")
    else:
        messages.success(request, _sent_message("A test event", delivery))
    return redirect("portal:webhook-detail", endpoint_id=endpoint.pk)


@require_POST
@member_view(roles=MANAGERS)
def webhook_redeliver(request: HttpRequest, member: PortalMember, endpoint_id: int,
                      delivery_id: int) -> HttpResponse:
    endpoint = get_object_or_404(_endpoints(member), pk=endpoint_id)
    delivery = get_object_or_404(endpoint.deliveries.select_related("endpoint"), pk=delivery_id)
    try:
        again = webhooks.webhook_redeliver(delivery=delivery, actor=request.user)
    except ValueError as exc:
        messages.error(request, f"Not redelivered: {exc}.")
    else:
        messages.success(request, _sent_message(f"{delivery.event} (again)", again))
    return redirect("portal:webhook-detail", endpoint_id=endpoint.pk)


def _sent_message(what: str, delivery: WebhookDelivery) -> str:
    """What became of the first attempt: made already without a broker, queued with one."""
    delivery.refresh_from_db()
    if delivery.status == WebhookDelivery.Status.DELIVERED:
        return f"{what} was delivered (HTTP {delivery.last_status_code})."
    if delivery.attempts == 0:
        return f"{what} is queued; it is listed below."
    if delivery.status == WebhookDelivery.Status.PENDING:
        return f"{what} was not taken ({delivery.last_error}); it is retried with backoff."
    return f"{what} failed: {delivery.last_error}."
