"""What a visitor meets off the beaten path: `/`, an unknown page, a refused form.

`make run` serves with DEBUG on, so these run with DEBUG on too: that is where
Django would otherwise answer with its technical pages, which list every URL
pattern of the site.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import APIKey
from portal.views.playground import PLAYGROUND_KEY_NAME

pytestmark = pytest.mark.django_db

DJANGO_TECHNICAL_404 = "Using the URLconf defined in"
DJANGO_CSRF_PAGE = "CSRF verification failed"


@pytest.fixture(autouse=True, params=[True, False], ids=["debug", "production"])
def debug(request, settings) -> bool:  # type: ignore[no-untyped-def]
    settings.DEBUG = request.param
    return request.param


def assert_novakit_not_found(response) -> None:  # type: ignore[no-untyped-def]
    page = response.content.decode()
    assert response.status_code == 404
    assert DJANGO_TECHNICAL_404 not in page and "novakit.urls" not in page
    assert 'data-testid="not-found"' in page, page[:500]
    assert 'href="/portal/"' in page


def test_the_site_root_leads_to_the_portal(client):
    response = client.get("/")

    assert response.status_code == 302 and response["Location"] == "/portal/"


def test_the_admins_view_site_link_leads_to_the_portal(client):
    admin = get_user_model().objects.create_superuser("root", "root@example.test", "pw-long-1")
    client.force_login(admin)

    page = client.get("/admin/").content.decode()

    assert '<a href="/portal/">View site</a>' in page


@pytest.mark.parametrize("path", ["/no-such-page", "/portal/no-such-page/", "/admin/no-such/"])
def test_an_unknown_page_is_novakits_own_not_found_page(owner, path):
    if path.startswith("/admin/"):
        owner = Client()
        owner.force_login(get_user_model().objects.create_superuser(
            "root", "root@example.test", "pw-long-1"))

    assert_novakit_not_found(owner.get(path))


def test_an_unknown_receipt_is_novakits_own_not_found_page(owner):
    assert_novakit_not_found(owner.get("/portal/usage/gen-does-not-exist/"))


def test_a_path_without_its_slash_is_still_redirected_to_the_one_with_it(owner):
    response = owner.get("/portal/keys")

    assert response.status_code == 301 and response["Location"] == "/portal/keys/"


def test_an_unknown_api_path_answers_in_the_apis_json_error_shape(client):
    response = client.get("/api/v1/no-such-endpoint")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_form_posted_without_its_csrf_token_gets_novakits_own_page(member_client):
    client = member_client(enforce_csrf_checks=True)

    response = client.post("/portal/keys/", {"name": "csrf", "scopes": ["chat"]})

    page = response.content.decode()
    assert response.status_code == 403
    assert DJANGO_CSRF_PAGE not in page
    assert 'data-testid="csrf-failure"' in page and "reload" in page.lower()
    assert not APIKey.objects.filter(name="csrf").exists()


def test_a_playground_request_without_its_csrf_token_is_refused_in_json_the_page_can_show(
        member_client):
    client = member_client(enforce_csrf_checks=True)

    response = client.post("/portal/playground/stream", {"model": "novakit/echo", "messages": [
        {"role": "user", "content": "Hi"}]}, content_type="application/json")

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden" and "reload" in error["message"].lower()
    assert not APIKey.objects.filter(name=PLAYGROUND_KEY_NAME).exists()
