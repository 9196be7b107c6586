from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organization
from billing.services import account_for_organization, credits_grant


class Command(BaseCommand):
    help = "Grant credits to an organization (a ledger entry with a reason)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("amount", type=int)
        parser.add_argument("--org", required=True)
        parser.add_argument("--reason", default="granted with manage.py grant_credits")
        parser.add_argument("--idempotency-key", default=None)

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"no organization '{options['org']}'")
        try:
            entry = credits_grant(
                account=account_for_organization(organization=org),
                amount=options["amount"],
                reason=options["reason"],
                actor_label="manage.py grant_credits",
                idempotency_key=options["idempotency_key"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{org.slug}: +{entry.amount} credits, balance {entry.balance_after}")
