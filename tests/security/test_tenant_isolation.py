"""Given two organizations, whatever a member or a key of one asks about the other's objects
is answered exactly as a request for an object that does not exist: 404 (or the same refusal
a missing object gets), with none of the object's data, and nothing changes.

The endpoints are not listed by hand: every management API operation comes from the
drf-spectacular schema (cross-checked against the URL resolver, so an endpoint left out of
the schema is caught too) and every portal page from the URL resolver. An object in a URL is
recognised by its parameter's name (`OBJECT_PARAMETERS`); an operation without one must be in
`COLLECTIONS`. A new endpoint that fits neither fails `test_every_*_is_classified` until it is
classified here, and is then covered by the tests below without more code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient
from rest_framework.views import APIView

from accounts.models import APIKey, Membership, WebhookDelivery, WebhookEndpoint
from accounts.services import api_key_create, membership_add
from accounts.webhooks import webhook_endpoint_create
from billing.models import Payment
from completions.models import UsageRecord
from completions.rollups import usage_rollup
from tests.conftest import Tenant
from tests.management_api.helpers import usage_record

pytestmark = pytest.mark.django_db

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


# --- what the URLs hold -----------------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def _as_template(route: str) -> str:
    """`api/v1/keys/<int:key_id>` -> `/api/v1/keys/{key_id}`, the schema's spelling."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def _parameters(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


ROUTES = list(_walk(get_resolver().url_patterns))
SCHEMA_VIEW_ROUTES = {"/api/v1/management/schema"}  # the schema itself: no tenant data
DRF_ROUTES = {
    _as_template(route) for route, pattern in ROUTES
    if isinstance(getattr(pattern.callback, "cls", None), type)
    and issubclass(pattern.callback.cls, APIView)
} - SCHEMA_VIEW_ROUTES
SCHEMA = SchemaGenerator().get_schema(request=None, public=True)
OPERATIONS = sorted(
    (path, method.upper()) for path, item in SCHEMA["paths"].items() for method in item
    if method in HTTP_METHODS
)
PORTAL_ROUTES = sorted({_as_template(route) for route, _ in ROUTES if route.startswith("portal/")})

# Portal URLs with parameters that are not an organization's object.
NOT_TENANT_ROUTES = {
    # The emailed token is the authority there, not a membership.
    "/portal/password-reset/{uidb64}/{token}/",
}


@dataclass
class Victim:
    """The other organization and one object of each kind, with tell-tale data."""

    tenant: Tenant
    key: APIKey
    membership: Membership
    endpoint: WebhookEndpoint
    delivery: WebhookDelivery
    generation: UsageRecord
    payment: Payment

    @property
    def markers(self) -> list[str]:
        """Strings that only the victim's data contains (searched case-insensitively)."""
        return ["globex", self.key.prefix, self.tenant.key.prefix, self.key.name,
                self.membership.user.email, "hook-of-the-victim", "payload-of-the-victim",
                "cs_of_the_victim"]

    def state(self) -> dict[str, Any]:
        """What a successful write through another organization would change."""
        keys = APIKey.objects.filter(organization=self.tenant.org).order_by("pk")
        return {
            "keys": [(k.pk, k.name, sorted(k.scopes), k.revoked_at) for k in keys],
            "members": sorted(Membership.objects.filter(organization=self.tenant.org)
                              .values_list("pk", "role")),
            "endpoints": sorted(WebhookEndpoint.objects.filter(organization=self.tenant.org)
                                .values_list("pk", "is_active", "url")),
            "deliveries": WebhookDelivery.objects.filter(
                endpoint__organization=self.tenant.org).count(),
        }


# How a URL parameter names the victim's object, and a value naming no object at all.
OBJECT_PARAMETERS: dict[str, tuple[Callable[[Victim], object], object]] = {
    "key_id": (lambda victim: victim.key.pk, 987_654_321),
    "member_id": (lambda victim: victim.membership.pk, 987_654_321),
    "endpoint_id": (lambda victim: victim.endpoint.pk, 987_654_321),
    "delivery_id": (lambda victim: victim.delivery.pk, 987_654_321),
    "generation_id": (lambda victim: victim.generation.request_id, "chatcmpl-no-such-request"),
    "payment_id": (lambda victim: victim.payment.pk, 987_654_321),
}

