"""The operator's commands: create an organization and a key, revoke it, grant credits."""

from __future__ import annotations

import io
import re
import shlex
import subprocess

import pytest
from django.conf import settings as settings_module
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts import auth
from accounts.models import APIKey, AuditEvent, Organization
from accounts.scopes import ALL_SCOPES
from billing.models import LedgerEntry, Quota
from billing.selectors import credit_summary
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_given_create_org_with_credits_and_a_token_quota_then_both_take_effect():
    run("create_org", "initech", "--name", "Initech", "--credits", "5000", "--token-quota", "20000")

    org = Organization.objects.get(slug="initech")
    assert org.name == "Initech"
    grant = LedgerEntry.objects.get(account__organization=org)
    assert (grant.kind, grant.amount, grant.balance_after) == ("grant", 5000, 5000)
    assert grant.actor_label == "manage.py create_org"
    quota = Quota.objects.get(organization=org, api_key__isnull=True)
    assert (quota.metric, quota.period, quota.limit) == ("chat_tokens", "monthly", 20000)
    summary = credit_summary(organization_id=org.pk)
    assert summary["balance"] == 5000
    assert summary["quotas"][0]["remaining"] == 20000
    assert AuditEvent.objects.filter(organization=org, action="organization.create").exists()


def test_given_create_org_without_options_then_no_credits_and_no_quota():
    run("create_org", "hooli")

    org = Organization.objects.get(slug="hooli")
    assert credit_summary(organization_id=org.pk)["balance"] == 0
    assert not LedgerEntry.objects.filter(account__organization=org).exists()
    assert not Quota.objects.filter(organization=org).exists()


def test_given_an_existing_slug_when_create_org_runs_again_then_it_refuses():
    run("create_org", "acme-inc")

    with pytest.raises(CommandError, match="already exists"):
        run("create_org", "Acme Inc")  # slugifies to the same slug

    assert Organization.objects.filter(slug="acme-inc").count() == 1


def test_given_create_api_key_then_the_secret_is_the_last_line_and_it_authenticates(client):
    run("create_org", "initech", "--credits", "10")

    out, err = run("create_api_key", "--org", "initech", "--scopes", "models,billing:read")

    secret = out.strip().splitlines()[-1]
    assert re.fullmatch(r"sk_[A-Za-z0-9_-]{32,}", secret)
    assert secret not in err  # stderr (often logged) names the key by prefix only
    key = APIKey.objects.get(organization__slug="initech")
    assert key.prefix in err and key.scopes == ["billing:read", "models"]
    answer = client.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert answer.status_code == 200 and answer.json()["balance"] == 10


def test_given_an_unknown_scope_when_create_api_key_runs_then_it_refuses_and_creates_nothing():
    run("create_org", "initech")

    with pytest.raises(CommandError, match="unknown scope"):
        run("create_api_key", "--org", "initech", "--scopes", "models,root")

    assert not APIKey.objects.exists()


def test_given_revoke_api_key_then_the_key_stops_working_and_a_second_revoke_refuses(client):
    run("create_org", "initech")
    out, _ = run("create_api_key", "--org", "initech", "--scopes", "models")
    secret = out.strip().splitlines()[-1]
    key = APIKey.objects.get()
    assert client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200

    revoked, _ = run("revoke_api_key", key.prefix, "--reason", "left the company")
    auth.cache_clear()

    assert key.prefix in revoked
    assert_error(
        client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}"), 401, "unauthorized"
    )
    event = AuditEvent.objects.get(action="api_key.revoke")
    assert (event.target, event.reason) == (key.prefix, "left the company")
    with pytest.raises(CommandError, match="already revoked"):
        run("revoke_api_key", key.prefix)


def test_given_grant_credits_with_an_idempotency_key_twice_then_one_entry():
    run("create_org", "initech")

    pilot = ("grant_credits", "300", "--org", "initech", "--reason", "pilot")
    run(*pilot, "--idempotency-key", "po-1")
    run(*pilot, "--idempotency-key", "po-1")
    run("grant_credits", "5", "--org", "initech", "--reason", "goodwill")

    org = Organization.objects.get(slug="initech")
    entries = LedgerEntry.objects.filter(account__organization=org).order_by("id")
    assert [(e.amount, e.reason) for e in entries] == [(300, "pilot"), (5, "goodwill")]
    assert credit_summary(organization_id=org.pk)["balance"] == 305


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_given_a_non_positive_grant_then_grant_credits_refuses(amount):
    run("create_org", "initech")

    with pytest.raises(CommandError):
        run("grant_credits", amount, "--org", "initech")

    assert not LedgerEntry.objects.exists()


def test_given_bootstrap_demo_then_the_secrets_are_printed_the_first_time_only(client, settings):
    first, _ = run("bootstrap_demo")

    password = re.search(r"admin user:\s+admin / (\S+)", first).group(1)
    secret = re.search(r"demo API key:\s+(sk_\S+)", first).group(1)
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    answer = client.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert answer.status_code == 200
    assert answer.json()["balance"] == settings.DEMO_CREDITS
    assert set(APIKey.objects.get(organization__slug="demo").scopes) == set(ALL_SCOPES)

    second, _ = run("bootstrap_demo")

    assert "exists" in second
    assert password not in second and secret not in second and "sk_" not in second
    assert Organization.objects.filter(slug="demo").count() == 1
    assert APIKey.objects.filter(organization__slug="demo").count() == 1
    assert LedgerEntry.objects.filter(account__organization__slug="demo").count() == 1


def bootstrap_arguments_of_make_run(**variables: str) -> list[str]:
    """The arguments `make run` gives bootstrap_demo, read from make's own dry run."""
    assignments = [f"{name}={value}" for name, value in variables.items()]
    plan = subprocess.run(["make", "--dry-run", "--always-make", "run", *assignments],
                          cwd=settings_module.BASE_DIR, capture_output=True, text=True,
                          check=True).stdout
    line = next(line for line in plan.splitlines() if "manage.py bootstrap_demo" in line)
    return shlex.split(line.split("manage.py ", 1)[1])


def test_given_make_run_on_another_port_then_the_first_runs_hint_names_that_port():
    out, _ = run(*bootstrap_arguments_of_make_run(PORT="9123"))

    assert "http://127.0.0.1:9123/api/v1/models" in out
    assert ":8000" not in out


def test_given_make_run_on_every_address_then_the_hint_names_one_a_client_can_reach():
    out, _ = run(*bootstrap_arguments_of_make_run(HOST="0.0.0.0", PORT="8080"))

    assert "http://127.0.0.1:8080/" in out and "0.0.0.0" not in out


def test_given_a_second_run_then_it_says_how_to_reset_the_admin_password():
    run("bootstrap_demo")

    second, _ = run("bootstrap_demo")

    assert "manage.py changepassword admin" in second
