"""Given a number its column cannot hold, or an id no row can have, anywhere the management API
takes one, then the answer is a 400 naming the field or a 404, in the one error shape: never a
500 that says "retry safe" for a request no retry can fix.

The limits are PostgreSQL's columns (novakit/inputs.py): a PositiveIntegerField is an
`integer`, a BigIntegerField a `bigint`. The same numbers are refused on SQLite, so a request
that works in development works in production. Run these on PostgreSQL too: there an unbounded
number or a NUL reaches the database and fails there.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from accounts.models import APIKey, Membership, WebhookEndpoint
from accounts.services import api_key_create
from billing.services import key_credit_cap
from tests.accounts.error_shape import assert_error

pytestmark = pytest.mark.django_db

INT4_MAX = 2**31 - 1  # PostgreSQL's `integer`: requests_per_minute and the other key limits
INT8_MAX = 2**63 - 1  # `bigint`: a credit cap (billing's Quota.limit), every id
KEY_NUMBERS = {
    "requests_per_minute": (1, INT4_MAX),
    "tokens_per_minute": (1, INT4_MAX),
    "max_concurrent_requests": (1, INT4_MAX),
    "credit_cap": (0, INT8_MAX),
}
# Derandomized, so a run is reproducible (as tests/reliability/test_schema_fuzz.py).
EXAMPLES = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
PER_PATH = settings(EXAMPLES, max_examples=30)


def send_json(client: APIClient, method: str, path: str, payload: Any):  # type: ignore[no-untyped-def]
    """The body as a client would write it (Python's json, so 1e20 stays a float)."""
    if method == "get":
        return client.get(path)
    return getattr(client, method)(path, data=json.dumps(payload),
                                   content_type="application/json")


def stored(key_id: int, field: str) -> int | None:
    key = APIKey.objects.get(pk=key_id)
    return key_credit_cap(key) if field == "credit_cap" else getattr(key, field)


# --- the reported cases ----------------------------------------------------------------------


@pytest.mark.parametrize("field", KEY_NUMBERS)
@pytest.mark.parametrize("value", [10**20, 1e20])
def test_given_a_key_limit_no_column_holds_when_a_key_is_created_then_400_naming_it(
        tenant, key_client, field, value):
    response = send_json(key_client(tenant), "post", "/api/v1/keys",
                         {"name": "huge", "scopes": ["chat"], field: value})

    body = assert_error(response, 400, "invalid_request")
    assert body["error"]["param"] == field
    assert APIKey.objects.filter(name="huge").count() == 0


@pytest.mark.parametrize("field", KEY_NUMBERS)
def test_given_one_more_than_the_column_holds_when_a_key_is_changed_then_400_naming_it(
        tenant, key_client, field):
    _, high = KEY_NUMBERS[field]
    before = stored(tenant.key.pk, field)

    response = send_json(key_client(tenant), "patch", f"/api/v1/keys/{tenant.key.pk}",
                         {field: high + 1})

    body = assert_error(response, 400, "invalid_request")
    assert body["error"]["param"] == field
    assert stored(tenant.key.pk, field) == before


@pytest.mark.parametrize("field", KEY_NUMBERS)
def test_the_largest_number_each_column_holds_is_accepted_and_stored(tenant, key_client, field):
    _, high = KEY_NUMBERS[field]

    response = send_json(key_client(tenant), "post", "/api/v1/keys",
                         {"name": "largest", "scopes": ["chat"], field: high})

    assert response.status_code == 201, response.content
    assert response.json()[field] == high
    assert stored(response.json()["id"], field) == high


@pytest.mark.parametrize("generation_id", ["%00", "chatcmpl-%00", "chatcmpl-x%00y"])
def test_given_a_nul_in_a_generation_id_then_404_in_the_error_shape(
        tenant, key_client, generation_id):
    response = key_client(tenant).get(f"/api/v1/generations/{generation_id}")

    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("query", [
    {"end": "9999-12-31T23:59:59Z"},
    {"end": "0001-01-01T00:00:00Z"},
    {"granularity": "hour", "end": "0001-01-01T00:30:00Z"},
])
def test_given_a_usage_range_past_the_calendars_edge_then_400_naming_end(
        tenant, key_client, query):
    response = key_client(tenant).get("/api/v1/usage", query)

    body = assert_error(response, 400, "invalid_request")
    assert body["error"]["param"] == "end"


# --- every number: stored as sent, or refused naming the field ----------------------------------


def _numbers(low: int, high: int) -> st.SearchStrategy[Any]:
    edges = [low - 1, low, high, high + 1, -(2**63) - 1, 2**63, 2**64, 10**20]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(),
        st.integers(min_value=high - 1_000, max_value=high + 1_000),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.text(max_size=30),
        st.booleans(),
        st.none(),
    )


@st.composite
def key_number(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(sorted(KEY_NUMBERS)))
    return field, draw(_numbers(*KEY_NUMBERS[field]))


def _assert_stored_or_refused(response, field: str, value: Any) -> None:  # type: ignore[no-untyped-def]
    low, high = KEY_NUMBERS[field]
    if response.status_code in (200, 201):
        answered = response.json()[field]
        assert answered is None or low <= answered <= high, answered
        assert stored(response.json()["id"], field) == answered
    else:
        body = assert_error(response, 400, "invalid_request")
        assert body["error"]["param"] == field, body
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        assert response.status_code in (200, 201), (field, value, response.content)


