"""Receipts: GET /api/v1/generations/{id} tells what a request cost, and agrees with the ledger."""

from __future__ import annotations

import time

import httpx

from billing.models import LedgerEntry


def _receipt(live_gateway, tenant, generation_id: str) -> httpx.Response:
    return httpx.get(f"{live_gateway.api_base}/generations/{generation_id}", timeout=10,
                     headers={"Authorization": f"Bearer {tenant.secret}"})


def _ledger_amount(generation_id: str) -> int:
    return -LedgerEntry.objects.get(request_id=generation_id, kind="usage").amount


def test_a_completed_request_has_a_receipt_equal_to_its_ledger_entry(
    tenant, fake_upstream, client_for, live_gateway
):
    completion = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "Hello"}], max_tokens=40)

    receipt = _receipt(live_gateway, tenant, completion.id).json()

    assert receipt["status"] == "ok" and receipt["streamed"] is False
    assert receipt["credits_used"] == _ledger_amount(completion.id)
    assert receipt["credits_used"] == completion.usage.model_extra["credits_used"]
    assert receipt["credits_breakdown"] == completion.usage.model_extra["credits_breakdown"]
    assert receipt["usage"]["prompt_tokens"] == completion.usage.prompt_tokens
    assert receipt["pricing"]["multiplier"] == "2.00"
    assert receipt["provider"] == "openrouter"
    assert receipt["ledger_entry"]["amount"] == -receipt["credits_used"]


def test_a_streamed_request_has_a_receipt(tenant, fake_upstream, client_for, live_gateway):
    chunks = list(client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True))

    receipt = _receipt(live_gateway, tenant, chunks[-1].id).json()

    assert receipt["streamed"] is True and receipt["status"] == "ok"
    assert receipt["credits_used"] == _ledger_amount(chunks[-1].id)
    assert receipt["usage"]["completion_tokens"] == chunks[-1].usage.completion_tokens


def test_an_abandoned_stream_has_a_receipt_of_what_was_delivered(
    tenant, fake_upstream, live_gateway
):
    body = {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": "Tell me [[fault:slow:0.3]]"}]}
    with httpx.Client(timeout=10) as client, client.stream(
        "POST", f"{live_gateway.api_base}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {tenant.secret}"},
    ) as response:
        generation_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False) if line]
    assert len(received) >= 2

    receipt = {"status": "pending"}
    for _ in range(100):
        answer = _receipt(live_gateway, tenant, generation_id)
        assert answer.status_code == 200  # never a 404, even before settlement
        receipt = answer.json()
        if receipt["status"] != "pending":
            break
        time.sleep(0.05)

    assert receipt["status"] == "cancelled"
    assert receipt["cancelled"]["charged"] == receipt["credits_used"] == _ledger_amount(
        generation_id)
    assert receipt["cancelled"]["released"] == receipt["credits_reserved"] - receipt["credits_used"]
    assert 0 < receipt["usage"]["completion_tokens"] < 100


def test_another_organization_cannot_read_a_receipt(
    tenant, other_tenant, fake_upstream, client_for, live_gateway
):
    completion = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])

    foreign = _receipt(live_gateway, other_tenant, completion.id)

    assert foreign.status_code == 404
    assert foreign.json()["code"] == "not_found"
    assert "credits" not in foreign.text
