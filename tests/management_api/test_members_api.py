"""The management API's members: list, invite (by email), change roles, remove."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from accounts.models import AuditEvent, Membership
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db

MEMBERS = "/api/v1/members"
Role = Membership.Role


def test_a_member_lists_the_people_of_their_own_organization_only(
        tenant, other_tenant, person, session_client):
    colleague = person(tenant, Role.VIEWER)

    response = session_client(colleague).get(MEMBERS)

    assert response.status_code == 200
    emails = [row["email"] for row in response.json()["data"]]
    assert emails == [tenant.user.email, colleague.email]
    assert other_tenant.user.email not in response.content.decode()


def test_api_keys_cannot_read_or_manage_members(tenant, key_client):
    client = key_client(tenant)  # every scope, keys:write included

    assert_error(client.get(MEMBERS), 403, "forbidden")
    assert_error(client.post(MEMBERS, {"email": "x@example.test"}, format="json"), 403,
                 "forbidden")
    mine = Membership.objects.get(user=tenant.user)
    assert_error(client.patch(f"{MEMBERS}/{mine.pk}", {"role": "viewer"}, format="json"), 403,
                 "forbidden")
    assert_error(client.delete(f"{MEMBERS}/{mine.pk}"), 403, "forbidden")
    assert Membership.objects.filter(organization=tenant.org).count() == 1


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.VIEWER])
def test_developers_and_viewers_cannot_manage_members(tenant, person, session_client, role):
    client = session_client(person(tenant, role))
    owner = Membership.objects.get(user=tenant.user)

    assert_error(client.post(MEMBERS, {"email": "new@example.test"}, format="json"), 403,
                 "forbidden")
    assert_error(client.patch(f"{MEMBERS}/{owner.pk}", {"role": "viewer"}, format="json"), 403,
                 "forbidden")
    assert_error(client.delete(f"{MEMBERS}/{owner.pk}"), 403, "forbidden")
    owner.refresh_from_db()
    assert owner.role == Role.OWNER
    assert not get_user_model().objects.filter(email="new@example.test").exists()


def test_inviting_a_new_person_emails_a_link_that_sets_their_password(
        tenant, person, session_client, django_capture_on_commit_callbacks):
    admin = person(tenant, Role.ADMIN)

    with django_capture_on_commit_callbacks(execute=True):
        response = session_client(admin).post(MEMBERS, {"email": "New.Hire@Example.test",
                                                        "role": "developer"}, format="json")

    assert response.status_code == 201
    assert response.json()["email"] == "new.hire@example.test"
    invited = get_user_model().objects.get(email="new.hire@example.test")
    assert not invited.has_usable_password()
    assert Membership.objects.get(user=invited, organization=tenant.org).role == Role.DEVELOPER
    assert AuditEvent.objects.filter(action="membership.invite", actor=admin).exists()
    (message,) = mail.outbox
    assert message.to == ["new.hire@example.test"]
    assert tenant.org.name in message.subject
    link = re.search(r"http://testserver(/portal/password-reset/\S+/)", message.body)
    assert link, message.body

    # When they follow the link and choose a password, they can sign in with it
    browser = Client()
    form = browser.get(link.group(1), follow=True)
    assert form.status_code == 200 and form.context["validlink"]
    done = browser.post(form.redirect_chain[-1][0], {
        "new_password1": "a-brand-new-password-77", "new_password2": "a-brand-new-password-77",
    })
    assert done.status_code == 302 and done["Location"].endswith("/portal/password-reset/done/")
    assert Client().login(username="new.hire@example.test", password="a-brand-new-password-77")


def test_inviting_someone_who_has_an_account_emails_a_sign_in_link(
        tenant, other_tenant, session_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = session_client(tenant.user).post(
            MEMBERS, {"email": other_tenant.user.email, "role": "viewer"}, format="json")

    assert response.status_code == 201
    assert Membership.objects.get(user=other_tenant.user, organization=tenant.org).role == "viewer"
    (message,) = mail.outbox
    assert "password-reset" not in message.body
    assert "http://testserver/portal/" in message.body


def test_inviting_an_existing_member_again_is_refused(tenant, person, session_client):
    colleague = person(tenant, Role.DEVELOPER)

    response = session_client(tenant.user).post(MEMBERS, {"email": colleague.email},
                                                 format="json")

    body = assert_error(response, 400, "invalid_request")
    assert body["error"]["param"] == "email"
    assert not mail.outbox


def test_an_owner_changes_a_role_and_removes_a_member(tenant, person, session_client):
    colleague = person(tenant, Role.DEVELOPER)
    membership = Membership.objects.get(user=colleague)
    client = session_client(tenant.user)

    changed = client.patch(f"{MEMBERS}/{membership.pk}", {"role": "admin"}, format="json")
    removed = client.delete(f"{MEMBERS}/{membership.pk}")

    assert changed.status_code == 200 and changed.json()["role"] == "admin"
    assert removed.status_code == 204
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditEvent.objects.filter(action="membership.role", target=str(colleague)).exists()
    assert AuditEvent.objects.filter(action="membership.remove", target=str(colleague)).exists()


def test_the_last_owner_can_be_neither_demoted_nor_removed(tenant, person, session_client):
    admin = session_client(person(tenant, Role.ADMIN))
    owner = Membership.objects.get(user=tenant.user)

    demoted = admin.patch(f"{MEMBERS}/{owner.pk}", {"role": "admin"}, format="json")
    removed = admin.delete(f"{MEMBERS}/{owner.pk}")

    assert "owner" in assert_error(demoted, 409, "conflict")["error"]["message"]
    assert_error(removed, 409, "conflict")
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_with_a_second_owner_the_first_may_step_down(tenant, person, session_client):
    person(tenant, Role.OWNER, name="second-owner")
    owner = Membership.objects.get(user=tenant.user)

    response = session_client(tenant.user).patch(f"{MEMBERS}/{owner.pk}", {"role": "developer"},
                                                 format="json")

    assert response.status_code == 200
    owner.refresh_from_db()
    assert owner.role == Role.DEVELOPER


def test_an_unknown_role_is_refused(tenant, person, session_client):
    membership = Membership.objects.get(user=person(tenant, Role.VIEWER))

    response = session_client(tenant.user).patch(f"{MEMBERS}/{membership.pk}", {"role": "god"},
                                                 format="json")

    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("method, payload", [("patch", {"role": "viewer"}), ("delete", None)])
def test_another_organizations_member_is_404(tenant, other_tenant, session_client, method,
                                              payload):
    theirs = Membership.objects.get(user=other_tenant.user)

    response = getattr(session_client(tenant.user), method)(f"{MEMBERS}/{theirs.pk}", payload,
                                                            format="json")

    assert_error(response, 404, "not_found")
    assert other_tenant.user.email not in response.content.decode()
    theirs.refresh_from_db()
    assert theirs.role == Role.OWNER
