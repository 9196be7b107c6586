"""Given an install that migrated before the catalog was generated (17 models, no
capabilities), completions 0010 adds the shipped models it lacks and fills in the
capabilities of the models staff did not override, changing nothing else; its reverse
takes the install back."""

from __future__ import annotations

import importlib
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from completions.catalog import catalog_data
from completions.models import CatalogModel, ModelRoute

pytestmark = pytest.mark.django_db

MIGRATION = "0010_load_generated_catalog"
migration = importlib.import_module(f"completions.migrations.{MIGRATION}")


@pytest.fixture
def historical_apps(catalog):  # type: ignore[no-untyped-def]
    return MigrationLoader(connection).project_state(("completions", MIGRATION)).apps


@pytest.fixture
def install_before_0010(catalog) -> None:  # type: ignore[no-untyped-def]
    """The first catalog's 17 models with 0009's empty capability columns; staff have
    overridden gpt-4o and a sync has moved gpt-4o-mini's price."""
    CatalogModel.objects.exclude(model_id__in=migration.FIRST_CATALOG).delete()
    CatalogModel.objects.update(supported_parameters=[], is_reasoning=False,
                                max_completion_tokens=None)
    CatalogModel.objects.filter(model_id="openai/gpt-4o").update(
        staff_override=True, tier="powerful", multiplier=Decimal("2.5"),
        supported_parameters=["temperature"])
    CatalogModel.objects.filter(model_id="openai/gpt-4o-mini").update(
        prompt_usd_per_m=Decimal("0.2"))


def test_given_an_old_install_when_0010_runs_then_it_has_the_whole_shipped_catalog(
    install_before_0010, historical_apps
):
    migration.load(historical_apps, None)

    shipped = {item["id"]: item for item in catalog_data()["models"]}
    assert set(CatalogModel.objects.values_list("model_id", flat=True)) == set(shipped)
    assert ModelRoute.objects.count() == sum(len(item["routes"]) for item in shipped.values())
    o3 = CatalogModel.objects.get(model_id="openai/o3")
    assert o3.is_reasoning and "max_completion_tokens" in o3.supported_parameters
    assert (o3.tier, o3.multiplier) == (shipped["openai/o3"]["tier"],
                                        Decimal(shipped["openai/o3"]["multiplier"]))


def test_given_an_old_install_when_0010_runs_then_capabilities_are_filled_and_staff_choices_kept(
    install_before_0010, historical_apps
):
    migration.load(historical_apps, None)

    o1 = CatalogModel.objects.get(model_id="openai/o1-preview")
    assert o1.is_reasoning and "temperature" not in o1.supported_parameters
    gpt4o = CatalogModel.objects.get(model_id="openai/gpt-4o")
    assert (gpt4o.tier, gpt4o.multiplier) == ("powerful", Decimal("2.5"))
    assert gpt4o.supported_parameters == ["temperature"]  # overridden: left alone
    mini = CatalogModel.objects.get(model_id="openai/gpt-4o-mini")
    assert mini.prompt_usd_per_m == Decimal("0.2")  # prices are the sync's, not the file's
    assert (mini.tier, mini.multiplier) == ("basic", Decimal("1.0"))


def test_given_0010_applied_when_reversed_then_the_first_catalog_is_left(
    install_before_0010, historical_apps
):
    migration.load(historical_apps, None)

    migration.unload(historical_apps, None)

    remaining = set(CatalogModel.objects.values_list("model_id", flat=True))
    assert remaining == set(migration.FIRST_CATALOG)
    o1 = CatalogModel.objects.get(model_id="openai/o1-preview")
    assert (o1.is_reasoning, o1.supported_parameters) == (False, [])
    assert CatalogModel.objects.get(model_id="openai/gpt-4o").supported_parameters == [
        "temperature"]
    migration.load(historical_apps, None)  # and forward again
    assert CatalogModel.objects.count() == len(catalog_data()["models"])
