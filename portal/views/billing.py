"""Developer portal: credits, quotas, open reservations and the ledger (with a CSV export)."""

from __future__ import annotations

import csv
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.api import MANAGERS
from billing import recharge, selectors, topups
from billing.codes import CodeRefused, code_redeem
from billing.forms import AutoRechargeForm, RedeemCodeForm, TopupForm
from billing.models import AutoRecharge, Payment
from portal.access import PortalMember, member_view, portal_render

LEDGER_PAGE_SIZE = 25
CSV_COLUMNS = ["created_at", "kind", "amount", "balance_after", "request_id", "api_key_prefix",
               "reason"]


@require_GET
@member_view()
def billing(request: HttpRequest, member: PortalMember) -> HttpResponse:
    organization_id = member.membership.organization_id
    summary = selectors.credit_summary(organization_id=organization_id)
    for quota in summary["quotas"]:
        spent = quota["used"] + quota["reserved"]
        quota["percent"] = min(100, round(100 * spent / quota["limit"])) if quota["limit"] else 100
    reservations = selectors.open_reservations(organization_id=organization_id).select_related(
        "api_key")
    entries = selectors.ledger_entries(organization_id=organization_id).select_related("api_key")
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    return portal_render(request, member, "portal/billing.html", {
        "section": "billing",
        "summary": summary,
        "reservations": reservations[:50],
        "reservation_count": reservations.count(),
        "page": page,
        "redeem_form": RedeemCodeForm() if member.role in MANAGERS else None,
        "topup_form": TopupForm() if member.role in MANAGERS and topups.topups_enabled()
        else None,
        "topup": {"min": settings.TOPUP_MIN_USD, "max": settings.TOPUP_MAX_USD,
                  "credit_price": settings.CREDIT_PRICE_USD,
                  "credits_per_usd": topups.credits_for(Decimal(1))},
        "payments": selectors.payments(organization_id=organization_id)[:20],
        **_auto_recharge_context(member),
        "cancelled": request.GET.get("topup") == "cancelled",
    })


@require_POST
@member_view(roles=MANAGERS)
def topup_start_view(request: HttpRequest, member: PortalMember) -> HttpResponse:
    """Open a Stripe Checkout for the amount asked and send the buyer to it."""
    form = TopupForm(request.POST)
    back = request.build_absolute_uri(reverse("portal:topup-return"))
    try:
        if not form.is_valid():
            raise topups.TopupRefused("Enter an amount in US dollars.")
        _, checkout_url = topups.topup_start(
            organization=member.organization, user=member.membership.user,
            amount_usd=topups.topup_amount(form.cleaned_data["amount"]),
            save_card=form.cleaned_data["save_card"],
            success_url=f"{back}?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=request.build_absolute_uri(reverse("portal:billing")) + "?topup=cancelled")
    except topups.TopupRefused as refused:
        messages.error(request, str(refused))
        return redirect("portal:billing")
    return redirect(checkout_url)


def _auto_recharge_context(member: PortalMember) -> dict[str, object]:
    setup = AutoRecharge.objects.filter(
        organization_id=member.membership.organization_id).first()
    form = None
    if setup is not None and member.role in MANAGERS:
        form = AutoRechargeForm(initial={
            "enabled": setup.enabled, "threshold": setup.threshold or None,
            "amount": setup.amount_major if setup.amount else None,
            "monthly_cap": setup.monthly_cap_major if setup.monthly_cap else None})
    return {"auto_recharge": setup, "auto_recharge_form": form}


@require_POST
@member_view(roles=MANAGERS)
def auto_recharge_update(request: HttpRequest, member: PortalMember) -> HttpResponse:
    if not AutoRecharge.objects.filter(organization_id=member.membership.organization_id
                                       ).exists():
        messages.error(request, "Save a card first: tick \"Save the card\" when buying credits.")
        return redirect("portal:billing")
    form = AutoRechargeForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(str(error) for errors in form.errors.values() for error in errors)
        messages.error(request, f"Auto-recharge was not changed: {errors}")
        return redirect("portal:billing")
    data = form.cleaned_data
    recharge.auto_recharge_set(
        organization_id=member.membership.organization_id, enabled=data["enabled"],
        threshold=data["threshold"], amount_usd=data["amount"],
        monthly_cap_usd=data["monthly_cap"], actor=member.membership.user)
    messages.success(request, "Auto-recharge is on." if data["enabled"]
                     else "Auto-recharge is off.")
    return redirect("portal:billing")


@require_GET
@member_view()
def topup_return(request: HttpRequest, member: PortalMember) -> HttpResponse:
    """Where Stripe sends the buyer back: on to the payment's own page (of this
    organization's payments only)."""
    payment = Payment.objects.filter(organization_id=member.membership.organization_id,
                                     checkout_session_id=request.GET.get("session_id") or None
                                     ).first()
    if payment is None:
        messages.error(request, "That payment does not belong to this organization; its "
                                "purchases are listed below.")
        return redirect("portal:billing")
    return redirect("portal:topup", payment_id=payment.pk)


@require_GET
@member_view()
def topup_receipt(request: HttpRequest, member: PortalMember, payment_id: int) -> HttpResponse:
    """A top-up's page: waiting for Stripe's word while pending, its receipt once paid."""
    payment = get_object_or_404(Payment.objects.select_related("entry", "bought_by"),
                                pk=payment_id, organization_id=member.membership.organization_id)
    return portal_render(request, member, "portal/topup.html", {
        "section": "billing",
        "payment": payment,
        "receipt": topups.receipt_amounts(payment),
        "balance": selectors.credit_summary(
            organization_id=payment.organization_id)["balance"],
    })


@require_POST
@member_view(roles=MANAGERS)
def redeem_code(request: HttpRequest, member: PortalMember) -> HttpResponse:
    form = RedeemCodeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter a redemption code.")
        return redirect("portal:billing")
    try:
        entry = code_redeem(organization=member.organization, user=member.membership.user,
                            code=form.cleaned_data["code"])
    except CodeRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Redeemed: {entry.amount:,} credits were added.")
    return redirect("portal:billing")


def _text_cell(text: str) -> str:
    # A spreadsheet runs a cell that starts like a formula; reasons are free text.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@require_GET
@member_view()
def ledger_csv(request: HttpRequest, member: PortalMember) -> HttpResponse:
    entries = selectors.ledger_entries(
        organization_id=member.membership.organization_id).select_related("api_key")
    # Built whole rather than streamed: under ASGI Django buffers a synchronous
    # streaming body anyway, and reading the ORM from an async iterator would
    # need a thread hop per chunk.
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for entry in entries.iterator(chunk_size=2000):
        writer.writerow([
            entry.created_at.isoformat(), entry.kind, entry.amount, entry.balance_after,
            entry.request_id or "", entry.api_key.prefix if entry.api_key else "",
            _text_cell(entry.reason),
        ])
    filename = f"novakit-ledger-{member.organization.slug}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