# Operations whose URL names no object: the query or body that tries to reach the victim's data.
COLLECTIONS: dict[tuple[str, str], Callable[[Victim], dict[str, Any]]] = {
    ("/api/v1/keys", "GET"): lambda victim: {},
    ("/api/v1/keys", "POST"): lambda victim: {"name": "probe", "scopes": ["chat"]},
    ("/api/v1/members", "GET"): lambda victim: {},
    ("/api/v1/members", "POST"): lambda victim: {"email": "probe@acme.test", "role": "viewer"},
    ("/api/v1/webhooks", "GET"): lambda victim: {},
    ("/api/v1/webhooks", "POST"): lambda victim: {"url": "http://127.0.0.1:9/probe",
                                                  "events": ["key.revoked"]},
    ("/api/v1/usage", "GET"): lambda victim: {"key_id": victim.key.pk, "granularity": "hour"},
    ("/api/v1/credits", "GET"): lambda victim: {},
    ("/api/v1/credits/ledger", "GET"): lambda victim: {},
}

# Sent with every write to another organization's object: valid for each such endpoint,
# so that a missing organization check would show as a change in `Victim.state`.
WRITE_BODY = {"name": "pwned", "scopes": ["chat"], "role": "viewer", "grace_seconds": 0,
              "reason": "pwned", "is_active": "false"}

OBJECT_OPERATIONS = [op for op in OPERATIONS if _parameters(op[0])]
COLLECTION_OPERATIONS = [op for op in OPERATIONS if not _parameters(op[0])]
PORTAL_OBJECT_ROUTES = [route for route in PORTAL_ROUTES
                        if _parameters(route) and route not in NOT_TENANT_ROUTES]
PORTAL_PAGES = [route for route in PORTAL_ROUTES if not _parameters(route)]


def _url(template: str, values: dict[str, object]) -> str:
    return re.sub(r"{(\w+)}", lambda found: str(values[found.group(1)]), template)


def _echo_removed(response: Any, values: dict[str, object]) -> str:
    """The body, with the string ids the caller sent (a message may quote them) blanked.
    Integer ids are left alone: their digits are everywhere, and no answer quotes them."""
    text = response.content.decode()
    for value in values.values():
        if isinstance(value, str):
            text = text.replace(value, "<id>")
    return text


def _assert_no_markers(victim: Victim, text: str, where: str) -> None:
    lowered = text.lower()
    leaked = [marker for marker in victim.markers if marker.lower() in lowered]
    assert not leaked, f"{where} shows the other organization's {leaked}"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def victim(other_tenant: Tenant, settings: Any) -> Victim:
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]  # nothing is delivered
    key, _ = api_key_create(organization=other_tenant.org, name="victims-payroll-bot")
    email = "cfo@victim-corp.test"
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="a-long-test-password")
    membership = membership_add(organization=other_tenant.org, user=user,
                                role=Membership.Role.ADMIN)
    endpoint, _ = webhook_endpoint_create(organization=other_tenant.org,
                                          url="http://127.0.0.1:9/hook-of-the-victim",
                                          events=["key.revoked"])
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event="key.revoked", event_key="victim-event",
        payload={"note": "payload-of-the-victim"})
    generation = usage_record(other_tenant, model="openai/gpt-4o-mini", credits=4321, key=key)
    usage_rollup()
    payment = Payment.objects.create(organization=other_tenant.org, credits=777, amount=500,
                                     credit_price=Decimal("0.00002"),
                                     checkout_session_id="cs_of_the_victim")
    return Victim(tenant=other_tenant, key=key, membership=membership, endpoint=endpoint,
                  delivery=delivery, generation=generation, payment=payment)


CALLERS = ["key", "session", "session-naming-the-victim"]


