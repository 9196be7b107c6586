"""Usage reads for the API, the portal and the staff dashboard: always from the rollups."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db.models import Max, QuerySet, Sum
from django.utils import timezone

from completions.models import UsageRecord, UsageRollup
from completions.rollups import window_end, window_start

MAX_WINDOWS: dict[str, int] = {UsageRollup.Granularity.HOUR: 24 * 31,
                               UsageRollup.Granularity.DAY: 366}
_SUMS = ("requests", "errors", "cancelled", "prompt_tokens", "completion_tokens", "credits")


class UsageRangeError(ValueError):
    """A range `usage_range` refuses, naming the parameter to blame."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def usage_range(
    *, granularity: str, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """A bounded [start, end) of whole windows; by default the last 30 days or 48 hours."""
    now = timezone.now()
    default_span = dt.timedelta(days=30) if granularity == UsageRollup.Granularity.DAY else (
        dt.timedelta(hours=48))
    try:
        end = window_end(granularity, window_start(granularity, end or now))
        start = window_start(granularity, start or end - default_span)
    except OverflowError:
        # Only `end` can overflow: its window's end past year 9999, or the default span
        # before it earlier than year 1 (`start` is only ever truncated).
        raise UsageRangeError("end is outside the calendar's usable range",
                              param="end") from None
    if start >= end:
        raise UsageRangeError("start must be before end", param="start")
    span = MAX_WINDOWS[granularity]
    step = dt.timedelta(days=1) if granularity == UsageRollup.Granularity.DAY else (
        dt.timedelta(hours=1))
    if (end - start) / step > span:
        raise UsageRangeError(f"at most {span} {granularity} windows per request", param="start")
    return start, end


def rollups_between(
    *, organization_id: int | None, granularity: str, start: dt.datetime, end: dt.datetime,
    key_id: int | None = None, model: str | None = None,
) -> QuerySet[UsageRollup]:
    rows = UsageRollup.objects.filter(
        granularity=granularity, window_start__gte=start, window_start__lt=end
    )
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(model=model)
    return rows


def _totals(rows: QuerySet[UsageRollup]) -> dict[str, int]:
    sums = rows.aggregate(**{name: Sum(name) for name in _SUMS})
    return {name: sums[name] or 0 for name in _SUMS}


def usage_totals(
    *, organization_id: int, granularity: str, start: dt.datetime, end: dt.datetime
) -> dict[str, int]:
    """The organization's totals over the range, without the report's series and breakdowns."""
    return _totals(rollups_between(organization_id=organization_id, granularity=granularity,
                            start=start, end=end))


