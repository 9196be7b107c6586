"""Given requests through the gateway, when a real Celery worker rolls usage up,
then the rollups match the raw records exactly — once, twice, and with two workers at once."""

from __future__ import annotations

from collections import defaultdict

import httpx

from completions.models import UsageRecord, UsageRollup
from completions.rollups import percentile, window_start
from completions.tasks import usage_rollup_task


def _send_traffic(live_gateway, tenant, other_tenant) -> None:
    for position, current in enumerate([tenant, tenant, other_tenant, tenant, other_tenant]):
        body = {"model": "novakit/echo", "stream": position % 2 == 1,
                "messages": [{"role": "user", "content": f"request number {position}"}]}
        response = httpx.post(f"{live_gateway.api_base}/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {current.secret}"})
        assert response.status_code == 200, response.text
    # A second model for the first tenant, so grouping by model is exercised.
    response = httpx.post(
        f"{live_gateway.api_base}/chat/completions", timeout=30,
        headers={"Authorization": f"Bearer {tenant.secret}"},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text


def _expected() -> dict[tuple[str, object, int, int, str, str], dict[str, int]]:
    groups: dict[tuple[str, object, int, int, str, str], list[UsageRecord]] = defaultdict(list)
    for record in UsageRecord.objects.all():
        for granularity in ("hour", "day"):
            key = (granularity, window_start(granularity, record.started_at),
                   record.organization_id, record.api_key_id or 0, record.model, record.provider)
            groups[key].append(record)
    expected = {}
    for key, records in groups.items():
        latencies = sorted(record.latency_ms for record in records)
        expected[key] = {
            "requests": len(records),
            "errors": sum(record.status == "error" for record in records),
            "cancelled": sum(record.status == "cancelled" for record in records),
            "streamed": sum(record.streamed for record in records),
            "prompt_tokens": sum(record.prompt_tokens for record in records),
            "completion_tokens": sum(record.completion_tokens for record in records),
            "credits": sum(record.credits for record in records),
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            "latency_sum_ms": sum(latencies),
        }
    return expected


def _actual() -> dict[tuple[str, object, int, int, str, str], dict[str, int]]:
    return {
        (row.granularity, row.window_start, row.organization_id, row.key_id, row.model,
         row.provider): {
            name: getattr(row, name) for name in (
                "requests", "errors", "cancelled", "streamed", "prompt_tokens",
                "completion_tokens", "credits", "latency_p50_ms", "latency_p95_ms",
                "latency_sum_ms")
        }
        for row in UsageRollup.objects.all()
    }


def test_rollups_match_raw_records_once_twice_and_with_two_workers(
    live_gateway, tenant, other_tenant, fake_upstream, start_workers
):
    _send_traffic(live_gateway, tenant, other_tenant)
    assert UsageRecord.objects.count() == 6
    start_workers(2)

    first = usage_rollup_task.delay().get(timeout=120)
    assert first > 0
    assert _actual() == _expected()

    usage_rollup_task.delay().get(timeout=120)
    assert _actual() == _expected()

    _send_traffic(live_gateway, tenant, other_tenant)
    racing = [usage_rollup_task.delay(), usage_rollup_task.delay()]
    for result in racing:
        result.get(timeout=120)
    assert UsageRecord.objects.count() == 12
    expected = _expected()
    assert _actual() == expected
    by_org = defaultdict(int)
    for (granularity, _, org_id, _, _, _), totals in expected.items():
        if granularity == "day":
            by_org[org_id] += totals["requests"]
    assert by_org == {tenant.org.pk: 8, other_tenant.org.pk: 4}