@pytest.fixture
def api_caller(request: pytest.FixtureRequest, tenant: Tenant, victim: Victim) -> APIClient:
    """A caller of the first organization (`tenant`): its all-scopes key, its owner signed in,
    or its owner signed in with the victim's organization planted in the session."""
    client = APIClient()
    if request.param == "key":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")
        return client
    client.force_login(tenant.user)
    if request.param == "session-naming-the-victim":
        session = client.session
        session["organization_id"] = victim.tenant.org.pk
        session.save()
    return client


def _api_call(client: APIClient, method: str, url: str, data: dict[str, Any]) -> Any:
    if method == "GET":
        return client.get(url, data)
    return getattr(client, method.lower())(url, data, format="json")


# --- the classification ---------------------------------------------------------------------


def test_every_management_api_operation_is_classified():
    assert OPERATIONS, "the schema lists no operation"
    unknown_parameters = sorted({(path, name) for path, _ in OBJECT_OPERATIONS
                                 for name in _parameters(path) if name not in OBJECT_PARAMETERS})
    unclassified = sorted(set(COLLECTION_OPERATIONS) - set(COLLECTIONS))
    stale = sorted(set(COLLECTIONS) - set(COLLECTION_OPERATIONS))

    assert unknown_parameters == [], "add these URL parameters to OBJECT_PARAMETERS"
    assert unclassified == [], "add these operations to COLLECTIONS"
    assert stale == [], "these COLLECTIONS entries are no longer in the schema"


def test_every_management_api_route_is_in_the_schema():
    """A DRF view left out of the schema (`extend_schema(exclude=True)`) would escape the
    enumeration: every DRF route of the URL resolver must be one of the schema's paths."""
    paths = {path for path, _ in OPERATIONS}

    assert DRF_ROUTES, "the resolver shows no DRF view"
    assert sorted(DRF_ROUTES - paths) == []


def test_every_portal_page_with_an_object_in_its_url_is_classified():
    unknown = sorted({(route, name) for route in PORTAL_ROUTES if route not in NOT_TENANT_ROUTES
                      for name in _parameters(route) if name not in OBJECT_PARAMETERS})

    assert PORTAL_OBJECT_ROUTES, "the resolver shows no portal page with an object id"
    assert unknown == [], "add these URL parameters to OBJECT_PARAMETERS (or NOT_TENANT_ROUTES)"


# --- the management API --------------------------------------------------------------------


@pytest.mark.parametrize("api_caller", CALLERS, indirect=True)
@pytest.mark.parametrize("path, method", OBJECT_OPERATIONS)
def test_another_organizations_object_is_answered_like_a_missing_one(
        path, method, api_caller, victim):
    names = _parameters(path)
    if any(name not in OBJECT_PARAMETERS for name in names):
        pytest.fail(f"{path} is not classified: see test_every_management_api_operation_...")
    before = victim.state()
    theirs = {name: OBJECT_PARAMETERS[name][0](victim) for name in names}
    nobodys = {name: OBJECT_PARAMETERS[name][1] for name in names}
    body = WRITE_BODY if method != "GET" else {}

    foreign = _api_call(api_caller, method, _url(path, theirs), body)
    missing = _api_call(api_caller, method, _url(path, nobodys), body)

    by_key = api_caller._credentials.get("HTTP_AUTHORIZATION") is not None
    # Keys may not manage members at all: the same 403 whatever the id.
    expected = 403 if by_key and path.startswith("/api/v1/members") else 404
    assert foreign.status_code == expected, (foreign.status_code, foreign.content[:300])
    assert _echo_removed(foreign, theirs) == _echo_removed(missing, nobodys)
    _assert_no_markers(victim, foreign.content.decode(), f"{method} {path}")
    assert victim.state() == before


