from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from accounts.models import Organization
from accounts.services import organization_create
from billing.models import Quota
from billing.services import account_for_organization, credits_grant, quota_set


class Command(BaseCommand):
    help = "Create an organization, optionally with starting credits and a monthly token quota."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--credits", type=int, default=0)
        parser.add_argument("--token-quota", type=int, default=None,
                            help="monthly chat_tokens quota for the organization")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        if options["credits"] < 0:
            raise CommandError("--credits cannot be negative")
        if options["token_quota"] is not None and options["token_quota"] < 0:
            raise CommandError("--token-quota cannot be negative")
        # The slug as organization_create will store it, so "Acme Inc" is
        # refused here when "acme-inc" exists rather than failing on the insert.
        if Organization.objects.filter(slug=slugify(options["slug"])).exists():
            raise CommandError(f"organization '{options['slug']}' already exists")
        with transaction.atomic():
            try:
                org = organization_create(
                    slug=options["slug"], name=options["name"], actor_label="manage.py create_org"
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            account = account_for_organization(organization=org)
            if options["credits"]:
                credits_grant(account=account, amount=options["credits"],
                              reason="initial credits (create_org)",
                              actor_label="manage.py create_org")
            if options["token_quota"] is not None:
                quota_set(organization=org, limit=options["token_quota"],
                          metric=Quota.Metric.CHAT_TOKENS, period=Quota.Period.MONTHLY,
                          actor_label="manage.py create_org", reason="create_org --token-quota")
        self.stdout.write(f"created organization {org.slug} (id {org.pk})")
