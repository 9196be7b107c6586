"""Signing up (a user, an organization, starter credits), signing in and out, password resets."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from accounts.models import Membership, Organization
from billing.models import LedgerEntry
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db

SIGNUP = "/portal/signup/"
SIGNIN = "/portal/signin/"
NEW_PASSWORD = "a-fresh-password-for-you-31"


def sign_up(client: Client, **fields: str):  # type: ignore[no-untyped-def]
    data = {"email": "ada@example.test", "password": NEW_PASSWORD, "organization": "Analytical"}
    return client.post(SIGNUP, {**data, **fields})


def test_signing_up_creates_an_owner_an_organization_and_starter_credits(client, settings):
    settings.PORTAL_SIGNUP_CREDITS = 12_345

    response = sign_up(client)

    assert response.status_code == 302 and response["Location"] == "/portal/keys/"
    user = get_user_model().objects.get(email="ada@example.test")
    membership = Membership.objects.get(user=user)
    assert membership.role == Membership.Role.OWNER
    organization = membership.organization
    assert (organization.name, organization.slug) == ("Analytical", "analytical")
    grant = LedgerEntry.objects.get(account__organization=organization)
    assert (grant.kind, grant.amount, grant.balance_after) == ("grant", 12_345, 12_345)
    assert grant.actor == user
    # Signed in, acting for the new organization.
    assert client.session["organization_id"] == organization.pk
    assert "12,345 credits" in client.get("/portal/keys/").content.decode()


def test_a_taken_organization_name_gets_a_slug_of_its_own(client, tenant):
    sign_up(client, organization="Acme")

    organization = Organization.objects.get(memberships__user__email="ada@example.test")
    assert organization.slug != tenant.org.slug and organization.slug.startswith("acme-")


@pytest.mark.parametrize("fields, field, message", [
    ({"email": "owner@acme.test"}, "email", "An account with this email exists"),
    ({"email": "not-an-email"}, "email", "Enter a valid email address"),
    ({"password": "password"}, "password", "too common"),
    ({"organization": ""}, "organization", "This field is required"),
])
def test_sign_up_shows_what_is_wrong_and_creates_nothing(client, tenant, fields, field, message):
    users = get_user_model().objects.count()

    response = sign_up(client, **fields)

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field])
    assert message in response.content.decode()
    assert get_user_model().objects.count() == users
    assert Organization.objects.count() == 1


def test_a_signed_in_member_visiting_sign_up_goes_to_the_overview(owner):
    response = owner.get(SIGNUP)

    assert response.status_code == 302 and response["Location"] == "/portal/"


@pytest.mark.parametrize("login", ["owner@acme.test", "OWNER@ACME.TEST", "acme-owner"])
def test_members_sign_in_with_their_email_or_username(client, tenant, login):
    response = client.post(SIGNIN, {"username": login, "password": PASSWORD})

    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message(client, tenant):
    response = client.post(SIGNIN, {"username": "owner@acme.test", "password": "wrong"})

    assert response.status_code == 200
    assert "Please enter a correct" in response.content.decode()
    assert client.get("/portal/").status_code == 302


def test_signing_out_ends_the_session(owner):
    response = owner.post("/portal/signout/")

    assert response.status_code == 302 and response["Location"] == SIGNIN
    assert owner.get("/portal/keys/")["Location"].startswith(SIGNIN)


def test_a_forgotten_password_is_reset_through_an_emailed_link(client, tenant):
    asked = client.post("/portal/password-reset/", {"email": "owner@acme.test"})

    assert asked.status_code == 302 and asked["Location"] == "/portal/password-reset/sent/"
    (message,) = mail.outbox
    assert message.to == ["owner@acme.test"]
    link = re.search(r"http://testserver(/portal/password-reset/\S+/)", message.body).group(1)
    form = client.get(link, follow=True)
    assert form.context["validlink"]
    done = client.post(form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD,
                                                    "new_password2": NEW_PASSWORD})
    assert done["Location"] == "/portal/password-reset/done/"
    assert Client().login(username="acme-owner", password=NEW_PASSWORD)
    # The link works once.
    assert not client.get(link, follow=True).context["validlink"]


def test_a_password_reset_for_an_unknown_email_sends_nothing_and_says_the_same(client):
    response = client.post("/portal/password-reset/", {"email": "nobody@example.test"})

    assert response["Location"] == "/portal/password-reset/sent/"
    assert not mail.outbox