def usage_report(
    *,
    organization_id: int | None,
    granularity: str,
    start: dt.datetime,
    end: dt.datetime,
    key_id: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Totals, a time series, and breakdowns by model and by key (organization None: platform)."""
    rows = rollups_between(organization_id=organization_id, granularity=granularity, start=start,
                    end=end, key_id=key_id, model=model)
    series = [
        {"window_start": item["window_start"].isoformat(),
         **{name: item[name] or 0 for name in _SUMS}}
        for item in rows.values("window_start").annotate(
            **{name: Sum(name) for name in _SUMS}).order_by("window_start")
    ]
    by_model = [
        {"model": item["model"], **{name: item[name] or 0 for name in _SUMS}}
        for item in rows.values("model").annotate(
            **{name: Sum(name) for name in _SUMS}).order_by("-credits", "model")
    ]
    by_key = [
        {"key_id": item["key_id"] or None, **{name: item[name] or 0 for name in _SUMS}}
        for item in rows.values("key_id").annotate(
            **{name: Sum(name) for name in _SUMS}).order_by("-credits", "key_id")
    ]
    return {
        "granularity": granularity,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "totals": _totals(rows),
        "series": series,
        "by_model": by_model,
        "by_key": by_key,
    }


def usage_awaiting_rollup(*, organization_id: int, now: dt.datetime | None = None) -> int:
    """How many of the organization's requests settled after its rollups were last written:
    listed with the recent requests, in no chart or total yet (rolled up every minute)."""
    now = now or timezone.now()
    records = UsageRecord.objects.filter(
        organization_id=organization_id,
        created_at__gte=now - dt.timedelta(seconds=settings.USAGE_ROLLUP_LOOKBACK_SECONDS))
    last = UsageRollup.objects.filter(organization_id=organization_id).aggregate(
        last=Max("updated_at"))["last"]
    if last is not None:
        records = records.filter(created_at__gt=last)
    return records.count()


def recent_usage_records(
    *, organization_id: int, limit: int = 50, key_id: int | None = None, model: str | None = None,
    failed_since: dt.datetime | None = None,
) -> QuerySet[UsageRecord]:
    """The organization's latest settled requests, newest first (optionally of one key or model,
    or only those that did not succeed, settled since `failed_since`)."""
    records = UsageRecord.objects.filter(organization_id=organization_id)
    if failed_since is not None:
        records = records.filter(created_at__gte=failed_since).exclude(
            status=UsageRecord.Status.OK)
    if key_id is not None:
        records = records.filter(api_key_id=key_id)
    if model:
        records = records.filter(model=model)
    return records.select_related("api_key").order_by("-created_at", "-pk")[:limit]


def top_organizations(
    *, granularity: str, start: dt.datetime, end: dt.datetime, limit: int = 10
) -> list[dict[str, Any]]:
    """The organizations that spent the most credits in the range (staff dashboard)."""
    rows = rollups_between(organization_id=None, granularity=granularity, start=start, end=end)
    return [
        {"organization": item["organization__slug"], "organization_id": item["organization_id"],
         **{name: item[name] or 0 for name in _SUMS}}
        for item in rows.values("organization_id", "organization__slug").annotate(
            **{name: Sum(name) for name in _SUMS}
        ).order_by("-credits", "organization__slug")[:limit]
    ]


def provider_health(
    *, granularity: str, start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """Requests, error rate, mean latency and the worst window's p95 per provider."""
    rows = rollups_between(organization_id=None, granularity=granularity, start=start, end=end)
    health = []
    for item in rows.values("provider").annotate(
        n=Sum("requests"), failed=Sum("errors"), latency=Sum("latency_sum_ms"),
        worst_p95=Max("latency_p95_ms"),
    ).order_by("provider"):
        requests = item["n"] or 0
        health.append({
            "provider": item["provider"] or "(none)",
            "requests": requests,
            "errors": item["failed"] or 0,
            "error_rate": (item["failed"] or 0) / requests if requests else 0.0,
            "mean_latency_ms": round((item["latency"] or 0) / requests) if requests else 0,
            "worst_p95_ms": item["worst_p95"] or 0,
        })
    return health


def generation_receipt(*, organization_id: int, request_id: str) -> dict[str, Any] | None:
    """What one request cost and why, from its usage record and its ledger entry.

    A request still running (its reservation open, not yet settled) gets a
    `pending` receipt rather than a 404, so a client polling right after an
    abandoned stream always finds it.
    """
    from billing.models import LedgerEntry, Reservation

    record = UsageRecord.objects.filter(
        organization_id=organization_id, request_id=request_id
    ).select_related("api_key").first()
    if record is None:
        reservation = Reservation.objects.filter(
            account__organization_id=organization_id, request_id=request_id
        ).first()
        if reservation is None:
            return None
        return {"id": request_id, "object": "generation", "status": "pending",
                "credits_reserved": reservation.amount,
                "created": int(reservation.created_at.timestamp())}
    entry = LedgerEntry.objects.filter(request_id=request_id, kind=LedgerEntry.Kind.USAGE).first()
    receipt: dict[str, Any] = {
        "id": record.request_id,
        "object": "generation",
        "status": record.status,
        "model": record.model,
        "provider": record.provider,
        # Whose provider key served it: "platform", or "organization" (its own, at the BYOK fee).
        "provider_key": record.key_class,
        "api_key_prefix": record.api_key.prefix if record.api_key else None,
        "user": record.end_user or None,
        "streamed": record.streamed,
        "http_status": record.http_status,
        "error_code": record.error_code or None,
        "usage": {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
            "source": record.usage_source,
        },
        "credits_used": record.credits,
        "credits_breakdown": record.credits_breakdown,
        "credits_reserved": record.credits_reserved,
        "pricing": {
            "multiplier": str(record.multiplier),
            # Fixed-point: str() of a normalized Decimal("100") is "1E+2".
            "prompt_credits_per_1k_at_1x": format(record.prompt_rate.normalize(), "f"),
            "completion_credits_per_1k_at_1x": format(record.completion_rate.normalize(), "f"),
        },
        "ledger_entry": {"id": entry.pk, "amount": entry.amount,
                         "balance_after": entry.balance_after} if entry else None,
        "latency_ms": record.latency_ms,
        "time_to_first_token_ms": record.ttft_ms,
        "created": int(record.started_at.timestamp()),
        "settled": int(record.created_at.timestamp()),
    }
    if record.status == UsageRecord.Status.CANCELLED:
        receipt["cancelled"] = {
            "delivered_completion_tokens": record.completion_tokens,
            "charged": record.credits,
            "released": record.credits_reserved - record.credits,
        }
    return receipt
