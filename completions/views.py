"""Developer portal: usage charts, the playground, and the API reference pages.

The playground streams a real completion through the same request path as
`POST /api/v1/chat/completions` (admit, reserve, upstream with fallback,
settle once), authenticated by the member's session instead of a secret.
Its usage is recorded against the organization's "playground" key, created
on first use with the `chat` scope and a secret nobody ever sees, so usage
and the ledger say where those requests came from.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any

import orjson
import pydantic
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET, require_POST

from accounts import auth
from accounts.models import APIKey, Organization
from accounts.scopes import CHAT, SCOPE_DESCRIPTIONS
from accounts.services import api_key_create
from accounts.views import (
    ORGANIZATION_SESSION_KEY,
    PortalMember,
    member_view,
    optional_member,
    portal_member,
    portal_render,
)
from billing.pricing import credits_per_1k_tokens
from completions import admission, charts, gateway, relay, selectors
from completions.catalog import ModelInfo, load_snapshot
from completions.examples import TIER_ORDER, example_model
from completions.forms import UsageFilterForm
from completions.models import CatalogModel
from completions.schemas import DEFAULT_MODEL, EFFECTIVE_DEFAULTS, ChatCompletionRequest
from novakit.api import NOT_A_JSON_OBJECT, BodyRejected, StrictJsonParser, param_and_reason
from novakit.errors import (
    ApiError,
    code_for_status,
    error_response,
    forbidden,
    invalid_request,
    unauthorized,
)

PLAYGROUND_KEY_NAME = "playground (portal)"
# What the playground sends; anything else in its request body is ignored.
PLAYGROUND_FIELDS = ("model", "messages", "temperature", "max_tokens")


def _base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/api/v1")


# --- usage ----------------------------------------------------------------------------------

# The latest requests listed under the usage charts, each linking to its receipt.
RECENT_REQUESTS = 50


def _key_label(key: APIKey | None, key_id: int | None) -> str:
    if key is None:
        return "no key" if not key_id else f"deleted key #{key_id}"
    return f"{key.name} ({key.prefix}…)"


def _add_display_fields(report: dict[str, Any], keys: dict[int, APIKey]) -> None:
    """What the charts and tables show beyond the selector's sums."""
    moment_format = "%Y-%m-%d %H:00" if report["granularity"] == "hour" else "%Y-%m-%d"
    for row in report["series"] + report["by_model"] + report["by_key"]:
        row["ok"] = row["requests"] - row["errors"]
        row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    for row in report["series"]:
        row["window"] = dt.datetime.fromisoformat(row["window_start"]).strftime(moment_format)
    for row in report["by_key"]:
        row["label"] = _key_label(keys.get(row["key_id"] or 0), row["key_id"])


@require_GET
@member_view()
def usage(request: HttpRequest, member: PortalMember) -> HttpResponse:
    organization_id = member.membership.organization_id
    keys = {key.pk: key for key in APIKey.objects.filter(organization_id=organization_id)}
    model_ids = list(CatalogModel.objects.order_by("model_id").values_list("model_id", flat=True))
    form = UsageFilterForm(request.GET or None, model_ids=model_ids,
                           key_choices=[(pk, _key_label(key, pk)) for pk, key in keys.items()])
    context: dict[str, Any] = {"section": "usage", "form": form}
    if form.is_bound and not form.is_valid():
        return portal_render(request, member, "portal/usage.html", context, status=400)
    filters = form.cleaned_data if form.is_bound else {"granularity": "day"}
    granularity = filters["granularity"]
    start, end = form.bounds() if form.is_bound else (None, None)
    try:
        start, end = selectors.usage_range(granularity=granularity, start=start, end=end)
    except ValueError as exc:
        form.add_error(None, str(exc))
        return portal_render(request, member, "portal/usage.html", context, status=400)
    if not form.is_bound:
        form.initial.update({"start": start.date(), "end": (end - dt.timedelta(seconds=1)).date()})
    report = selectors.usage_report(
        organization_id=organization_id, granularity=granularity, start=start, end=end,
        key_id=filters.get("key_id"), model=filters.get("model") or None,
    )
    _add_display_fields(report, keys)
    chart = functools.partial(charts.time_chart, series=report["series"], granularity=granularity,
                              start=start, end=end)
    context.update({
        "report": report,
        "granularity": granularity,
        "series_rows": [row for row in report["series"] if row["requests"]],
        "requests_chart": chart(title="Requests", parts=[
            ("ok", "succeeded", "fill-a"), ("errors", "failed", "fill-err")]),
        "tokens_chart": chart(title="Tokens", parts=[
            ("prompt_tokens", "prompt", "fill-a"), ("completion_tokens", "completion", "fill-b")]),
        "credits_chart": chart(title="Credits", parts=[("credits", "credits", "fill-c")]),
        "by_model": charts.ranking(report["by_model"], label_field="model", value_field="credits"),
        "by_key": charts.ranking(report["by_key"], label_field="label", value_field="credits"),
        "start": start,
        "end": end,
        "recent": [{"record": record, "key_label": _key_label(record.api_key, record.api_key_id)}
                   for record in selectors.recent_usage_records(
                       organization_id=organization_id, limit=RECENT_REQUESTS,
                       key_id=filters.get("key_id"), model=filters.get("model") or None)],
        "recent_limit": RECENT_REQUESTS,
        "recent_filtered": bool(filters.get("key_id") or filters.get("model")),
    })
    return portal_render(request, member, "portal/usage.html", context)


