"""The members page: owners and admins invite, change roles and remove; others only read."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from accounts.models import Membership

pytestmark = pytest.mark.django_db

MEMBERS = "/portal/members/"
Role = Membership.Role


def test_an_owner_invites_someone_who_gets_an_email_with_a_password_link(
        owner, tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.post(MEMBERS, {"email": "grace@example.test", "role": "admin"})

    assert response.status_code == 302
    invited = get_user_model().objects.get(email="grace@example.test")
    assert Membership.objects.get(user=invited, organization=tenant.org).role == Role.ADMIN
    (message,) = mail.outbox
    assert message.to == ["grace@example.test"]
    assert re.search(r"http://testserver/portal/password-reset/\S+/\S+/", message.body)
    page = owner.get(MEMBERS).content.decode()
    assert "grace@example.test" in page


def test_an_invalid_invitation_shows_the_error(owner, tenant):
    response = owner.post(MEMBERS, {"email": "owner@acme.test", "role": "viewer"})

    assert response.status_code == 400
    assert "already a member" in response.content.decode()
    assert not mail.outbox


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.VIEWER])
def test_developers_and_viewers_see_members_but_cannot_manage_them(member_client, tenant, role):
    client = member_client(role)
    owner = Membership.objects.get(user=tenant.user)

    page = client.get(MEMBERS).content.decode()

    assert "owner@acme.test" in page
    assert "Send the invitation" not in page and ">Remove<" not in page
    assert client.post(MEMBERS, {"email": "x@example.test", "role": "owner"}).status_code == 403
    assert client.post(f"/portal/members/{owner.pk}/role", {"role": "viewer"}).status_code == 403
    assert client.post(f"/portal/members/{owner.pk}/remove").status_code == 403
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_an_admin_changes_a_role_and_removes_a_member(member_client, tenant):
    admin = member_client(Role.ADMIN)
    developer = Membership.objects.get(pk=Membership.objects.create(
        organization=tenant.org, role=Role.DEVELOPER,
        user=get_user_model().objects.create_user(username="dev", email="dev@acme.test")).pk)

    changed = admin.post(f"/portal/members/{developer.pk}/role", {"role": "viewer"}, follow=True)
    removed = admin.post(f"/portal/members/{developer.pk}/remove", follow=True)

    assert "dev is now viewer" in changed.content.decode()
    assert "Removed dev" in removed.content.decode()
    assert not Membership.objects.filter(pk=developer.pk).exists()


def test_the_last_owner_is_kept_with_a_message(member_client, tenant):
    admin = member_client(Role.ADMIN)
    owner = Membership.objects.get(user=tenant.user)

    demoted = admin.post(f"/portal/members/{owner.pk}/role", {"role": "viewer"}, follow=True)
    removed = admin.post(f"/portal/members/{owner.pk}/remove", follow=True)

    assert "at least one owner" in demoted.content.decode()
    assert "at least one owner" in removed.content.decode()
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_another_organizations_member_is_404(owner, other_tenant):
    theirs = Membership.objects.get(user=other_tenant.user)

    assert owner.post(f"/portal/members/{theirs.pk}/role", {"role": "viewer"}).status_code == 404
    assert owner.post(f"/portal/members/{theirs.pk}/remove").status_code == 404
    theirs.refresh_from_db()
    assert theirs.role == Role.OWNER