def test_any_number_for_a_key_limit_is_stored_or_refused_naming_the_field(tenant, key_client):
    client = key_client(tenant)

    @EXAMPLES
    @given(number=key_number(), change=st.booleans())
    def send(number: tuple[str, Any], change: bool) -> None:
        field, value = number
        if change:
            response = send_json(client, "patch", f"/api/v1/keys/{tenant.key.pk}", {field: value})
        else:
            response = send_json(client, "post", "/api/v1/keys",
                                 {"name": "any", "scopes": ["chat"], field: value})
        _assert_stored_or_refused(response, field, value)

    send()


def test_any_grace_period_for_a_rotation_rotates_or_is_refused_naming_it(tenant, key_client):
    client = key_client(tenant)
    most = 30 * 86400

    @EXAMPLES
    @given(value=_numbers(0, most))
    def send(value: Any) -> None:
        key, _ = api_key_create(organization=tenant.org, name="to rotate", scopes=["chat"])
        response = send_json(client, "post", f"/api/v1/keys/{key.pk}/rotate",
                             {"grace_seconds": value})
        if response.status_code != 201:
            body = assert_error(response, 400, "invalid_request")
            assert body["error"]["param"] == "grace_seconds"
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most:
            assert response.status_code == 201, (value, response.content)

    send()


# --- every id in a path: a 404 unless it names the caller's own object ---------------------------

# Every management path that names one object, with the method that reaches its lookup.
ID_PATHS = [
    ("get", "/api/v1/keys/{}"),
    ("patch", "/api/v1/keys/{}"),
    ("post", "/api/v1/keys/{}/revoke"),
    ("post", "/api/v1/keys/{}/rotate"),
    ("patch", "/api/v1/members/{}"),
    ("delete", "/api/v1/members/{}"),
    ("delete", "/api/v1/webhooks/{}"),
    ("get", "/api/v1/webhooks/{}/deliveries"),
    ("get", "/api/v1/generations/{}"),
]


def path_segments() -> st.SearchStrategy[str]:
    """An id as it appears in a URL: digits of any size, any text, or any bytes, escaped."""
    text = st.text(st.characters(exclude_characters="/"), min_size=1, max_size=40)
    return st.one_of(
        st.integers().map(str),
        st.sampled_from([str(2**31), str(2**63 - 1), str(2**63), str(10**20), "0" * 30 + "1",
                         "%00", "chatcmpl-%00", "%FF%FE"]),
        text.map(lambda value: quote(value, safe="")),
        st.binary(min_size=1, max_size=12).map(
            lambda raw: "".join(f"%{byte:02X}" for byte in raw)),
        st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=80),
    )


def _names_own_object(segment: str, own_ids: set[int]) -> bool:
    return segment.isascii() and segment.isdigit() and int(segment) in own_ids


def test_any_id_in_a_management_path_is_404_unless_it_names_the_callers_object(
        tenant, other_tenant, person, session_client):
    WebhookEndpoint.objects.create(organization=tenant.org, url="https://example.com/hook",
                                   secret_encrypted="x", events=["balance.low"])
    person(tenant, Membership.Role.VIEWER)
    client = session_client(tenant.user, organization_id=tenant.org.pk)
    own_ids = ({*APIKey.objects.filter(organization=tenant.org).values_list("pk", flat=True),
                *Membership.objects.filter(organization=tenant.org).values_list("pk", flat=True),
                *WebhookEndpoint.objects.filter(organization=tenant.org)
                .values_list("pk", flat=True)})

    for method, template in ID_PATHS:
        _every_unknown_id_is_404(client, method, template, own_ids)()


def _every_unknown_id_is_404(client: APIClient, method: str, template: str,
                             own_ids: set[int]) -> Callable[[], None]:
    @PER_PATH
    @given(segment=path_segments())
    def send(segment: str) -> None:
        if _names_own_object(segment, own_ids):
            return
        response = send_json(client, method, template.format(segment), {"role": "viewer"})
        assert_error(response, 404, "not_found")

    return send


# --- every number or id in a query: an answer, a 400 naming it, or a 404 --------------------------

USAGE_PARAMETERS = ("key_id", "start", "end", "granularity")


def query_values() -> st.SearchStrategy[str]:
    moments = st.datetimes().map(lambda moment: moment.isoformat() + "Z")
    return st.one_of(
        st.integers().map(str),
        st.sampled_from([str(2**63), str(10**20), "1e20", "0001-01-01T00:00:00Z",
                         "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00", "hour", "day"]),
        moments,
        st.text(max_size=30),
    )


def test_any_usage_query_is_answered_or_refused_naming_a_parameter(tenant, key_client):
    client = key_client(tenant)

    @EXAMPLES
    @given(query=st.dictionaries(st.sampled_from(USAGE_PARAMETERS), query_values(), min_size=1))
    def send(query: dict[str, str]) -> None:
        response = client.get("/api/v1/usage", query)
        if response.status_code != 200:
            body = assert_error(response, 400, "invalid_request")
            assert body["error"]["param"] in query, (query, body)

    send()


def test_any_ledger_page_is_a_page_or_404(tenant, key_client):
    client = key_client(tenant)

    @EXAMPLES
    @given(page=query_values())
    def send(page: str) -> None:
        response = client.get("/api/v1/credits/ledger", {"page": page})
        if response.status_code != 200:
            assert_error(response, 404, "not_found")

    send()