def _moment(timestamp: int | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.UTC)


@require_GET
@member_view()
def usage_receipt(request: HttpRequest, member: PortalMember, generation_id: str) -> HttpResponse:
    """One request's receipt: the same selector, and so the same numbers, as the API's."""
    receipt = selectors.generation_receipt(organization_id=member.membership.organization_id,
                                           request_id=generation_id)
    if receipt is None:  # unknown, or another organization's: the same answer
        raise Http404("No such generation in this organization")
    return portal_render(request, member, "portal/receipt.html", {
        "section": "usage", "receipt": receipt,
        "created_at": _moment(receipt.get("created")),
        "settled_at": _moment(receipt.get("settled")),
        "receipt_json": orjson.dumps(receipt, option=orjson.OPT_INDENT_2).decode(),
        "api_path": f"/api/v1/generations/{receipt['id']}",
    })


# --- playground -----------------------------------------------------------------------------


def _models_by_tier() -> list[ModelInfo]:
    return sorted(load_snapshot().values(),
                  key=lambda m: (TIER_ORDER.get(m.tier, 9), m.model_id))


@require_GET
@member_view()
def playground(request: HttpRequest, member: PortalMember) -> HttpResponse:
    models = _models_by_tier()
    # Selectable: every model with a configured provider route (the gateway's own
    # test); a model the provider stopped listing may still answer.
    usable = [model.model_id for model in models
              if any(route.configured for route in model.routes)]
    default = DEFAULT_MODEL if DEFAULT_MODEL in usable else (usable or [DEFAULT_MODEL])[0]
    return portal_render(request, member, "portal/playground.html", {
        "section": "playground", "default_model": default,
        "models": [{"info": model, "usable": model.model_id in usable} for model in models],
        "base_url": _base_url(request),
    })


def playground_key(*, organization: Organization, user: AbstractBaseUser) -> auth.KeyContext:
    """The organization's playground key as the gateway sees it, created on first use."""
    candidates = APIKey.objects.filter(organization=organization, name=PLAYGROUND_KEY_NAME,
                                       revoked_at__isnull=True, expires_at__isnull=True)
    key = next((k for k in candidates.order_by("created_at", "pk") if CHAT in k.scopes), None)
    if key is None:
        # The secret is thrown away: members reach the playground through their
        # session; the key only names the usage. Revoking it is harmless, the
        # next use makes another.
        key, _ = api_key_create(organization=organization, name=PLAYGROUND_KEY_NAME,
                                scopes=[CHAT], created_by=user, actor_label="portal playground")
    context = auth.key_context(key)
    assert context is not None
    return context


@require_POST
async def playground_stream(request: HttpRequest) -> HttpResponse:
    """Stream a completion for the member's organization (session auth, CSRF-protected)."""
    user = await request.auser()
    if not user.is_authenticated:
        return error_response(unauthorized("Sign in to use the playground"))
    chosen = await request.session.aget(ORGANIZATION_SESSION_KEY)
    member = await sync_to_async(portal_member)(user, chosen)
    if member is None:
        return error_response(forbidden("You are not a member of any active organization"))
    if not member.can_spend:
        return error_response(forbidden(f"Your role ({member.role}) cannot spend credits"))
    try:
        # The inference API's parser: what it refuses could not be relayed upstream either.
        raw = StrictJsonParser().parse_body(request)
        if not isinstance(raw, dict):
            raise invalid_request(NOT_A_JSON_OBJECT)
        fields = {name: raw[name] for name in PLAYGROUND_FIELDS if name in raw}
        body = ChatCompletionRequest.model_validate({**fields, "stream": True})
        key = await sync_to_async(playground_key)(organization=member.organization, user=user)
        admitted = await admission.admit(body, key, admission.new_request_id())
        upstream, route = await gateway.open_with_fallback(admitted)
    except BodyRejected as rejected:
        return error_response(ApiError(code_for_status(rejected.status), rejected.message,
                                       param=rejected.param))
    except json.JSONDecodeError:
        return error_response(invalid_request("The request body is not valid JSON"))
    except pydantic.ValidationError as exc:
        param, message = param_and_reason(exc.errors())
        return error_response(invalid_request(message, param=param))
    except ApiError as exc:
        return error_response(exc)
    return relay.stream_response(admitted, upstream, route)


# --- API reference ----------------------------------------------------------------------------

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
    for model in _models_by_tier():
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
        "base_url": _base_url(request),
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
        "base_url": _base_url(request),
    })
