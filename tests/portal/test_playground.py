"""The playground: its page, and its streaming endpoint through the real gateway path."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
from django.db.models import Sum

from accounts.models import APIKey, Membership
from billing.models import LedgerEntry, Reservation
from completions.models import UsageRecord
from portal.views.playground import PLAYGROUND_KEY_NAME
from tests.conftest import Tenant
from tests.portal.conftest import PASSWORD, csrf_token_from

STREAM = "/portal/playground/stream"
HELLO = {"model": "openai/gpt-4o-mini", "temperature": 0.2, "max_tokens": 40,
         "messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hello!"}]}


# --- the page --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_offers_the_catalog_by_tier_with_the_default_model_chosen(owner, fake_upstream):
    html = owner.get("/portal/playground/").content.decode()

    tiers = re.findall(r'<optgroup label="(\w+)">', html)
    assert tiers == ["Basic", "Standard", "Powerful"]
    assert re.search(r'<option value="openai/gpt-4o-mini" selected>', html)
    assert 'data-base-url="http://testserver/api/v1"' in html
    assert 'id="pg-send">' in html  # enabled


@pytest.mark.django_db
def test_a_viewer_may_look_but_the_send_button_is_disabled(viewer):
    html = viewer.get("/portal/playground/").content.decode()

    assert 'id="pg-send" disabled' in html
    assert "which your role cannot do" in html


@pytest.mark.django_db
def test_models_without_a_configured_provider_cannot_be_picked(owner, settings):
    settings.OPENROUTER_API_KEY = ""

    html = owner.get("/portal/playground/").content.decode()

    assert re.search(r'<option value="openai/gpt-4o"[^>]* disabled>', html)
    assert re.search(r'<option value="novakit/echo" selected>', html)


# --- the endpoint's refusals ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_stream_endpoint_accepts_only_post(owner):
    assert owner.get(STREAM).status_code == 405


@pytest.mark.django_db
def test_the_stream_endpoint_refuses_a_post_without_the_csrf_token(member_client):
    client = member_client(enforce_csrf_checks=True)

    response = client.post(STREAM, HELLO, content_type="application/json")

    assert response.status_code == 403
    assert not APIKey.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


@pytest.mark.django_db
def test_a_signed_out_caller_is_refused_with_401(client):
    response = client.post(STREAM, HELLO, content_type="application/json")

    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


@pytest.mark.django_db
def test_a_viewer_cannot_spend_credits_in_the_playground(viewer):
    response = viewer.post(STREAM, HELLO, content_type="application/json")

    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("body, param", [
    ({**HELLO, "temperature": 5}, "temperature"),
    ({**HELLO, "max_tokens": 0}, "max_tokens"),
    ({**HELLO, "messages": []}, "messages"),
    ([1, 2], None),
])
def test_an_invalid_request_is_refused_with_400(owner, body, param):
    response = owner.post(STREAM, body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not Reservation.objects.exists()


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_refused_with_400(owner):
    response = owner.post(STREAM, b"{not json", content_type="application/json")

    assert response.status_code == 400 and response.json()["code"] == "invalid_request"


# --- streaming through the live server -------------------------------------------------------


def sse(raw: str) -> list[str]:
    return [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]


@pytest.fixture
def signed_in(live_gateway, fake_upstream) -> Iterator[Callable[[Tenant], httpx.Client]]:  # type: ignore[no-untyped-def]
    """An HTTP client signed in to the portal on the live server, carrying the CSRF token."""
    clients: list[httpx.Client] = []

    def make(tenant: Tenant) -> httpx.Client:
        http = httpx.Client(base_url=live_gateway.url, timeout=20)
        clients.append(http)
        form = http.get("/portal/signin/").text
        http.post("/portal/signin/", data={"username": tenant.user.username,
                                           "password": PASSWORD,
                                           "csrfmiddlewaretoken": csrf_token_from(form)})
        page = http.get("/portal/playground/")
        assert page.status_code == 200, "not signed in"
        http.headers["X-CSRFToken"] = csrf_token_from(page.text)
        return http

    yield make
    for http in clients:
        http.close()


@pytest.fixture
def live_tenant(tenant_factory, settings) -> Tenant:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return tenant_factory("playco", credits=10_000)


def test_a_member_streams_a_completion_billed_to_the_playground_key(
        live_tenant, signed_in, fake_upstream):
    http = signed_in(live_tenant)

    with http.stream("POST", STREAM, content=orjson.dumps(HELLO),
                     headers={"Content-Type": "application/json"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())

    events = sse(raw)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    text = "".join(choice["delta"].get("content") or ""
                   for chunk in chunks for choice in chunk["choices"])
    assert text == "The quick brown fox jumps over the lazy"
    usage = chunks[-1]["usage"]
    assert usage["credits_used"] > 0 and chunks[-1]["model_tier"] == "basic"
    key = APIKey.objects.get(organization=live_tenant.org, name=PLAYGROUND_KEY_NAME)
    assert key.scopes == ["chat"] and key.created_by == live_tenant.user
    record = UsageRecord.objects.get(request_id=chunks[-1]["id"])
    assert record.api_key == key and record.streamed and record.credits == usage["credits_used"]
    charged = LedgerEntry.objects.filter(account=live_tenant.account, kind="usage").aggregate(
        total=Sum("amount"))["total"]
    assert charged == -usage["credits_used"]
    # The upstream got what the page sent.
    sent = fake_upstream.requests[-1]["body"]
    assert (sent["temperature"], sent["max_tokens"]) == (0.2, 40)
    assert [m["content"] for m in sent["messages"]] == ["Be brief.", "Hello!"]


def test_the_playground_key_is_made_once_per_organization(live_tenant, signed_in):
    http = signed_in(live_tenant)

    for _ in range(2):
        http.post(STREAM, content=orjson.dumps(HELLO),
                  headers={"Content-Type": "application/json"}).read()

    assert APIKey.objects.filter(organization=live_tenant.org, name=PLAYGROUND_KEY_NAME,
                                 revoked_at__isnull=True).count() == 1
    assert UsageRecord.objects.filter(organization=live_tenant.org).count() == 2


def test_an_upstream_failure_before_the_answer_costs_nothing(live_tenant, signed_in):
    http = signed_in(live_tenant)
    failing = {**HELLO, "messages": [{"role": "user", "content": "Hi [[fault:status:400]]"}]}

    response = http.post(STREAM, content=orjson.dumps(failing),
                         headers={"Content-Type": "application/json"})

    assert response.status_code >= 400 and "error" in response.json()
    assert not LedgerEntry.objects.filter(account=live_tenant.account, kind="usage").exists()
    live_tenant.refresh_account()
    assert live_tenant.account.reserved == 0


def test_not_enough_credits_is_a_402(tenant_factory, signed_in, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    poor = tenant_factory("pennyless", credits=1)
    http = signed_in(poor)

    response = http.post(STREAM, content=orjson.dumps({**HELLO, "max_tokens": 2000}),
                         headers={"Content-Type": "application/json"})

    assert response.status_code == 402 and response.json()["code"] == "quota_exceeded"


def test_a_viewer_signed_in_on_the_live_server_is_refused(live_tenant, signed_in):
    Membership.objects.filter(user=live_tenant.user).update(role=Membership.Role.VIEWER)
    http = signed_in(live_tenant)

    response = http.post(STREAM, content=orjson.dumps(HELLO),
                         headers={"Content-Type": "application/json"})

    assert response.status_code == 403


@pytest.mark.django_db
def test_a_body_the_gateway_could_not_relay_is_refused_like_the_api_refuses_it(owner):
    # Nested past what can be written on upstream (orjson stops at 255 levels).
    nested = b"[" * 300 + b"1" + b"]" * 300
    body = b'{"model": "novakit/echo", "messages": [{"role": "user", "content": ' + nested + b"}]}"

    response = owner.post(STREAM, body, content_type="application/json")

    assert response.status_code == 400
    assert "nested more than" in response.json()["error"]["message"]
    assert not Reservation.objects.exists()
