"""GET /api/v1/models: OpenAI's list format with NovaKit's tier, multiplier, context, vision,
pricing and availability; readable with the `models` or `chat` scope only."""

from __future__ import annotations

import openai
import pytest

from tests.completions.helpers import bearer
from tests.support.openai_schema import validate

# The public contract's models: generated catalogs keep them as they are (seed.json).
SEED_MODELS = {
    "openai/gpt-4o": ("standard", 2.0, 128_000, True),
    "openai/gpt-4o-mini": ("basic", 1.0, 128_000, True),
    "openai/gpt-4-turbo": ("powerful", 2.5, 128_000, True),
    "openai/o1-preview": ("powerful", 3.0, 128_000, False),
    "openai/o1-mini": ("standard", 1.5, 128_000, False),
    "anthropic/claude-3.5-sonnet": ("standard", 2.0, 200_000, True),
    "anthropic/claude-3-opus": ("powerful", 3.0, 200_000, True),
    "anthropic/claude-3-haiku": ("basic", 1.0, 200_000, True),
    "google/gemini-1.5-pro": ("standard", 1.75, 1_000_000, True),
    "google/gemini-1.5-flash": ("basic", 1.0, 1_000_000, True),
    "google/gemini-2.0-flash": ("basic", 1.0, 1_000_000, True),
    "meta-llama/llama-3.1-405b": ("powerful", 2.0, 128_000, False),
    "meta-llama/llama-3.1-70b": ("standard", 1.5, 128_000, False),
    "meta-llama/llama-3.1-8b": ("basic", 1.0, 128_000, False),
    "mistralai/mixtral-8x22b": ("standard", 1.5, 65_536, False),
    "deepseek/deepseek-chat": ("standard", 1.5, 65_536, False),
    "novakit/echo": ("basic", 1.0, 32_768, True),
}
TIER_RANGES = {"basic": (1.0, 1.0), "standard": (1.5, 2.0), "powerful": (2.0, 3.0)}


def test_given_the_shipped_catalog_when_listed_then_every_seed_model_is_there_with_its_facts(
    tenant, fake_upstream, http
):
    response = http.get("/models", headers=bearer(tenant))

    assert response.status_code == 200
    body = response.json()
    validate(body, "ListModelsResponse")
    assert body["object"] == "list"
    listed = {entry["id"]: entry for entry in body["data"]}
    assert set(SEED_MODELS) <= set(listed)
    for model_id, (tier, multiplier, context, vision) in SEED_MODELS.items():
        entry = listed[model_id]
        assert entry["object"] == "model"
        assert entry["owned_by"] == model_id.split("/")[0]
        assert (entry["tier"], entry["multiplier"]) == (tier, multiplier), model_id
        low, high = TIER_RANGES[tier]
        assert low <= entry["multiplier"] <= high
        assert (entry["context_length"], entry["supports_vision"]) == (context, vision), model_id
        assert entry["available"] is True
        pricing = entry["pricing"]
        # Credits per 1k tokens scale with the multiplier (100/300 at 1x).
        assert float(pricing["prompt_credits_per_1k"]) == 100 * multiplier
        assert float(pricing["completion_credits_per_1k"]) == 300 * multiplier
        assert {"prompt_usd_per_million", "completion_usd_per_million"} <= set(pricing)


def test_given_the_sdk_with_strict_validation_when_listing_then_it_parses_every_model(
    tenant, fake_upstream, client_for
):
    client = client_for(tenant, _strict_response_validation=True)

    models = list(client.models.list())
    one = client.models.retrieve("openai/gpt-4o")

    assert set(SEED_MODELS) <= {model.id for model in models}
    assert all(model.object == "model" and isinstance(model.created, int) for model in models)
    assert one.id == "openai/gpt-4o"
    assert one.model_extra["tier"] == "standard"


async def test_given_the_async_sdk_when_listing_then_it_parses_every_model(
    tenant, fake_upstream, async_client_for
):
    client = async_client_for(tenant, _strict_response_validation=True)

    models = [model async for model in client.models.list()]

    assert set(SEED_MODELS) <= {model.id for model in models}
    await client.close()


def test_given_an_unknown_model_when_retrieved_then_404(tenant, fake_upstream, client_for):
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(tenant).models.retrieve("acme/nothing")

    assert caught.value.code == "model_not_found"


def test_given_no_provider_key_then_openrouter_models_are_listed_as_unavailable(
    tenant, fake_upstream, http, settings
):
    from completions.catalog import catalog_cache

    settings.OPENROUTER_API_KEY = ""
    catalog_cache.clear()

    listed = {m["id"]: m for m in http.get("/models", headers=bearer(tenant)).json()["data"]}

    assert listed["novakit/echo"]["available"] is True
    assert not any(m["available"] for model_id, m in listed.items() if model_id != "novakit/echo")


@pytest.mark.parametrize(("scopes", "status"), [
    (("models",), 200), (("chat",), 200), (("usage:read",), 403), (("billing:read",), 403),
])
def test_given_a_key_with_scopes_when_listing_then_models_or_chat_is_needed(
    tenant_factory, fake_upstream, http, scopes, status
):
    caller = tenant_factory("caller", scopes=scopes)

    response = http.get("/models", headers=bearer(caller))

    assert response.status_code == status
    if status == 403:
        body = response.json()
        validate(body, "ErrorResponse")
        assert body["error"]["code"] == "forbidden"


def test_given_a_usage_only_key_then_the_sdk_raises_permission_denied(
    tenant_factory, fake_upstream, client_for
):
    caller = tenant_factory("caller", scopes=("usage:read",))

    with pytest.raises(openai.PermissionDeniedError):
        client_for(caller).models.list()


def test_given_no_key_when_listing_then_401(fake_upstream, http, catalog):
    response = http.get("/models")

    assert response.status_code == 401
    validate(response.json(), "ErrorResponse")
