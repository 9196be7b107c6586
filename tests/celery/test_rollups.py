"""Rollup rules that need no worker: late records, retention, percentiles."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from completions.models import UsageRecord, UsageRollup
from completions.rollups import percentile, usage_records_purge, usage_rollup

pytestmark = pytest.mark.django_db


def _record(tenant, *, request_id: str, started_at: dt.datetime, settled_at: dt.datetime,
            credits: int = 10, latency_ms: int = 100, status: str = "ok") -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id, organization=tenant.org, api_key=tenant.key, model="m/x",
        multiplier=Decimal("1"), prompt_tokens=5, completion_tokens=7, credits=credits,
        status=status, latency_ms=latency_ms, started_at=started_at, created_at=settled_at,
    )


def test_a_late_record_lands_in_the_window_it_started_in(tenant):
    now = dt.datetime(2026, 5, 10, 12, 5, tzinfo=dt.UTC)
    _record(tenant, request_id="early", started_at=now.replace(hour=10, minute=30),
            settled_at=now.replace(hour=10, minute=31))
    usage_rollup(now=now.replace(hour=10, minute=40))
    # A stream that started at 10:59 and settled after its window closed.
    _record(tenant, request_id="late", started_at=now.replace(hour=10, minute=59),
            settled_at=now.replace(hour=11, minute=2), credits=32)

    usage_rollup(now=now)

    ten = UsageRollup.objects.get(granularity="hour", window_start=now.replace(hour=10, minute=0))
    assert (ten.requests, ten.credits) == (2, 42)
    assert not UsageRollup.objects.filter(granularity="hour",
                                          window_start=now.replace(hour=11, minute=0)).exists()
    day = UsageRollup.objects.get(granularity="day", window_start=now.replace(hour=0, minute=0))
    assert (day.requests, day.credits, day.prompt_tokens, day.completion_tokens) == (2, 42, 10, 14)


def test_rerunning_a_window_does_not_double_count(tenant):
    now = timezone.now()
    _record(tenant, request_id="a", started_at=now, settled_at=now)
    usage_rollup(now=now)
    usage_rollup(now=now)
    assert UsageRollup.objects.get(granularity="hour").requests == 1


def test_retention_deletes_old_raw_records_only_after_rolling_them_up(tenant, settings):
    settings.USAGE_RETENTION_DAYS = 30
    now = timezone.now()
    old = now - dt.timedelta(days=45)
    for number in range(7):
        _record(tenant, request_id=f"old-{number}", started_at=old, settled_at=old, credits=3)
    _record(tenant, request_id="recent", started_at=now, settled_at=now)

    deleted = usage_records_purge(now=now, batch_size=3)

    assert deleted == 7
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["recent"]
    day = UsageRollup.objects.get(granularity="day", window_start=old.replace(
        hour=0, minute=0, second=0, microsecond=0))
    assert (day.requests, day.credits) == (7, 21)


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile([7], 0.95) == 7
    assert percentile([], 0.5) == 0


def test_error_and_cancelled_requests_are_counted(tenant):
    now = timezone.now()
    _record(tenant, request_id="ok", started_at=now, settled_at=now)
    _record(tenant, request_id="err", started_at=now, settled_at=now, status="error", credits=0)
    _record(tenant, request_id="gone", started_at=now, settled_at=now, status="cancelled")
    usage_rollup(now=now)
    hour = UsageRollup.objects.get(granularity="hour")
    assert (hour.requests, hour.errors, hour.cancelled, hour.credits) == (3, 1, 1, 20)


def test_interrupted_requests_count_as_errors(tenant):
    now = timezone.now()
    _record(tenant, request_id="ok", started_at=now, settled_at=now)
    _record(tenant, request_id="killed", started_at=now, settled_at=now, status="interrupted",
            credits=3)
    usage_rollup(now=now)
    hour = UsageRollup.objects.get(granularity="hour")
    assert (hour.requests, hour.errors, hour.credits) == (2, 1, 13)
