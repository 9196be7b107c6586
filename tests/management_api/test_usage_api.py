"""GET /api/v1/usage: the caller's organization's usage, from the rollups."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from accounts.services import api_key_create
from completions.rollups import usage_rollup
from tests.accounts.error_shape import assert_error
from tests.management_api.helpers import usage_record

pytestmark = pytest.mark.django_db

USAGE = "/api/v1/usage"


def test_usage_needs_the_usage_read_scope(tenant, key_client):
    assert_error(key_client(tenant, scopes=("chat", "billing:read")).get(USAGE), 403,
                 "forbidden")
    assert key_client(tenant, scopes=("usage:read",)).get(USAGE).status_code == 200


def test_usage_reports_the_organizations_rolled_up_totals_by_model_and_by_key(
        tenant, other_tenant, key_client):
    second, _ = api_key_create(organization=tenant.org, name="second")
    usage_record(tenant, model="openai/gpt-4o-mini", credits=10)
    usage_record(tenant, model="anthropic/claude-3.5-sonnet", credits=25, key=second)
    usage_record(tenant, model="openai/gpt-4o-mini", credits=0, status="error",
                 prompt_tokens=0, completion_tokens=0)
    usage_record(other_tenant, model="google/gemini-1.5-pro", credits=999)
    usage_rollup()

    body = key_client(tenant, scopes=("usage:read",)).get(USAGE).json()

    assert body["totals"]["requests"] == 3 and body["totals"]["errors"] == 1
    assert body["totals"]["credits"] == 35
    assert body["totals"]["prompt_tokens"] == 40 and body["totals"]["completion_tokens"] == 60
    assert [row["model"] for row in body["by_model"]] == [
        "anthropic/claude-3.5-sonnet", "openai/gpt-4o-mini"]
    by_key = {row["key_prefix"]: row["credits"] for row in body["by_key"]}
    assert by_key == {second.prefix: 25, tenant.key.prefix: 10}
    assert len(body["series"]) == 1 and body["series"][0]["credits"] == 35
    assert "google/gemini-1.5-pro" not in str(body)


def test_usage_not_yet_rolled_up_is_not_reported(tenant, key_client):
    usage_record(tenant, credits=10)

    body = key_client(tenant).get(USAGE).json()

    assert body["totals"]["requests"] == 0 and body["series"] == []


def test_usage_filters_by_key_model_and_hour(tenant, key_client):
    second, _ = api_key_create(organization=tenant.org, name="second")
    usage_record(tenant, model="openai/gpt-4o-mini", credits=10)
    usage_record(tenant, model="openai/gpt-4o", credits=20, key=second)
    usage_rollup()
    client = key_client(tenant)

    by_key = client.get(USAGE, {"key_id": second.pk}).json()
    by_model = client.get(USAGE, {"model": "openai/gpt-4o-mini"}).json()
    hourly = client.get(USAGE, {"granularity": "hour"}).json()

    assert by_key["totals"]["credits"] == 20
    assert by_model["totals"]["credits"] == 10
    assert hourly["granularity"] == "hour" and hourly["totals"]["credits"] == 30
    start = dt.datetime.fromisoformat(hourly["series"][0]["window_start"])
    assert (start.minute, start.second) == (0, 0)


def test_usage_of_a_range_covers_only_that_range(tenant, key_client):
    now = timezone.now()
    usage_record(tenant, credits=7, started_at=now - dt.timedelta(days=3))
    usage_record(tenant, credits=5)
    usage_rollup(lookback=dt.timedelta(days=5))
    day = (now - dt.timedelta(days=3)).date().isoformat()

    body = key_client(tenant).get(USAGE, {"start": f"{day}T00:00:00Z",
                                          "end": f"{day}T12:00:00Z"}).json()

    assert body["totals"]["credits"] == 7


@pytest.mark.parametrize("query", [
    {"granularity": "week"},
    {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
    {"granularity": "hour", "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
    {"key_id": "abc"},
])
def test_an_invalid_usage_query_is_refused_with_400(tenant, key_client, query):
    assert_error(key_client(tenant).get(USAGE, query), 400, "invalid_request")


def test_a_signed_in_viewer_reads_usage(tenant, person, session_client):
    usage_record(tenant, credits=4)
    usage_rollup()

    response = session_client(person(tenant, "viewer")).get(USAGE)

    assert response.status_code == 200 and response.json()["totals"]["credits"] == 4
