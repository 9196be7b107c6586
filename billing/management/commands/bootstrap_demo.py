"""First-run set-up for `make run`: a demo organization, an admin user and a demo key.

Prints the admin password and the key once, the first time; later runs say
the demo exists and print no secret (they are not stored anywhere to print),
but how to set a new admin password. `make run` passes its HOST and PORT so
the printed addresses are the ones it serves on.
"""

import os
import secrets
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Membership, Organization
from accounts.scopes import ALL_SCOPES
from accounts.services import api_key_create, membership_add, organization_create
from billing.services import account_for_organization, credits_grant

DEMO_SLUG = "demo"


class Command(BaseCommand):
    help = "Create the demo organization, admin user and API key if they do not exist yet."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1", help="the address NovaKit serves on")
        parser.add_argument("--port", type=int, default=8000, help="the port NovaKit serves on")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        base_url = _base_url(options["host"], options["port"])
        if Organization.objects.filter(slug=DEMO_SLUG).exists():
            self.stdout.write("\n".join([
                "demo organization exists; its admin password and key were shown on the "
                "first run (create another key: manage.py create_api_key)",
                f"  lost the admin password? {_python()} manage.py changepassword admin",
                f"  portal:        {base_url}/portal/",
            ]))
            return
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user_model = get_user_model()
            admin = user_model.objects.filter(username="admin").first()
            created_admin = admin is None
            if created_admin:
                admin = user_model.objects.create_superuser(
                    username="admin", email="admin@localhost", password=password
                )
            assert admin is not None
            org = organization_create(slug=DEMO_SLUG, name="Demo", actor_label="bootstrap_demo")
            membership_add(organization=org, user=admin, role=Membership.Role.OWNER)
            credits_grant(
                account=account_for_organization(organization=org),
                amount=settings.DEMO_CREDITS,
                reason="demo credits",
                actor_label="bootstrap_demo",
            )
            _, secret = api_key_create(
                organization=org, name="demo", scopes=ALL_SCOPES, created_by=admin,
                actor_label="bootstrap_demo",
            )
        lines = ["", "NovaKit demo is ready (shown once; keep them now):"]
        if created_admin:
            lines.append(f"  admin user:     admin / {password}")
        lines += [
            f"  demo API key:   {secret}",
            f"  credits:        {settings.DEMO_CREDITS}",
            "  try:           curl -H 'Authorization: Bearer <key>' "
            f"{base_url}/api/v1/models",
            f"  portal:        {base_url}/portal/",
            "",
        ]
        self.stdout.write("\n".join(lines))


def _base_url(host: str, port: int) -> str:
    """Where a client on this machine reaches the server: a wildcard address is not one."""
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 (naming it, not binding it)
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _python() -> str:
    """This interpreter as the operator would type it (.venv/bin/python under make run)."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative
