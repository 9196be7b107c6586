"""Who may see which portal page, for which organization; CSRF on every form."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounts.models import APIKey, Membership
from accounts.services import membership_add
from tests.portal.conftest import csrf_token_from

pytestmark = pytest.mark.django_db

MEMBER_PAGES = ["/portal/", "/portal/keys/", "/portal/usage/", "/portal/billing/",
                "/portal/billing/ledger.csv", "/portal/webhooks/", "/portal/playground/",
                "/portal/members/"]
PUBLIC_PAGES = ["/portal/reference/", "/portal/reference/management/", "/portal/signin/",
                "/portal/signup/", "/portal/password-reset/"]


@pytest.mark.parametrize("path", MEMBER_PAGES)
def test_signed_out_visitors_are_sent_to_sign_in(client, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"] == f"/portal/signin/?next={path}"


@pytest.mark.parametrize("path", PUBLIC_PAGES)
def test_the_reference_and_the_sign_in_pages_are_public(client, catalog, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", MEMBER_PAGES)
def test_a_user_of_no_organization_is_told_so(outsider, path):
    client = Client()
    client.force_login(outsider)

    response = client.get(path)

    assert response.status_code == 403
    assert "not a member of any active organization" in response.content.decode()


@pytest.mark.parametrize("role", Membership.Role.values)
@pytest.mark.parametrize("path", MEMBER_PAGES)
def test_every_member_can_read_every_page(member_client, role, path):
    assert member_client(role).get(path).status_code == 200


def test_pages_name_the_organization_and_role_and_link_every_section(owner, tenant):
    page = owner.get("/portal/").content.decode()

    for link in ("/portal/keys/", "/portal/usage/", "/portal/billing/", "/portal/playground/",
                 "/portal/members/", "/portal/webhooks/", "/portal/reference/"):
        assert f'href="{link}"' in page
    assert "Acme · owner" in page and 'action="/portal/signout/"' in page


def test_no_page_loads_anything_from_another_host(owner):
    for path in [*MEMBER_PAGES[:-2], "/portal/members/", *PUBLIC_PAGES]:
        html = owner.get(path).content.decode()
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert url.startswith(("/", "#", "?", "data:")), (path, url)


# --- the organization switcher -------------------------------------------------------------------


def test_a_member_of_two_organizations_switches_between_them(tenant, other_tenant, owner):
    membership_add(organization=other_tenant.org, user=tenant.user, role="viewer")
    page = owner.get("/portal/keys/").content.decode()
    assert 'name="organization_id"' in page and "Globex (viewer)" in page
    assert tenant.key.prefix in page

    response = owner.post("/portal/organization/switch",
                          {"organization_id": other_tenant.org.pk, "next": "/portal/keys/"})

    assert response.status_code == 302 and response["Location"] == "/portal/keys/"
    page = owner.get("/portal/keys/").content.decode()
    assert other_tenant.key.prefix in page and tenant.key.prefix not in page
    assert "Create the key" not in page  # a viewer there


def test_switching_to_an_organization_one_is_not_a_member_of_is_refused(
        tenant, other_tenant, owner):
    response = owner.post("/portal/organization/switch", {"organization_id": other_tenant.org.pk})

    assert response.status_code == 403
    assert owner.session.get("organization_id") is None
    assert other_tenant.key.prefix not in owner.get("/portal/keys/").content.decode()


def test_the_switcher_only_redirects_within_this_site(tenant, other_tenant, owner):
    membership_add(organization=other_tenant.org, user=tenant.user, role="viewer")

    response = owner.post("/portal/organization/switch", {
        "organization_id": other_tenant.org.pk, "next": "https://evil.example/phish"})

    assert response["Location"] == "/portal/"


def test_an_organization_id_planted_in_the_session_is_ignored_unless_one_is_a_member(
        tenant, other_tenant, owner):
    session = owner.session
    session["organization_id"] = other_tenant.org.pk
    session.save()

    page = owner.get("/portal/keys/").content.decode()

    assert tenant.key.prefix in page and other_tenant.key.prefix not in page


# --- CSRF --------------------------------------------------------------------------------------

FORMS = [
    ("/portal/keys/", {"name": "csrf", "scopes": ["chat"]}),
    ("/portal/members/", {"email": "csrf@example.test", "role": "viewer"}),
    ("/portal/organization/switch", {"organization_id": "1"}),
    ("/portal/signout/", {}),
]


@pytest.mark.parametrize("path, data", FORMS)
def test_every_form_refuses_a_post_without_the_csrf_token(member_client, path, data):
    client = member_client(enforce_csrf_checks=True)

    response = client.post(path, data)

    assert response.status_code == 403
    assert not APIKey.objects.filter(name="csrf").exists()
    assert client.get("/portal/").status_code == 200  # still signed in


def test_key_revoke_and_rotate_refuse_a_post_without_the_csrf_token(tenant, member_client):
    client = member_client(enforce_csrf_checks=True)

    for action in ("revoke", "rotate"):
        assert client.post(f"/portal/keys/{tenant.key.pk}/{action}").status_code == 403
    tenant.key.refresh_from_db()
    assert tenant.key.revoked_at is None


def test_with_the_token_from_the_page_the_same_post_works(member_client):
    client = member_client(enforce_csrf_checks=True)
    token = csrf_token_from(client.get("/portal/keys/").content.decode())

    response = client.post("/portal/keys/", {"name": "csrf", "scopes": ["chat"],
                                             "csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert APIKey.objects.filter(name="csrf").exists()


def test_sign_in_refuses_a_post_without_the_csrf_token(tenant):
    client = Client(enforce_csrf_checks=True)

    response = client.post("/portal/signin/", {"username": "acme-owner",
                                               "password": "a-long-test-password"})

    assert response.status_code == 403
