"""Developer portal: credits, quotas, open reservations and the ledger (with a CSV export)."""

from __future__ import annotations

import csv

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from accounts.api import MANAGERS
from billing import selectors
from billing.codes import CodeRefused, code_redeem
from billing.forms import RedeemCodeForm
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
