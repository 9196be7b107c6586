"""The APIs describe themselves: OpenAPI schemas and docs served by this server alone."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db

MANAGEMENT_PATHS = {
    "/api/v1/keys", "/api/v1/keys/{key_id}", "/api/v1/keys/{key_id}/revoke",
    "/api/v1/keys/{key_id}/rotate", "/api/v1/members", "/api/v1/members/{member_id}",
    "/api/v1/credits", "/api/v1/credits/ledger", "/api/v1/usage",
}


def test_the_management_schema_lists_every_management_endpoint(client):
    as_json = client.get("/api/v1/management/schema", {"format": "json"})
    as_yaml = client.get("/api/v1/management/schema")

    assert as_json.status_code == 200
    assert MANAGEMENT_PATHS <= set(as_json.json()["paths"])
    assert as_yaml.status_code == 200 and b"/api/v1/keys/{key_id}/rotate:" in as_yaml.content


def test_the_inference_schema_lists_chat_completions_and_models(client):
    schema = client.get("/api/v1/openapi.json").json()

    assert {"/api/v1/chat/completions", "/api/v1/models"} <= set(schema["paths"])


def test_the_inference_docs_page_uses_only_this_servers_own_assets(client):
    page = client.get("/api/v1/docs")

    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.content.decode())
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        if asset.startswith("/static/"):
            served = client.get(asset)
            assert served.status_code == 200, asset
            served.close()
