"""/metrics: every metric the runbook needs is there after traffic, and only the scraper sees it."""

from __future__ import annotations

import httpx
import pytest

from completions.models import UsageRecord

METRICS = [
    "novakit_requests_total", "novakit_request_duration_seconds_bucket",
    "novakit_time_to_first_token_seconds_bucket", "novakit_upstream_errors_total",
    "novakit_credits_charged_total", "novakit_open_reservations",
    "novakit_rate_limit_refusals_total",
]


def test_metrics_after_requests_show_each_series(tenant, fake_upstream, live_gateway, settings):
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    url = f"{live_gateway.api_base}/chat/completions"
    failed = httpx.post(url, headers=headers, timeout=10, json={
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "boom [[fault:status:500]]"}]})
    tenant.key.requests_per_minute = 1
    tenant.key.save(update_fields=["requests_per_minute"])
    from accounts import auth

    auth.cache_clear()
    ok = httpx.post(url, headers=headers, timeout=10, json={
        "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    refused = httpx.post(url, headers=headers, timeout=10, json={
        "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "again"}]})
    assert (ok.status_code, failed.status_code) == (200, 502)
    assert refused.status_code == 429
    # The answered and the failed request, and the refusal (completions/refusals.py).
    assert sorted(UsageRecord.objects.values_list("status", flat=True)) == [
        "error", "ok", "refused"]

    body = httpx.get(f"{live_gateway.url}/metrics", timeout=10).text

    for name in METRICS:
        assert name in body, name
    assert 'novakit_requests_total{http_status="200",model="openai/gpt-4o-mini",status="ok"}' \
        in body
    assert 'novakit_upstream_errors_total{kind="http_5xx",provider="openrouter"}' in body
    assert 'novakit_rate_limit_refusals_total{limit="key_rpm"}' in body


@pytest.mark.django_db
def test_metrics_are_refused_to_the_public(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "scrape-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    allowed = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token")
    assert allowed.status_code == 200 and b"novakit_open_reservations" in allowed.content
