"""Bring the generated catalog (platform/catalog/models.json, ~360 models) to existing installs.

Forward: creates the shipped models an install lacks (a fresh install's 0002
already loaded them all) and fills in the capability fields 0009 added
(supported parameters, reasoning, largest completion) on every shipped model
staff did not override. Nothing else of an existing model changes: its tier and
multiplier stay whatever they are, and its prices and context window are the
catalog sync's to keep current; the next sync also replaces these capability
values with what the upstream lists.

Reverse: deletes the shipped models other than the 17 that 0002 shipped before
the catalog was generated, unless staff overrode them, and empties the
capability fields again. A model a catalog sync had added before and that the
shipped catalog also has is deleted too; the next sync adds it back.
"""

from django.db import migrations

# What platform/catalog/models.json held before it was generated.
FIRST_CATALOG = [
    "anthropic/claude-3-haiku", "anthropic/claude-3-opus", "anthropic/claude-3.5-sonnet",
    "deepseek/deepseek-chat", "google/gemini-1.5-flash", "google/gemini-1.5-pro",
    "google/gemini-2.0-flash", "meta-llama/llama-3.1-405b", "meta-llama/llama-3.1-70b",
    "meta-llama/llama-3.1-8b", "mistralai/mixtral-8x22b", "novakit/echo", "openai/gpt-4-turbo",
    "openai/gpt-4o", "openai/gpt-4o-mini", "openai/o1-mini", "openai/o1-preview",
]


def load(apps, schema_editor):
    from completions.catalog import CAPABILITY_FIELDS, catalog_load

    catalog_load(
        provider_model=apps.get_model("completions", "Provider"),
        catalog_model=apps.get_model("completions", "CatalogModel"),
        route_model=apps.get_model("completions", "ModelRoute"),
        update=False,
        refresh=CAPABILITY_FIELDS,
    )


def unload(apps, schema_editor):
    from completions.catalog import catalog_data

    catalog_model = apps.get_model("completions", "CatalogModel")
    shipped = [item["id"] for item in catalog_data()["models"]]
    not_overridden = catalog_model.objects.filter(model_id__in=shipped, staff_override=False)
    not_overridden.exclude(model_id__in=FIRST_CATALOG).delete()
    not_overridden.update(supported_parameters=[], is_reasoning=False, max_completion_tokens=None)


class Migration(migrations.Migration):
    dependencies = [("completions", "0009_catalog_model_capabilities")]

    operations = [migrations.RunPython(load, unload)]
