"""Rolling raw usage records up into hourly and daily totals, and retiring old raw records.

A window is always recomputed whole from the raw records that started in it
and upserted: the result depends only on the records, so a rerun, a second
worker, or a record that settled late all end in the same exact totals.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from completions.models import UsageRecord, UsageRollup

HOUR = UsageRollup.Granularity.HOUR
DAY = UsageRollup.Granularity.DAY
_GROUP = ("organization_id", "api_key_id", "model", "provider")


def window_start(granularity: str, moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    if granularity == HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def window_end(granularity: str, start: dt.datetime) -> dt.datetime:
    return start + (dt.timedelta(hours=1) if granularity == HOUR else dt.timedelta(days=1))


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list (exact, no interpolation)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def rollup_window(*, granularity: str, start: dt.datetime) -> int:
    """Recompute one window from its raw records; returns the number of rollup rows written."""
    end = window_end(granularity, start)
    records = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    totals = records.values(*_GROUP).annotate(
        n=Count("id"),
        # An interrupted request (its process died) or a refused one (402, 429, 503)
        # failed as far as its client knows.
        n_errors=Count("id", filter=Q(status__in=[UsageRecord.Status.ERROR,
                                                  UsageRecord.Status.INTERRUPTED,
                                                  UsageRecord.Status.REFUSED])),
        n_cancelled=Count("id", filter=Q(status=UsageRecord.Status.CANCELLED)),
        n_streamed=Count("id", filter=Q(streamed=True)),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        spent=Sum("credits"),
        cost=Sum("upstream_cost_usd"),
        latency_sum=Sum("latency_ms"),
    )
    latencies: dict[tuple[int, int, str, str], list[int]] = defaultdict(list)
    for org_id, key_id, model, provider, latency in records.order_by("latency_ms").values_list(
        *_GROUP, "latency_ms"
    ):
        latencies[(org_id, key_id or 0, model, provider)].append(latency)
    rows = []
    for total in totals:
        group = (total["organization_id"], total["api_key_id"] or 0, total["model"],
                 total["provider"])
        rows.append(UsageRollup(
            granularity=granularity,
            window_start=start,
            organization_id=group[0],
            key_id=group[1],
            model=group[2],
            provider=group[3],
            requests=total["n"],
            errors=total["n_errors"],
            cancelled=total["n_cancelled"],
            streamed=total["n_streamed"],
            prompt_tokens=total["prompt"] or 0,
            completion_tokens=total["completion"] or 0,
            credits=total["spent"] or 0,
            upstream_cost_usd=total["cost"] or 0,
            latency_p50_ms=percentile(latencies[group], 0.50),
            latency_p95_ms=percentile(latencies[group], 0.95),
            latency_sum_ms=total["latency_sum"] or 0,
        ))
    with transaction.atomic():
        UsageRollup.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["granularity", "window_start", "organization", "key_id", "model",
                           "provider"],
            update_fields=["requests", "errors", "cancelled", "streamed", "prompt_tokens",
                           "completion_tokens", "credits", "upstream_cost_usd", "latency_p50_ms",
                           "latency_p95_ms", "latency_sum_ms", "updated_at"],
        )
    return len(rows)


def _windows(starts: Iterable[dt.datetime]) -> set[tuple[str, dt.datetime]]:
    windows = set()
    for started in starts:
        windows.add((HOUR, window_start(HOUR, started)))
        windows.add((DAY, window_start(DAY, started)))
    return windows


def usage_rollup(*, now: dt.datetime | None = None, lookback: dt.timedelta | None = None) -> int:
    """Recompute every window that has a record settled within `lookback` of now.

    Looking back by settlement time, not start time, is what lets a late record
    (a long stream) bring its start window up to date.
    """
    now = now or timezone.now()
    lookback = lookback or dt.timedelta(seconds=settings.USAGE_ROLLUP_LOOKBACK_SECONDS)
    starts = (
        UsageRecord.objects.filter(created_at__gte=now - lookback)
        .values_list("started_at", flat=True)
        .distinct()
    )
    written = 0
    for granularity, start in sorted(_windows(starts)):
        written += rollup_window(granularity=granularity, start=start)
    return written


def usage_records_purge(
    *, now: dt.datetime | None = None, batch_size: int = 5000
) -> int:
    """Delete raw records older than USAGE_RETENTION_DAYS, after rolling their windows up.

    Each day is recomputed first, then its records are deleted in batches, so
    the rollups keep exactly what the deleted records said.
    """
    now = now or timezone.now()
    cutoff = window_start(DAY, now - dt.timedelta(days=settings.USAGE_RETENTION_DAYS))
    deleted = 0
    while True:
        oldest = (
            UsageRecord.objects.filter(started_at__lt=cutoff)
            .order_by("started_at")
            .values_list("started_at", flat=True)
            .first()
        )
        if oldest is None:
            return deleted
        day = window_start(DAY, oldest)
        hour = day
        while hour < window_end(DAY, day):
            rollup_window(granularity=HOUR, start=hour)
            hour += dt.timedelta(hours=1)
        rollup_window(granularity=DAY, start=day)
        day_records = UsageRecord.objects.filter(
            started_at__gte=day, started_at__lt=window_end(DAY, day)
        )
        while True:
            ids = list(day_records.values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            deleted += UsageRecord.objects.filter(pk__in=ids).delete()[0]
