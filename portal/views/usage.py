"""Developer portal: the organization's usage charts and each request's receipt."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import orjson
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from accounts.models import APIKey
from completions import charts, selectors
from completions.models import CatalogModel
from portal.access import PortalMember, member_view, portal_render
from portal.forms import UsageFilterForm

# The latest requests listed under the usage charts, each linking to its receipt.
RECENT_REQUESTS = 50


def _key_label(key: APIKey | None, key_id: int | None) -> str:
    if key is None:
        return "no key" if not key_id else f"deleted key #{key_id}"
    return f"{key.name} ({key.prefix}…)"


def _add_display_fields(report: dict[str, Any], keys: dict[int, APIKey]) -> None:
    """What the charts and tables show beyond the selector's sums."""
    moment_format = "%Y-%m-%d %H:00" if report["granularity"] == "hour" else "%Y-%m-%d"
    for row in report["series"] + report["by_model"] + report["by_key"]:
        row["ok"] = row["requests"] - row["errors"]
        row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    for row in report["series"]:
        row["window"] = dt.datetime.fromisoformat(row["window_start"]).strftime(moment_format)
    for row in report["by_key"]:
        row["label"] = _key_label(keys.get(row["key_id"] or 0), row["key_id"])


@require_GET
@member_view()
def usage(request: HttpRequest, member: PortalMember) -> HttpResponse:
    organization_id = member.membership.organization_id
    keys = {key.pk: key for key in APIKey.objects.filter(organization_id=organization_id)}
    model_ids = list(CatalogModel.objects.order_by("model_id").values_list("model_id", flat=True))
    form = UsageFilterForm(request.GET or None, model_ids=model_ids,
                           key_choices=[(pk, _key_label(key, pk)) for pk, key in keys.items()])
    context: dict[str, Any] = {"section": "usage", "form": form}
    if form.is_bound and not form.is_valid():
        return portal_render(request, member, "portal/usage.html", context, status=400)
    filters = form.cleaned_data if form.is_bound else {"granularity": "day"}
    granularity = filters["granularity"]
    start, end = form.bounds() if form.is_bound else (None, None)
    try:
        start, end = selectors.usage_range(granularity=granularity, start=start, end=end)
    except ValueError as exc:
        form.add_error(None, str(exc))
        return portal_render(request, member, "portal/usage.html", context, status=400)
    if not form.is_bound:
        form.initial.update({"start": start.date(), "end": (end - dt.timedelta(seconds=1)).date()})
    report = selectors.usage_report(
        organization_id=organization_id, granularity=granularity, start=start, end=end,
        key_id=filters.get("key_id"), model=filters.get("model") or None,
    )
    _add_display_fields(report, keys)
    chart = functools.partial(charts.time_chart, series=report["series"], granularity=granularity,
                              start=start, end=end)
    context.update({
        "report": report,
        "granularity": granularity,
        "series_rows": [row for row in report["series"] if row["requests"]],
        "requests_chart": chart(title="Requests", parts=[
            ("ok", "succeeded", "fill-a"), ("errors", "failed", "fill-err")]),
        "tokens_chart": chart(title="Tokens", parts=[
            ("prompt_tokens", "prompt", "fill-a"), ("completion_tokens", "completion", "fill-b")]),
        "credits_chart": chart(title="Credits", parts=[("credits", "credits", "fill-c")]),
        "by_model": charts.ranking(report["by_model"], label_field="model", value_field="credits"),
        "by_key": charts.ranking(report["by_key"], label_field="label", value_field="credits"),
        "start": start,
        "end": end,
        "recent": [{"record": record, "key_label": _key_label(record.api_key, record.api_key_id)}
                   for record in selectors.recent_usage_records(
                       organization_id=organization_id, limit=RECENT_REQUESTS,
                       key_id=filters.get("key_id"), model=filters.get("model") or None)],
        "recent_limit": RECENT_REQUESTS,
        "awaiting_rollup": selectors.usage_awaiting_rollup(organization_id=organization_id),
        "recent_filtered": bool(filters.get("key_id") or filters.get("model")),
    })
    return portal_render(request, member, "portal/usage.html", context)


def _moment(timestamp: int | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.UTC)


@require_GET
@member_view()
def usage_receipt(request: HttpRequest, member: PortalMember, generation_id: str) -> HttpResponse:
    """One request's receipt: the same selector, and so the same numbers, as the API's."""
    receipt = selectors.generation_receipt(organization_id=member.membership.organization_id,
                                           request_id=generation_id)
    if receipt is None:  # unknown, or another organization's: the same answer
        raise Http404("No such generation in this organization")
    return portal_render(request, member, "portal/receipt.html", {
        "section": "usage", "receipt": receipt,
        "created_at": _moment(receipt.get("created")),
        "settled_at": _moment(receipt.get("settled")),
        "receipt_json": orjson.dumps(receipt, option=orjson.OPT_INDENT_2).decode(),
        "api_path": f"/api/v1/generations/{receipt['id']}",
    })
