"""Developer portal: the API reference pages, read from the schemas the APIs validate with."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from accounts.scopes import SCOPE_DESCRIPTIONS
from billing.pricing import credits_per_1k_tokens
from completions.examples import example_model
from completions.schemas import EFFECTIVE_DEFAULTS, ChatCompletionRequest
from portal.access import optional_member, portal_render
from portal.views.playground import base_url, models_by_tier

PARAMETER_NOTES = {
    "messages": "The conversation so far, oldest first. Each message has a role (system, "
                "user, assistant, tool or developer) and content; a user message may add "
                "up to 4 image URLs in images.",
    "model": "A model id from GET /models. Its tier sets the credit multiplier.",
    "temperature": "Sampling temperature: higher is more varied, lower more focused.",
    "max_tokens": "The longest answer you accept, in tokens. Credits for the whole budget "
                  "are held while the request runs; you pay only for what is generated.",
    "stream": "Send the answer as server-sent events as it is generated (also ?stream=true).",
    "web_search": "Let the model search the web first; adds a fixed surcharge.",
    "top_p": "Nucleus sampling: only tokens within this probability mass are considered.",
    "frequency_penalty": "Positive values make repeating the same tokens less likely.",
    "presence_penalty": "Positive values push the model towards new topics.",
    "stop": "Up to 4 sequences that end the answer when generated.",
    "user": "Your own id for the end user, stored with the usage record.",
}


# The request's fields as JSON types, the way API documentation names them.
JSON_TYPES = {"str": "string", "float": "number", "int": "integer", "bool": "boolean",
              "messages": "array", "stop": "string or array", "user": "string"}


def _range(metadata: list[Any], *, items: str = "") -> str:
    """A field's bounds in words, from pydantic's constraint objects (Ge, Le, MinLen, MaxLen)."""
    bounds = {type(item).__name__: item for item in metadata}
    if items and "MinLen" in bounds and "MaxLen" in bounds:
        return f"{bounds['MinLen'].min_length} to {bounds['MaxLen'].max_length} {items}"
    if "Ge" in bounds and "Le" in bounds:
        return f"{bounds['Ge'].ge} to {bounds['Le'].le}"
    if "MaxLen" in bounds:
        return f"up to {bounds['MaxLen'].max_length} characters"
    return ""


def parameter_rows() -> list[dict[str, Any]]:
    """The request's parameters with ranges and defaults read from the schema the API validates."""
    rows = []
    for name, field in ChatCompletionRequest.model_fields.items():
        default = None if field.is_required() else EFFECTIVE_DEFAULTS.get(name, field.default)
        rows.append({
            "name": name,
            "type": JSON_TYPES.get(name) or JSON_TYPES.get(
                getattr(field.annotation, "__name__", ""), str(field.annotation)),
            "required": field.is_required(),
            "default": "—" if default is None else orjson.dumps(default).decode(),
            "range": _range(field.metadata, items="messages" if name == "messages" else ""),
            "notes": PARAMETER_NOTES.get(name, ""),
        })
    return rows


def _model_rows() -> list[dict[str, Any]]:
    rows = []
    for model in models_by_tier():
        per_1k = credits_per_1k_tokens(model.multiplier)
        rows.append({
            "id": model.model_id, "name": model.name, "tier": model.tier,
            "multiplier": format(model.multiplier.normalize(), "f"),
            "context": model.context_length, "vision": model.supports_vision,
            "prompt_per_1k": format(per_1k["prompt"].normalize(), "f"),
            "completion_per_1k": format(per_1k["completion"].normalize(), "f"),
            "available": model.available,
        })
    return rows


@require_GET
def api_reference(request: HttpRequest) -> HttpResponse:
    return portal_render(request, optional_member(request), "portal/reference.html", {
        "section": "reference",
        "base_url": base_url(request),
        "example": example_model(),
        "parameters": parameter_rows(),
        "models": _model_rows(),
        "rates": {
            "prompt": settings.CREDITS_PER_1K_PROMPT_TOKENS,
            "completion": settings.CREDITS_PER_1K_COMPLETION_TOKENS,
            "web_search": settings.CREDITS_WEB_SEARCH_SURCHARGE,
            "image": settings.CREDITS_PER_IMAGE_SURCHARGE,
        },
        "scopes": SCOPE_DESCRIPTIONS,
    })


# Who may call each management endpoint, in words the schema cannot carry.
MANAGEMENT_ACCESS = {
    "/api/v1/keys": "API key with keys:write, or a signed-in owner, admin or developer",
    "/api/v1/keys/{key_id}": "API key with keys:write, or a signed-in owner, admin or developer",
    "/api/v1/keys/{key_id}/revoke": "API key with keys:write, or a signed-in owner, admin "
                                    "or developer",
    "/api/v1/keys/{key_id}/rotate": "API key with keys:write, or a signed-in owner, admin "
                                    "or developer",
    "/api/v1/members": "Signed-in members read; owners and admins invite. Not API keys.",
    "/api/v1/members/{member_id}": "Signed-in owners and admins. Not API keys.",
    "/api/v1/credits": "API key with billing:read, or any signed-in member",
    "/api/v1/credits/ledger": "API key with billing:read, or any signed-in member",
    "/api/v1/usage": "API key with usage:read, or any signed-in member",
}


@functools.cache
def management_endpoints() -> list[dict[str, Any]]:
    """The management API's operations, from the same generator as its OpenAPI schema."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    rows = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, operation in operations.items():
            parameters = [
                {"name": p["name"], "where": p["in"], "required": p.get("required", False),
                 "description": p.get("description", "")}
                for p in operation.get("parameters", [])
            ]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            rows.append({
                "method": method.upper(), "path": path, "id": operation.get("operationId", ""),
                "description": operation.get("description", ""),
                "parameters": parameters, "body": body.get("schema", {}).get("$ref", "").rsplit(
                    "/", 1)[-1], "access": MANAGEMENT_ACCESS.get(path, ""),
            })
    return rows


@require_GET
def management_reference(request: HttpRequest) -> HttpResponse:
    return portal_render(request, optional_member(request), "portal/reference_management.html", {
        "section": "reference", "endpoints": management_endpoints(),
        "base_url": base_url(request),
    })
