from django.core.management.base import BaseCommand

from completions.catalog import catalog_load
from completions.models import CatalogModel, ModelRoute, Provider


class Command(BaseCommand):
    help = "Load the shipped model catalog (platform/catalog/models.json), keeping staff overrides."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        changed = catalog_load(
            provider_model=Provider, catalog_model=CatalogModel, route_model=ModelRoute, update=True
        )
        self.stdout.write(f"catalog loaded: {changed} model(s) created or updated")
