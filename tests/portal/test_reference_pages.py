"""The API reference pages: what they say matches what the APIs enforce and expose."""

from __future__ import annotations

import re

import pytest

from completions.schemas import ChatCompletionRequest
from portal.views.reference import management_endpoints

pytestmark = pytest.mark.django_db


def parameter_row(html: str, name: str) -> str:
    found = re.search(rf'<tr data-parameter="{name}">.*?</tr>', html, re.S)
    assert found, f"no row for {name}"
    return found.group(0)


def test_the_reference_documents_every_parameter_with_the_ranges_the_api_enforces(client,
                                                                                  catalog):
    html = client.get("/portal/reference/").content.decode()

    assert set(re.findall(r'<tr data-parameter="(\w+)">', html)) == set(
        ChatCompletionRequest.model_fields)
    for name, default, bounds in [("temperature", "0.7", "0 to 2"), ("top_p", "1", "0 to 1"),
                                  ("max_tokens", "2048", "1 to 1000000"),
                                  ("frequency_penalty", "0", "-2 to 2"),
                                  ("messages", "—", "1 to 2048 messages")]:
        row = parameter_row(html, name)
        assert f'<td class="mono">{default}</td>' in row.replace("&quot;", '"'), row
        assert f"<td class=\"mono\" data-range>{bounds}</td>" in row, row


def test_the_examples_use_this_deployments_base_url(client, catalog, settings):
    settings.ALLOWED_HOSTS = ["api.example.test"]
    html = client.get("/portal/reference/", HTTP_HOST="api.example.test").content.decode()

    assert "http://api.example.test/api/v1/chat/completions" in html
    assert 'base_url="http://api.example.test/api/v1"' in html.replace("&quot;", '"')
    for language in ("curl", "Python requests", "JavaScript fetch", "OpenAI SDK"):
        assert f">{language}</button>" in html


def test_the_reference_lists_every_catalog_model_with_its_tier_and_credits(client, catalog):
    html = client.get("/portal/reference/").content.decode()

    assert re.search(r'<td class="mono">openai/gpt-4o-mini</td><td>basic</td>'
                     r'<td class="num">1x</td>', html)
    assert re.search(r"<td class=\"mono\">anthropic/claude-3-opus</td><td>powerful</td>", html)
    for code in ("invalid_request", "unauthorized", "quota_exceeded", "forbidden",
                 "rate_limited", "server_error"):
        assert f"<code>{code}</code>" in html


def test_the_reference_links_to_both_apis_interactive_docs_and_schemas(client, catalog):
    html = client.get("/portal/reference/").content.decode()

    for link in ("/api/v1/docs", "/api/v1/openapi.json", "/api/v1/management/schema?format=json",
                 "/portal/reference/management/"):
        assert f'href="{link}"' in html
        assert client.get(link).status_code == 200


def test_the_management_reference_lists_every_management_operation(client):
    html = client.get("/portal/reference/management/").content.decode()

    operations = {(op["method"], op["path"]) for op in management_endpoints()}
    assert ("POST", "/api/v1/keys/{key_id}/rotate") in operations
    assert ("DELETE", "/api/v1/members/{member_id}") in operations
    for method, path in operations:
        assert f'data-endpoint="{method} {path}"' in html
    assert "Signed-in owners and admins. Not API keys." in html
