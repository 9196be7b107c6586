"""Quotes: what a request would reserve, and whether it would be admitted, with nothing taken."""

from __future__ import annotations

import httpx

from billing.models import Reservation
from billing.services import quota_set
from completions.catalog import catalog_cache

BODY = {"model": "openai/gpt-4o", "max_tokens": 300,
        "messages": [{"role": "user", "content": "What does a quote cost?"}]}


def _quote(live_gateway, tenant, body=BODY) -> dict:
    response = httpx.post(f"{live_gateway.api_base}/chat/completions/quote", json=body,
                          timeout=10, headers={"Authorization": f"Bearer {tenant.secret}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_quote_matches_the_reservation_the_same_request_then_makes(
    tenant, fake_upstream, live_gateway
):
    quote = _quote(live_gateway, tenant)

    assert quote["admitted"] is True and quote["reason"] is None
    assert not Reservation.objects.exists()  # nothing reserved
    assert fake_upstream.requests == []  # the upstream was not called
    assert tenant.refresh_account().reserved == 0
    assert quote["credits_per_1k_tokens"] == {"prompt": "200", "completion": "600"}
    assert quote["worst_case_credits"] == sum(quote["worst_case_breakdown"].values())

    completion = httpx.post(f"{live_gateway.api_base}/chat/completions", json=BODY, timeout=10,
                            headers={"Authorization": f"Bearer {tenant.secret}"}).json()

    reservation = Reservation.objects.get(request_id=completion["id"])
    assert reservation.amount == quote["worst_case_credits"]
    assert reservation.tokens == quote["estimated_prompt_tokens"] + quote["max_completion_tokens"]


def test_a_quote_says_why_a_request_would_be_refused(tenant_factory, fake_upstream, live_gateway):
    poor = tenant_factory("poor", credits=10)
    quote = _quote(live_gateway, poor)
    assert (quote["admitted"], quote["reason"], quote["available_credits"]) == (
        False, "Insufficient credits", 10)

    rich = tenant_factory("rich")
    quota_set(organization=rich.org, limit=100)
    quote = _quote(live_gateway, rich)
    assert (quote["admitted"], quote["reason"]) == (False, "Quota exceeded for chat_tokens")
    assert not Reservation.objects.exists()


def test_a_quote_for_a_model_without_a_configured_provider_says_it_would_be_refused(
    tenant, fake_upstream, live_gateway, settings
):
    settings.OPENROUTER_API_KEY = ""
    catalog_cache.clear()

    quote = _quote(live_gateway, tenant)

    assert quote["admitted"] is False
    assert quote["reason"] == ("The model 'openai/gpt-4o' has no configured provider: "
                               "set OPENROUTER_API_KEY")
    assert quote["worst_case_credits"] == sum(quote["worst_case_breakdown"].values()) > 0
    assert quote["available_credits"] == 1_000_000
    assert not Reservation.objects.exists() and fake_upstream.requests == []


def test_a_quote_validates_like_a_completion(tenant, fake_upstream, live_gateway):
    response = httpx.post(f"{live_gateway.api_base}/chat/completions/quote",
                          json={"model": "nope/nope", "messages": [{"role": "user",
                                                                     "content": "x"}]},
                          timeout=10, headers={"Authorization": f"Bearer {tenant.secret}"})
    assert response.status_code == 404 and response.json()["code"] == "model_not_found"


def test_a_quote_reads_the_live_rate_limits_and_takes_nothing_from_them(
    tenant, fake_upstream, live_gateway
):
    tenant.key.requests_per_minute = 2
    tenant.key.save(update_fields=["requests_per_minute"])

    # Quoting as often as one likes uses none of the key's two requests a minute...
    for _ in range(5):
        assert _quote(live_gateway, tenant)["admitted"] is True
    for _ in range(2):
        completion = httpx.post(f"{live_gateway.api_base}/chat/completions", json=BODY,
                                timeout=10, headers={"Authorization": f"Bearer {tenant.secret}"})
        assert completion.status_code == 200, completion.text

    # ...and once they are used, the quote says so, as the completion's 429 would.
    quote = _quote(live_gateway, tenant)
    refused = httpx.post(f"{live_gateway.api_base}/chat/completions", json=BODY, timeout=10,
                         headers={"Authorization": f"Bearer {tenant.secret}"})
    assert refused.status_code == 429
    assert quote["admitted"] is False
    assert quote["reason"].startswith(
        "Rate limit reached for requests per minute for this API key (limit 2)")
    assert refused.json()["error"]["message"].startswith(quote["reason"][:60])