@pytest.mark.parametrize("api_caller", CALLERS, indirect=True)
@pytest.mark.parametrize("path, method", COLLECTION_OPERATIONS)
def test_lists_and_creations_show_and_touch_only_the_callers_organization(
        path, method, api_caller, victim):
    if (path, method) not in COLLECTIONS:
        pytest.fail(f"{method} {path} is not classified: add it to COLLECTIONS")
    before = victim.state()

    response = _api_call(api_caller, method, path, COLLECTIONS[path, method](victim))

    assert response.status_code < 500, response.content[:300]
    _assert_no_markers(victim, response.content.decode(), f"{method} {path}")
    assert victim.state() == before


def test_the_victims_data_is_really_there_for_its_own_members(victim):
    """The markers above are what the victim's own callers see: the searches are not empty."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {victim.tenant.secret}")
    session = APIClient()
    session.force_login(victim.tenant.user)

    keys = client.get(f"/api/v1/keys/{victim.key.pk}").content.decode()
    members = session.get("/api/v1/members").content.decode()
    deliveries = client.get(f"/api/v1/webhooks/{victim.endpoint.pk}/deliveries").content.decode()
    receipt = client.get(f"/api/v1/generations/{victim.generation.request_id}")
    usage = client.get("/api/v1/usage", {"key_id": victim.key.pk, "granularity": "hour"})

    assert victim.key.prefix in keys and victim.key.name in keys
    assert victim.membership.user.email in members
    assert "payload-of-the-victim" in deliveries
    assert receipt.status_code == 200
    assert usage.json()["totals"]["credits"] == 4321


# --- the portal -----------------------------------------------------------------------------


@pytest.fixture
def portal_attacker(tenant: Tenant) -> Client:
    """The first organization's owner, signed in to the portal."""
    client = Client()
    client.force_login(tenant.user)
    return client


@pytest.mark.parametrize("route", PORTAL_OBJECT_ROUTES)
def test_a_portal_page_for_another_organizations_object_is_a_404_like_a_missing_one(
        route, portal_attacker, victim):
    names = _parameters(route)
    if any(name not in OBJECT_PARAMETERS for name in names):
        pytest.fail(f"{route} is not classified: see test_every_portal_page_...")
    before = victim.state()
    theirs = {name: OBJECT_PARAMETERS[name][0](victim) for name in names}
    nobodys = {name: OBJECT_PARAMETERS[name][1] for name in names}
    statuses = []

    # Whichever methods the page takes: the other method's refusal must not depend on the id.
    for method in ("get", "post"):
        call = getattr(portal_attacker, method)
        data = WRITE_BODY if method == "post" else {}
        foreign = call(_url(route, theirs), data)
        missing = call(_url(route, nobodys), data)
        statuses.append(foreign.status_code)
        assert foreign.status_code in (404, 405), (method, foreign.status_code)
        assert foreign.status_code == missing.status_code
        assert _echo_removed(foreign, theirs) == _echo_removed(missing, nobodys)
        _assert_no_markers(victim, foreign.content.decode(), f"{method.upper()} {route}")

    assert 404 in statuses
    assert victim.state() == before


@pytest.mark.parametrize("route", PORTAL_PAGES)
def test_no_portal_page_shows_the_other_organizations_data(route, portal_attacker, victim):
    # The filters some pages take (usage: key_id) name the victim's key: refused (400) or
    # ignored, never shown.
    response = portal_attacker.get(route, {"key_id": victim.key.pk})

    assert response.status_code in (200, 302, 400, 405), response.status_code
    _assert_no_markers(victim, response.content.decode(), f"GET {route}")


def test_the_victims_portal_pages_do_show_its_data(victim):
    """The searches above look for data that is really on those pages."""
    client = Client()
    client.force_login(victim.tenant.user)

    keys = client.get("/portal/keys/").content.decode()
    members = client.get("/portal/members/").content.decode()

    assert victim.key.prefix in keys and victim.key.name in keys
    assert victim.membership.user.email in members
    for route in PORTAL_OBJECT_ROUTES:
        names = _parameters(route)
        url = _url(route, {name: OBJECT_PARAMETERS[name][0](victim) for name in names})
        if route.endswith("/"):  # the pages (GET); the others are actions (POST)
            assert client.get(url).status_code == 200, route
