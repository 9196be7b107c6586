"""The staff dashboard (/staff/): the platform's state at a glance, from the rollups.

Every query is bounded: rollups over a range of at most 31 days of hours or
366 days (indexed on granularity and window start), the top lists limited,
the near-limit and stale lists capped (billing/selectors.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from billing import selectors as billing_selectors
from completions import charts, margins, reconciliation, routing, selectors

_RANGES = {"48h": ("hour", dt.timedelta(hours=48)), "7d": ("hour", dt.timedelta(days=7)),
           "30d": ("day", dt.timedelta(days=30)), "90d": ("day", dt.timedelta(days=90))}


def staff_context(request: HttpRequest) -> dict[str, Any]:
    """What the admin's templates need for the header (NovaKit's name, the user's links);
    the staff pages are wide, so without the admin's side bar."""
    return {**admin.site.each_context(request), "is_nav_sidebar_enabled": False}


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    chosen = request.GET.get("range", "7d")
    granularity, span = _RANGES.get(chosen, _RANGES["7d"])
    by = request.GET.get("by", "model")
    by = by if by in margins.DIMENSIONS else "model"
    start, end = selectors.usage_range(granularity=granularity, start=timezone.now() - span,
                                       end=None)
    report = selectors.usage_report(organization_id=None, granularity=granularity,
                                    start=start, end=end)
    for row in report["series"]:
        row["ok"] = row["requests"] - row["errors"]
    totals = report["totals"]
    margin_rows = margins.margins(by=by, granularity=granularity, start=start, end=end)
    chart = functools.partial(charts.time_chart, series=report["series"],
                              granularity=granularity, start=start, end=end)
    context = {
        **staff_context(request),
        "title": "Platform dashboard",
        "range": chosen,
        "ranges": list(_RANGES),
        "granularity": granularity,
        "totals": totals,
        "error_rate": totals["errors"] / totals["requests"] if totals["requests"] else 0.0,
        "requests_chart": chart(title="Requests", parts=[
            ("ok", "succeeded", "fill-a"), ("errors", "failed", "fill-err")]),
        "tokens_chart": chart(title="Tokens", parts=[
            ("prompt_tokens", "prompt", "fill-a"), ("completion_tokens", "completion", "fill-b")]),
        "credits_chart": chart(title="Credits", parts=[("credits", "credits", "fill-c")]),
        "top_organizations": charts.ranking(
            [{**row, "url": reverse("staff-organization", args=[row["organization_id"]])}
             for row in selectors.top_organizations(granularity=granularity, start=start,
                                                    end=end)],
            label_field="organization", value_field="credits"),
        "top_models": charts.ranking(report["by_model"][:10], label_field="model",
                                     value_field="credits"),
        "providers": selectors.provider_health(granularity=granularity, start=start, end=end),
        "provider_keys": routing.provider_keys_health(),
        "margin_by": by,
        "margin_dimensions": margins.DIMENSIONS,
        "margin_rows": margin_rows,
        "margin_total": margins.margin_total(margin_rows),
        "credit_price_usd": settings.CREDIT_PRICE_USD,
        "uncovered_models": margins.uncovered_models(),
        "findings": reconciliation.recent_findings(),
        "near_limits": billing_selectors.organizations_near_limits(),
        "stale_reservations": billing_selectors.stale_reservations(
            older_than=dt.timedelta(seconds=settings.STAFF_STALE_RESERVATION_SECONDS)),
        "stale_after_seconds": settings.STAFF_STALE_RESERVATION_SECONDS,
    }
    return render(request, "staff/dashboard.html", context)
