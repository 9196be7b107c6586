"""Load the shipped model catalog so a fresh install knows its models."""

from django.db import migrations


def load(apps, schema_editor):
    from completions.catalog import catalog_load

    catalog_load(
        provider_model=apps.get_model("completions", "Provider"),
        catalog_model=apps.get_model("completions", "CatalogModel"),
        route_model=apps.get_model("completions", "ModelRoute"),
        update=False,
    )


def unload(apps, schema_editor):
    from completions.catalog import catalog_data

    data = catalog_data()
    apps.get_model("completions", "CatalogModel").objects.filter(
        model_id__in=[item["id"] for item in data["models"]]
    ).delete()
    apps.get_model("completions", "Provider").objects.filter(
        slug__in=[item["slug"] for item in data["providers"]]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("completions", "0001_initial")]

    operations = [migrations.RunPython(load, unload)]
