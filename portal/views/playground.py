"""Developer portal: the playground.

The playground streams a real completion through the same request path as
`POST /api/v1/chat/completions` (admit, reserve, upstream with fallback,
settle once), authenticated by the member's session instead of a secret.
Its usage is recorded against the organization's "playground" key, created
on first use with the `chat` scope and a secret nobody ever sees, so usage
and the ledger say where those requests came from. A request it refuses is
answered by the inference API's own error handlers (novakit/api.py), so the
same mistake gets the same error body here as from the API.
"""

from __future__ import annotations

import pydantic
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET, require_POST
from ninja.errors import HttpError, ValidationError

from accounts import auth
from accounts.models import APIKey, Organization
from accounts.scopes import CHAT
from accounts.services import api_key_create
from completions import admission, gateway, relay
from completions.catalog import ModelInfo, load_snapshot
from completions.examples import TIER_ORDER
from completions.schemas import DEFAULT_MODEL, ChatCompletionRequest
from novakit.api import NOT_A_JSON_OBJECT, api
from novakit.errors import ApiError, error_response, forbidden, invalid_request, unauthorized
from portal.access import (
    ORGANIZATION_SESSION_KEY,
    PortalMember,
    member_view,
    portal_member,
    portal_render,
)

PLAYGROUND_KEY_NAME = "playground (portal)"
# What the playground sends; anything else in its request body is ignored.
PLAYGROUND_FIELDS = ("model", "messages", "temperature", "max_tokens")


def base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/api/v1")


def models_by_tier() -> list[ModelInfo]:
    return sorted(load_snapshot().values(),
                  key=lambda m: (TIER_ORDER.get(m.tier, 9), m.model_id))


@require_GET
@member_view()
def playground(request: HttpRequest, member: PortalMember) -> HttpResponse:
    models = models_by_tier()
    # Selectable: every model with a configured provider route (the gateway's own
    # test); a model the provider stopped listing may still answer.
    usable = [model.model_id for model in models
              if any(route.configured for route in model.routes)]
    default = DEFAULT_MODEL if DEFAULT_MODEL in usable else (usable or [DEFAULT_MODEL])[0]
    return portal_render(request, member, "portal/playground.html", {
        "section": "playground", "default_model": default,
        "models": [{"info": model, "usable": model.model_id in usable} for model in models],
        "base_url": base_url(request),
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


def _completion_request(request: HttpRequest) -> ChatCompletionRequest:
    """The body read as the inference API reads it, a refusal raised as django-ninja raises it
    (an `HttpError` caused by the parser's refusal, a ninja `ValidationError`), so the API's
    handlers can answer it."""
    try:
        # The inference API's parser: what it refuses could not be relayed upstream either.
        raw = api.parser.parse_body(request)
    except ValueError as exc:  # BodyRejected, or the JSON decoder's error
        raise HttpError(400, "Cannot parse request body") from exc
    if not isinstance(raw, dict):
        raise invalid_request(NOT_A_JSON_OBJECT)
    fields = {name: raw[name] for name in PLAYGROUND_FIELDS if name in raw}
    try:
        return ChatCompletionRequest.model_validate({**fields, "stream": True})
    except pydantic.ValidationError as exc:
        raise ValidationError(list(exc.errors(include_url=False))) from exc


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
        body = _completion_request(request)
        key = await sync_to_async(playground_key)(organization=member.organization, user=user)
        admitted = await admission.admit(body, key, admission.new_request_id())
        upstream, route = await gateway.open_with_fallback(admitted)
    except (ApiError, HttpError, ValidationError) as exc:
        # The inference API's one mapping of these to error bodies (novakit/api.py).
        return api.on_exception(request, exc)
    return relay.stream_response(admitted, upstream, route)
