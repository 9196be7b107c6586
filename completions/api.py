"""The inference API: thin async endpoints over `gateway`."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router
from ninja.security.base import AuthBase

from accounts.auth import KeyContext, aauthenticate
from accounts.scopes import CHAT, MODELS
from billing.pricing import credits_per_1k_tokens
from completions import gateway
from completions.catalog import catalog_cache
from completions.schemas import ChatCompletionRequest
from novakit.errors import ApiError, forbidden, json_response


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
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponse:
    """OpenAI-compatible chat completions; `stream` in the body or `?stream=true` for SSE."""
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    stream = body.stream or request.GET.get("stream", "").lower() in ("1", "true")
    admitted = await gateway.admit(body, key, gateway.new_request_id())
    if not stream:
        return await gateway.answer(admitted)
    upstream, route = await gateway.open_with_fallback(admitted)
    return gateway.stream_response(admitted, upstream, route)


def _model_entry(model: Any) -> dict[str, Any]:
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
        "available": model.available,
        "pricing": {
            "prompt_usd_per_million": str(model.prompt_usd_per_m),
            "completion_usd_per_million": str(model.completion_usd_per_m),
            "prompt_credits_per_1k": format(per_1k["prompt"].normalize(), "f"),
            "completion_credits_per_1k": format(per_1k["completion"].normalize(), "f"),
        },
    }


@router.get("/models", auth=ApiKeyAuth(MODELS, CHAT), summary="List models")
async def list_models(request: HttpRequest) -> HttpResponse:
    catalog = await catalog_cache.get()
    data = [_model_entry(model) for model in catalog.values()]
    return json_response({"object": "list", "data": data})


@router.get("/models/{path:model_id}", auth=ApiKeyAuth(MODELS, CHAT), summary="Retrieve a model")
async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponse:
    catalog = await catalog_cache.get()
    model = catalog.get(model_id)
    if model is None:
        raise ApiError(404, "model_not_found", f"The model '{model_id}' does not exist",
                       param="model")
    return json_response(_model_entry(model))


