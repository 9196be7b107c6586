"""Given the upstream's model list, when the catalog syncs, prices, capabilities and
availability follow it, new models are served, and staff overrides survive."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from django.test import Client

from completions.margins import uncovered_models
from completions.models import CatalogModel, ModelRoute
from completions.tasks import catalog_sync_task

pytestmark = pytest.mark.django_db


def _listing() -> list[dict]:
    return [
        {"id": "openai/gpt-4o-mini", "name": "GPT-4o mini", "context_length": 131072,
         "architecture": {"input_modalities": ["text", "image"]},
         "pricing": {"prompt": "0.0000002", "completion": "0.0000008"}},
        {"id": "openai/gpt-4o", "name": "GPT-4o", "context_length": 128000,
         "architecture": {"input_modalities": ["text"]},
         "pricing": {"prompt": "0.000003", "completion": "0.000012"}},
        {"id": "acme/new-big-model", "name": "Acme Big", "context_length": 64000,
         "architecture": {"input_modalities": ["text"]},
         "pricing": {"prompt": "0.00001", "completion": "0.00005"}},
        {"id": "acme/new-small-model", "name": "Acme Small", "context_length": 32000,
         "pricing": {"prompt": "0.0000001", "completion": "0.0000002"}},
    ]


def test_sync_updates_prices_adds_new_models_and_keeps_staff_overrides(catalog, fake_upstream):
    fake_upstream.model_listing = _listing()
    gpt4o = CatalogModel.objects.get(model_id="openai/gpt-4o")
    gpt4o.tier, gpt4o.multiplier, gpt4o.staff_override = "powerful", Decimal("2.5"), True
    gpt4o.save()

    counts = catalog_sync_task.apply().get()

    mini = CatalogModel.objects.get(model_id="openai/gpt-4o-mini")
    assert (mini.prompt_usd_per_m, mini.completion_usd_per_m) == (Decimal("0.2"), Decimal("0.8"))
    assert mini.context_length == 131072 and mini.supports_vision
    gpt4o.refresh_from_db()
    assert (gpt4o.tier, gpt4o.multiplier) == ("powerful", Decimal("2.5"))  # override kept
    assert gpt4o.completion_usd_per_m == Decimal("12")  # prices still follow the upstream
    big = CatalogModel.objects.get(model_id="acme/new-big-model")
    assert (big.tier, big.multiplier, big.context_length) == ("powerful", Decimal("3.0"), 64000)
    small = CatalogModel.objects.get(model_id="acme/new-small-model")
    assert (small.tier, small.multiplier) == ("basic", Decimal("1.0"))
    assert ModelRoute.objects.get(model=big).upstream_model == "acme/new-big-model"
    # Models the upstream no longer lists stay in the catalog but show as unavailable.
    claude = ModelRoute.objects.get(model__model_id="anthropic/claude-3-opus")
    assert not claude.is_listed
    unlisted = ModelRoute.objects.filter(is_listed=False).count()
    # Every OpenRouter route but the two shipped models and the two new ones listed.
    assert unlisted == ModelRoute.objects.filter(provider__slug="openrouter").count() - 4
    assert counts == {"updated": 2, "added": 2, "unlisted": unlisted,
                      "uncovered": len(uncovered_models())}


def test_a_synced_model_is_served_and_listed(tenant, fake_upstream, live_gateway):
    fake_upstream.model_listing = _listing()
    catalog_sync_task.apply().get()
    headers = {"Authorization": f"Bearer {tenant.secret}"}

    listed = httpx.get(f"{live_gateway.api_base}/models", headers=headers, timeout=10).json()
    answer = httpx.post(
        f"{live_gateway.api_base}/chat/completions", headers=headers, timeout=10,
        json={"model": "acme/new-small-model", "messages": [{"role": "user", "content": "hi"}]},
    )

    entries = {entry["id"]: entry for entry in listed["data"]}
    assert entries["acme/new-small-model"]["available"] is True
    assert entries["anthropic/claude-3-opus"]["available"] is False
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[-1]["body"]["model"] == "acme/new-small-model"


def test_sync_is_skipped_without_an_upstream_key(catalog, settings):
    settings.OPENROUTER_API_KEY = ""
    assert catalog_sync_task.apply().get() == {"skipped": 1}


def test_sync_refreshes_capabilities_except_where_staff_overrode_them(catalog, fake_upstream):
    fake_upstream.model_listing = [
        {"id": "openai/gpt-4o-mini", "name": "GPT-4o mini", "context_length": 128000,
         "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
         "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice",
                                  "response_format", "top_p"],
         "top_provider": {"context_length": 128000, "max_completion_tokens": 16384}},
        {"id": "openai/gpt-4o", "name": "GPT-4o", "context_length": 128000,
         "pricing": {"prompt": "0.0000025", "completion": "0.00001"},
         "supported_parameters": ["max_tokens", "tools"],
         "top_provider": {"max_completion_tokens": 4096}},
        {"id": "deepseek/deepseek-chat", "name": "DeepSeek", "context_length": 65536,
         "pricing": {"prompt": "0.00000014", "completion": "0.00000028"},
         "supported_parameters": ["reasoning", "include_reasoning", "max_tokens"],
         "top_provider": {"max_completion_tokens": None}},
        {"id": "acme/thinker", "name": "Acme Thinker", "context_length": 32000,
         "pricing": {"prompt": "0.000001", "completion": "0.000004"},
         "supported_parameters": ["include_reasoning", "max_tokens", "seed"],
         "top_provider": {"max_completion_tokens": 8000}},
        # No capabilities in the listing: what the catalog knows stays.
        {"id": "openai/o1-preview", "name": "o1-preview", "context_length": 128000,
         "pricing": {"prompt": "0.000015", "completion": "0.00006"}},
    ]
    gpt4o = CatalogModel.objects.get(model_id="openai/gpt-4o")
    gpt4o.supported_parameters, gpt4o.staff_override = ["max_tokens", "temperature"], True
    gpt4o.save()
    shipped_o1 = CatalogModel.objects.get(model_id="openai/o1-preview").supported_parameters

    catalog_sync_task.apply().get()

    mini = CatalogModel.objects.get(model_id="openai/gpt-4o-mini")
    assert mini.supported_parameters == sorted(
        ["max_tokens", "temperature", "tools", "tool_choice", "response_format", "top_p"])
    assert (mini.is_reasoning, mini.max_completion_tokens) == (False, 16384)
    gpt4o.refresh_from_db()
    assert gpt4o.supported_parameters == ["max_tokens", "temperature"]  # staff's, kept
    assert gpt4o.max_completion_tokens is None
    deepseek = CatalogModel.objects.get(model_id="deepseek/deepseek-chat")
    assert deepseek.is_reasoning and deepseek.max_completion_tokens is None
    thinker = CatalogModel.objects.get(model_id="acme/thinker")
    assert (thinker.is_reasoning, thinker.max_completion_tokens) == (True, 8000)
    assert thinker.supported_parameters == ["include_reasoning", "max_tokens", "seed"]
    o1 = CatalogModel.objects.get(model_id="openai/o1-preview")
    assert o1.supported_parameters == shipped_o1 and o1.is_reasoning


def test_a_synced_models_capabilities_are_listed(tenant, fake_upstream):
    fake_upstream.model_listing = [
        {"id": "openai/gpt-4o-mini", "name": "GPT-4o mini", "context_length": 128000,
         "architecture": {"input_modalities": ["text", "image"]},
         "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
         "supported_parameters": ["max_tokens", "temperature", "tools", "structured_outputs"],
         "top_provider": {"max_completion_tokens": 16384}},
    ]
    catalog_sync_task.apply().get()

    response = Client().get("/api/v1/models/openai/gpt-4o-mini",
                            HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")

    entry = response.json()
    assert entry["capabilities"] == {"vision": True, "reasoning": False, "tools": True,
                                     "structured_output": True}
    assert entry["supported_parameters"] == [
        "max_tokens", "structured_outputs", "temperature", "tools"]
    assert entry["max_completion_tokens"] == 16384
