from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organization
from accounts.scopes import DEFAULT_SCOPES
from accounts.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key; its secret is printed once, as the last line of output."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--scopes", default=",".join(DEFAULT_SCOPES))
        parser.add_argument("--name", default="default")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"no organization '{options['org']}'")
        try:
            key, secret = api_key_create(
                organization=org,
                name=options["name"],
                scopes=options["scopes"].split(","),
                actor_label="manage.py create_api_key",
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"created key {key.prefix}… for {org.slug} with scopes {','.join(key.scopes)}; "
            "the secret below is shown only now"
        )
        self.stdout.write(secret)
