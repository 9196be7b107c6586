"""Idempotency-Key: a retried request runs once and is charged once."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from django.utils import timezone

from billing.models import LedgerEntry
from completions.idempotency import idempotency_claim
from completions.models import IdempotentRequest, UsageRecord
from novakit.errors import ApiError


def _post(live_gateway, tenant, body, key, **kwargs) -> httpx.Response:
    return httpx.post(f"{live_gateway.api_base}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {tenant.secret}",
                               "Idempotency-Key": key}, **kwargs)


BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Once"}]}


def test_a_repeat_gets_the_stored_answer_and_is_not_charged_again(
    tenant, fake_upstream, live_gateway
):
    first = _post(live_gateway, tenant, BODY, "order-42")
    second = _post(live_gateway, tenant, BODY, "order-42")

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(fake_upstream.requests) == 1
    generation = first.json()["id"]
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert LedgerEntry.objects.get(kind="usage").request_id == generation
    assert UsageRecord.objects.count() == 1


def test_the_same_key_with_another_body_is_422(tenant, fake_upstream, live_gateway):
    _post(live_gateway, tenant, BODY, "k1")
    other = _post(live_gateway, tenant, {**BODY, "max_tokens": 5}, "k1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert other.json()["error"]["param"] == "Idempotency-Key"


def test_the_same_key_while_the_first_still_runs_is_409_then_the_stream_is_replayed(
    tenant, fake_upstream, live_gateway
):
    body = {**BODY, "stream": True,
            "messages": [{"role": "user", "content": "slowly [[fault:slow:0.2]]"}]}
    headers = {"Authorization": f"Bearer {tenant.secret}", "Idempotency-Key": "s1"}
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{live_gateway.api_base}/chat/completions", json=body,
            headers=headers) as running:
        lines = running.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        during = _post(live_gateway, tenant, body, "s1")
        first_body = "\n".join(["", *lines])

    assert during.status_code == 409
    assert during.json()["code"] == "idempotency_conflict"
    assert during.headers["Retry-After"] == "1"
    replay = _post(live_gateway, tenant, body, "s1")
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.text.endswith("data: [DONE]\n\n")
    assert first_body.strip().endswith("data: [DONE]")
    assert len(fake_upstream.requests) == 1
    assert LedgerEntry.objects.filter(kind="usage").count() == 1


def test_a_failure_is_not_stored_so_the_retry_runs(tenant, fake_upstream, live_gateway):
    fake_upstream.scenario = "status:500"
    failed = _post(live_gateway, tenant, BODY, "k-fail")
    fake_upstream.scenario = "ok"
    retried = _post(live_gateway, tenant, BODY, "k-fail")

    assert failed.status_code == 502
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert len(fake_upstream.requests) == 2
    assert LedgerEntry.objects.filter(kind="usage").count() == 1


def test_keys_belong_to_their_organization(tenant, other_tenant, fake_upstream, live_gateway):
    mine = _post(live_gateway, tenant, BODY, "shared-name")
    theirs = _post(live_gateway, other_tenant, BODY, "shared-name")
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_a_malformed_key_is_400(tenant, fake_upstream, live_gateway):
    response = _post(live_gateway, tenant, BODY, "x" * 300)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"


def _claim(tenant, fingerprint: str = "body-a"):  # type: ignore[no-untyped-def]
    return idempotency_claim(organization_id=tenant.org.id, key="retry-1",
                             fingerprint=fingerprint, streamed=False)


def test_an_expired_answer_frees_its_key(tenant):
    IdempotentRequest.objects.create(
        organization=tenant.org, key="retry-1", fingerprint="body-a",
        status=IdempotentRequest.Status.COMPLETED, response_status=200,
        expires_at=timezone.now() - dt.timedelta(seconds=1))

    assert _claim(tenant, fingerprint="body-b") is None  # claimed afresh, another body allowed
    claim = IdempotentRequest.objects.get(organization=tenant.org, key="retry-1")
    assert claim.status == IdempotentRequest.Status.RUNNING and claim.fingerprint == "body-b"


def test_a_claim_abandoned_long_ago_is_taken_over_and_a_recent_one_is_409(tenant):
    later = timezone.now() + dt.timedelta(hours=1)
    abandoned = IdempotentRequest.objects.create(
        organization=tenant.org, key="retry-1", fingerprint="body-a", expires_at=later,
        created_at=timezone.now() - dt.timedelta(minutes=16))

    assert _claim(tenant) is None
    taken_over = IdempotentRequest.objects.get(organization=tenant.org, key="retry-1")
    assert taken_over.pk != abandoned.pk
    with pytest.raises(ApiError) as refused:
        _claim(tenant)
    assert refused.value.status == 409
