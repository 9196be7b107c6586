"""The inference API: thin async endpoints over `gateway`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja.security.base import AuthBase

from accounts.auth import KeyContext, aauthenticate
from accounts.ratelimit import rate_limit_peek
from accounts.scopes import CHAT, MODELS
from billing import selectors as billing_selectors
from billing.pricing import credits_per_1k_tokens
from completions import admission, gateway, idempotency, relay
from completions.catalog import catalog_cache
from completions.schemas import ChatCompletionRequest
from novakit.errors import ApiError, forbidden, json_response, model_not_found
from novakit.runtime.db import db_async


class ApiKeyAuth(AuthBase):
    """`Authorization: Bearer sk_...`, checked for one of `scopes`.

    Written against AuthBase rather than ninja's HttpBearer, which logs a
    malformed header's value (it could be a secret) when DEBUG is on.
    """

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __init__(self, *scopes: str) -> None:
        super().__init__()
        self.scopes = scopes
        self.is_async = True

    async def __call__(self, request: HttpRequest) -> KeyContext:
        context = await aauthenticate(request.headers.get("Authorization"), scope=None)
        if not any(scope in context.scopes for scope in self.scopes):
            raise forbidden(f"This API key lacks the '{self.scopes[0]}' scope")
        return context


router = Router(tags=["inference"])


@router.post("/chat/completions", auth=ApiKeyAuth(CHAT), summary="Create a chat completion")
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponseBase:
    """OpenAI-compatible chat completions; `stream` in the body or `?stream=true` for SSE."""
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    stream = body.stream or request.GET.get("stream", "").lower() in ("1", "true")
    idempotency_key = idempotency.parse_key(request.headers.get("Idempotency-Key"))
    if idempotency_key is not None:
        return await _idempotent_completion(request, body, key, stream, idempotency_key)
    return await _completion(body, key, stream)


async def _completion(body: ChatCompletionRequest, key: KeyContext,
                      stream: bool) -> HttpResponseBase:
    admitted = await admission.admit(body, key, admission.new_request_id(), stream=stream)
    if not stream:
        return await gateway.answer(admitted)
    upstream, route = await gateway.open_with_fallback(admitted)
    return relay.stream_response(admitted, upstream, route)


_REPLAYED_HEADERS = ("Content-Type", "x-request-id", "x-credits-remaining", "Cache-Control")


async def _idempotent_completion(
    request: HttpRequest, body: ChatCompletionRequest, key: KeyContext, stream: bool,
    idempotency_key: str,
) -> HttpResponseBase:
    """Run once per (organization, Idempotency-Key); answer repeats from the stored answer.

    The first request's work is shielded from its client going away, so a
    retry after a client-side timeout finds the answer (409 while it runs)
    instead of running, and charging, a second time.
    """
    org = key.organization_id
    stored = await db_async(idempotency.idempotency_claim)(
        organization_id=org, key=idempotency_key,
        fingerprint=idempotency.fingerprint(request.body, stream=stream), streamed=stream,
    )
    if stored is not None:
        return idempotency_replay(stored)

    async def run() -> HttpResponseBase:
        try:
            response = await _completion(body, key, stream)
        except ApiError as exc:
            await db_async(idempotency.idempotency_complete)(
                organization_id=org, key=idempotency_key, status=exc.status,
                headers={"Content-Type": "application/json", **exc.headers},
                body=orjson.dumps(exc.body()))
            raise
        except BaseException:
            await db_async(idempotency.idempotency_abandon)(organization_id=org,
                                                           key=idempotency_key)
            raise
        headers = {name: response[name] for name in _REPLAYED_HEADERS if name in response}
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = _recorded(response.streaming_content, org,
                                                   idempotency_key, headers)
            return response
        assert isinstance(response, HttpResponse)
        await db_async(idempotency.idempotency_complete)(
            organization_id=org, key=idempotency_key, status=response.status_code,
            headers=headers, body=response.content, request_id=response.get("x-request-id", ""))
        return response

    task = asyncio.ensure_future(run())
    return await asyncio.shield(task)


async def _recorded(content: Any, org: int, idempotency_key: str,
                    headers: dict[str, str]) -> AsyncIterator[bytes]:
    """Pass a stream through, keeping its bytes; store them if it ends with [DONE]."""
    parts: list[bytes] = []
    size = 0
    whole: bytes | None = None  # the stream, when it ended with [DONE] and fits
    try:
        async for chunk in content:
            size += len(chunk)
            if size <= idempotency.MAX_STORED_BYTES:
                parts.append(chunk)
            yield chunk
        if size <= idempotency.MAX_STORED_BYTES:
            joined = b"".join(parts)
            whole = joined if joined.endswith(b"data: [DONE]\n\n") else None
    finally:
        if whole is not None:
            await db_async(idempotency.idempotency_complete)(
                organization_id=org, key=idempotency_key, status=200, headers=headers,
                body=whole, request_id=headers.get("x-request-id", ""))
        else:  # cut short: a retry should run again
            await db_async(idempotency.idempotency_abandon)(organization_id=org,
                                                           key=idempotency_key)


def idempotency_replay(stored: idempotency.Stored) -> HttpResponseBase:
    response: HttpResponseBase
    if stored.streamed and stored.status == 200:
        response = StreamingHttpResponse(iter([stored.body]), content_type="text/event-stream")
    else:
        response = HttpResponse(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return response


@router.post("/chat/completions/quote", auth=ApiKeyAuth(CHAT), summary="Quote a chat completion")
async def chat_completions_quote(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponse:
    """What the same body would reserve and whether it would be admitted now.

    Nothing is charged or reserved and the upstream is not called. Credits,
    quotas and rate limits are checked as admission checks them: the live
    rate-limit buckets are read by the same script, told to take nothing. A model
    with no configured provider is quoted, as a request that would be refused.
    """
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    planned = await admission.plan(body, key)
    tokens = planned.prompt_estimate + planned.completion_limit
    check = await db_async(billing_selectors.admission_check)(
        organization_id=key.organization_id, api_key_id=key.key_id,
        credits=planned.worst_case.total, tokens=tokens)
    if planned.unavailable is not None:
        check = {**check, "admitted": False, "reason": planned.unavailable.message}
    if check["admitted"]:
        try:
            refused = await rate_limit_peek(key=key, tokens=tokens)
        except ApiError as exc:  # larger than a whole minute of tokens
            refused = exc.message
        if refused:
            check = {**check, "admitted": False, "reason": refused}
    per_1k = credits_per_1k_tokens(planned.model.multiplier)
    return json_response({
        "object": "chat.completion.quote",
        "model": planned.model.model_id,
        "model_tier": planned.model.tier,
        "multiplier": str(planned.model.multiplier),
        "estimated_prompt_tokens": planned.prompt_estimate,
        "max_completion_tokens": planned.budget,
        "choices": planned.choices,
        "worst_case_credits": planned.worst_case.total,
        "worst_case_breakdown": planned.worst_case.breakdown,
        "credits_per_1k_tokens": {"prompt": format(per_1k["prompt"].normalize(), "f"),
                                  "completion": format(per_1k["completion"].normalize(), "f")},
        "admitted": check["admitted"],
        "reason": check["reason"],
        "available_credits": check["available"],
    })


def _capabilities(model: Any) -> dict[str, bool | None]:
    """What a client can count on; None where the model's parameters are not known."""
    parameters = model.supported_parameters
    known = bool(parameters)
    return {
        "vision": model.supports_vision,
        "reasoning": model.reasoning,
        "tools": "tools" in parameters if known else None,
        "structured_output": bool({"response_format", "structured_outputs"} & parameters)
        if known else None,
    }


