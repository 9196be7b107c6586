"""Given an id no row can have in a portal URL, or a number its column cannot hold in a portal
form or query, then the page answers 404 or 400 (the form with its error), never a 500.

The companion of tests/management_api/test_out_of_range_input.py for the HTML side; run it on
PostgreSQL too, where a NUL or an unbounded number reaches the database and fails there.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import APIKey, Membership, WebhookEndpoint
from billing.services import key_credit_cap

pytestmark = pytest.mark.django_db

INT4_MAX = 2**31 - 1  # PostgreSQL's `integer`: the key limits
INT8_MAX = 2**63 - 1  # `bigint`: a credit cap
KEY_NUMBERS = {
    "requests_per_minute": (1, INT4_MAX),
    "tokens_per_minute": (1, INT4_MAX),
    "max_concurrent_requests": (1, INT4_MAX),
    "credit_cap": (0, INT8_MAX),
}
EXAMPLES = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
PER_PATH = settings(EXAMPLES, max_examples=25)

# Every portal URL that names one object, with the method its view takes.
ID_PATHS = [
    ("post", "/portal/keys/{}/revoke"),
    ("post", "/portal/keys/{}/rotate"),
    ("post", "/portal/members/{}/role"),
    ("post", "/portal/members/{}/remove"),
    ("get", "/portal/webhooks/{}/"),
    ("post", "/portal/webhooks/{}/active"),
    ("post", "/portal/webhooks/{}/delete"),
    ("get", "/portal/usage/{}/"),
]


@pytest.mark.parametrize("generation_id", ["%00", "chatcmpl-%00", "chatcmpl-x%00y"])
def test_given_a_nul_in_a_receipts_url_then_404(owner, generation_id):
    assert owner.get(f"/portal/usage/{generation_id}/").status_code == 404


@pytest.mark.parametrize("field", KEY_NUMBERS)
def test_given_a_key_limit_no_column_holds_then_the_form_shows_the_error_with_a_400(
        owner, field):
    response = owner.post("/portal/keys/", {"name": "huge", "scopes": ["chat"],
                                            field: str(10**20)})

    assert response.status_code == 400
    assert "Ensure this value is less than or equal to" in response.content.decode()
    assert not APIKey.objects.filter(name="huge").exists()


@pytest.mark.parametrize("query", [{"end": "9999-12-31"}, {"end": "0001-01-01"},
                                   {"granularity": "hour", "end": "0001-01-01"}])
def test_given_a_usage_range_past_the_calendars_edge_then_the_page_says_so_with_a_400(
        owner, query):
    response = owner.get("/portal/usage/", query)

    assert response.status_code == 400
    assert "outside the calendar" in response.content.decode()


def path_segments() -> st.SearchStrategy[str]:
    text = st.text(st.characters(exclude_characters="/"), min_size=1, max_size=40)
    return st.one_of(
        st.integers().map(str),
        st.sampled_from([str(2**31), str(2**63), str(10**20), "%00", "chatcmpl-%00", "%FF"]),
        text.map(lambda value: quote(value, safe="")),
        st.binary(min_size=1, max_size=12).map(
            lambda raw: "".join(f"%{byte:02X}" for byte in raw)),
        st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=80),
    )


def _every_unknown_id_is_404(client: Client, method: str, template: str,
                             own_ids: set[int]) -> Callable[[], None]:
    @PER_PATH
    @given(segment=path_segments())
    def send(segment: str) -> None:
        if segment.isascii() and segment.isdigit() and int(segment) in own_ids:
            return
        response = getattr(client, method)(template.format(segment))
        assert response.status_code == 404, (method, template, segment, response.status_code)

    return send


def test_any_id_in_a_portal_url_is_404_unless_it_names_the_members_object(owner, tenant,
                                                                          other_tenant):
    WebhookEndpoint.objects.create(organization=tenant.org, url="https://example.com/hook",
                                   secret_encrypted="x", events=["balance.low"])
    own_ids = ({*APIKey.objects.filter(organization=tenant.org).values_list("pk", flat=True),
                *Membership.objects.filter(organization=tenant.org).values_list("pk", flat=True),
                *WebhookEndpoint.objects.filter(organization=tenant.org)
                .values_list("pk", flat=True)})

    for method, template in ID_PATHS:
        _every_unknown_id_is_404(owner, method, template, own_ids)()


def numbers(low: int, high: int) -> st.SearchStrategy[str]:
    """What a browser may post in a number field: digits of any size, or anything typed."""
    return st.one_of(
        st.sampled_from([low - 1, low, high, high + 1, 2**63, 10**20]).map(str),
        st.integers().map(str),
        st.floats(allow_nan=False).map(str),
        st.text(max_size=20),
    )


@st.composite
def key_number(draw: st.DrawFn) -> tuple[str, str]:
    field = draw(st.sampled_from(sorted(KEY_NUMBERS)))
    return field, draw(numbers(*KEY_NUMBERS[field]))


def test_any_number_in_the_new_key_form_is_stored_or_shown_as_the_fields_error(owner):
    @EXAMPLES
    @given(number=key_number())
    def send(number: tuple[str, str]) -> None:
        field, value = number
        before = set(APIKey.objects.values_list("pk", flat=True))

        response = owner.post("/portal/keys/", {"name": "any", "scopes": ["chat"], field: value})

        created = APIKey.objects.exclude(pk__in=before)
        low, high = KEY_NUMBERS[field]
        if response.status_code == 302:  # created: redirected to the page showing its secret
            key = created.get()
            kept = key_credit_cap(key) if field == "credit_cap" else getattr(key, field)
            assert kept is None or low <= kept <= high
        else:
            assert response.status_code == 400, (field, value, response.status_code)
            assert not created.exists()

    send()


def test_any_usage_filter_or_ledger_page_is_a_page_or_a_400(owner, tenant):
    values = st.one_of(st.integers().map(str), st.text(max_size=20),
                       st.dates().map(str), st.sampled_from(["0001-01-01", "9999-12-31"]))

    @EXAMPLES
    @given(query=st.dictionaries(st.sampled_from(["key_id", "start", "end", "granularity"]),
                                 values, min_size=1),
           page=values)
    def send(query: dict[str, Any], page: str) -> None:
        assert owner.get("/portal/usage/", query).status_code in (200, 400), query
        assert owner.get("/portal/billing/", {"page": page}).status_code == 200, page

    send()
