from django.core.management.base import BaseCommand, CommandError

from accounts.models import APIKey
from accounts.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its visible prefix (sk_ and nine characters)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("prefix")
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        key = APIKey.objects.filter(prefix=options["prefix"]).select_related("organization").first()
        if key is None:
            raise CommandError(f"no API key with prefix '{options['prefix']}'")
        if not api_key_revoke(key=key, actor_label="manage.py revoke_api_key",
                              reason=options["reason"]):
            raise CommandError(f"key {key.prefix} was already revoked")
        self.stdout.write(f"revoked {key.prefix} ({key.organization.slug})")