def _model_entry(model: Any, organization_id: int) -> dict[str, Any]:
    per_1k = credits_per_1k_tokens(model.multiplier)
    return {
        "id": model.model_id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "name": model.name,
        "tier": model.tier,
        "multiplier": float(model.multiplier),
        "context_length": model.context_length,
        "supports_vision": model.supports_vision,
        "development": model.is_development,
        # Its own provider keys make a model available to the organization that has them.
        "available": model.available_for(organization_id),
        "pricing": {
            "prompt_usd_per_million": str(model.prices.prompt),
            "completion_usd_per_million": str(model.prices.completion),
            "prompt_credits_per_1k": format(per_1k["prompt"].normalize(), "f"),
            "completion_credits_per_1k": format(per_1k["completion"].normalize(), "f"),
        },
        "capabilities": _capabilities(model),
        # Empty: not known; the request is forwarded as sent.
        "supported_parameters": sorted(model.supported_parameters),
        # None: no limit of its own below the context window.
        "max_completion_tokens": model.max_completion_tokens,
    }


@router.get("/models", auth=ApiKeyAuth(MODELS, CHAT), summary="List models")
async def list_models(request: HttpRequest) -> HttpResponse:
    catalog = await catalog_cache.get()
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    data = [_model_entry(model, key.organization_id) for model in catalog.values()]
    return json_response({"object": "list", "data": data})


@router.get("/models/{path:model_id}", auth=ApiKeyAuth(MODELS, CHAT), summary="Retrieve a model")
async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponse:
    catalog = await catalog_cache.get()
    model = catalog.get(model_id)
    if model is None:
        raise model_not_found(model_id)
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    return json_response(_model_entry(model, key.organization_id))


