"""The catalog a fresh install ships with: generated (platform/catalog/generate.py), a few
hundred current models with prices, context windows and capabilities, the contract's
models as they were, every other model tiered by the one price rule; loaded by the
migrations alone, no sync, no network."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing.tiers import multiplier_in_range, tier_for_price
from completions.catalog import catalog_data
from completions.models import CatalogModel
from tests.completions.test_models_list import SEED_MODELS

pytestmark = pytest.mark.django_db

SAMPLING = {"temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens"}


@pytest.fixture
def fresh_install(db: None) -> None:
    """The catalog as `migrate` left the test database (0002, 0010). Asked for before any
    fixture that would load the catalog itself; pytest-django runs these tests before
    the transactional ones, whose flush empties it."""
    assert CatalogModel.objects.count() == len(catalog_data()["models"])


def _listed(tenant: Any) -> dict[str, dict[str, Any]]:
    response = Client().get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")
    assert response.status_code == 200
    return {entry["id"]: entry for entry in response.json()["data"]}


def test_given_a_fresh_database_when_listed_then_200_plus_models_have_prices_and_capabilities(
    fresh_install, tenant
):
    listed = _listed(tenant)

    assert len(listed) >= 200
    assert len(listed) == len(catalog_data()["models"])
    for model_id, entry in listed.items():
        assert entry["context_length"] > 0, model_id
        pricing = entry["pricing"]
        assert Decimal(pricing["prompt_usd_per_million"]) >= 0, model_id
        assert Decimal(pricing["completion_usd_per_million"]) >= 0, model_id
        assert set(entry["capabilities"]) == {"vision", "reasoning", "tools", "structured_output"}
        assert entry["capabilities"]["vision"] is entry["supports_vision"]
        assert isinstance(entry["supported_parameters"], list), model_id
        assert "max_completion_tokens" in entry
    assert sum(Decimal(entry["pricing"]["completion_usd_per_million"]) > 0
               for entry in listed.values()) >= 200


def test_given_a_fresh_database_then_the_contract_models_keep_their_tiers_and_multipliers(
    fresh_install, tenant
):
    listed = _listed(tenant)

    for model_id, (tier, multiplier, context, vision) in SEED_MODELS.items():
        entry = listed[model_id]
        assert (entry["tier"], entry["multiplier"]) == (tier, multiplier), model_id
        assert (entry["context_length"], entry["supports_vision"]) == (context, vision), model_id
    assert listed["novakit/echo"]["development"] is True


def test_given_a_fresh_database_then_reasoning_models_refuse_sampling_and_take_a_completion_budget(
    fresh_install, tenant
):
    listed = _listed(tenant)

    reasoning = {model_id: entry for model_id, entry in listed.items()
                 if entry["capabilities"]["reasoning"]}
    assert {"openai/o1-preview", "openai/o3", "deepseek/deepseek-r1"} <= set(reasoning)
    for model_id, entry in reasoning.items():
        parameters = set(entry["supported_parameters"])
        assert "max_completion_tokens" in parameters, model_id
        assert not parameters & SAMPLING, model_id
    # A model whose parameters the offline source does not know forwards what it is sent.
    gpt4o = listed["openai/gpt-4o"]
    assert gpt4o["supported_parameters"] == []
    assert gpt4o["capabilities"] == {"vision": True, "reasoning": False, "tools": None,
                                     "structured_output": None}


def test_every_generated_model_is_tiered_by_the_price_rule_within_its_tiers_range():
    seeds = set(SEED_MODELS)

    generated = [item for item in catalog_data()["models"] if item["id"] not in seeds]

    assert len(generated) >= 200
    for item in generated:
        tier, multiplier = tier_for_price(Decimal(item["completion_usd_per_m"]))
        assert (item["tier"], Decimal(item["multiplier"])) == (tier, multiplier), item["id"]
        assert multiplier_in_range(tier, multiplier)
        assert item["routes"] == [["openrouter", item["id"]]]
        assert item["owned_by"] == item["id"].split("/")[0]
    # No two catalog models reach the same upstream model.
    upstream = [route[1] for item in catalog_data()["models"] for route in item["routes"]]
    assert len(upstream) == len(set(upstream))
