"""Given a user locked out of signing in, when they complete a password reset through the
emailed link, then they sign in with the new password at once, as the lockout page promises
("try again later or reset your password"); another locked-out user stays locked."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from tests.security.test_signin_throttle import (
    ELSEWHERE,
    assert_locked_out,
    fail_until_locked,
    sign_in,
)

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-brand-new-long-password"


def reset_password(email: str, new_password: str) -> None:
    """The whole reset flow through the portal's views: ask, follow the emailed link, set."""
    client = Client()
    asked = client.post("/portal/password-reset/", {"email": email})
    assert asked["Location"] == "/portal/password-reset/sent/"
    message = mail.outbox[-1]
    link = re.search(r"http://testserver(/portal/password-reset/\S+/)", message.body).group(1)
    form = client.get(link, follow=True)
    assert form.context["validlink"]
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new_password,
                                                    "new_password2": new_password})
    assert done["Location"] == "/portal/password-reset/done/"


def test_given_a_locked_out_user_when_they_reset_their_password_then_they_sign_in(tenant):
    client = Client()
    fail_until_locked(client)
    assert_locked_out(sign_in(client))

    reset_password("owner@acme.test", NEW_PASSWORD)
    response = sign_in(client, password=NEW_PASSWORD)

    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_the_lock_is_lifted_from_every_address_it_held(tenant):
    fail_until_locked(Client())
    fail_until_locked(Client(), ip=ELSEWHERE)

    reset_password("owner@acme.test", NEW_PASSWORD)

    assert sign_in(Client(), password=NEW_PASSWORD).status_code == 302
    assert sign_in(Client(), password=NEW_PASSWORD, ip=ELSEWHERE).status_code == 302


def test_another_users_reset_leaves_a_locked_user_locked(tenant, other_tenant):
    fail_until_locked(Client())

    reset_password("owner@globex.test", NEW_PASSWORD)

    assert_locked_out(sign_in(Client()))


def test_asking_for_a_reset_without_completing_it_lifts_nothing(tenant):
    fail_until_locked(Client())

    Client().post("/portal/password-reset/", {"email": "owner@acme.test"})

    assert_locked_out(sign_in(Client()))
