"""Answering an admitted chat completion: the routes, the answer, its extras.

The request path of `POST /api/v1/chat/completions`, top to bottom:
- `completions.admission.admit` validates, prices the worst case, takes the
  rate limit and holds the credits (billing.commit.hold);
- `answer` (here) or `open_with_fallback` with `completions.relay` call the
  routes in the order `completions.routing` gives (priority, then each
  provider's keys by weight, cooled keys skipped), falling back on connection
  errors, timeouts, 429 and 5xx, but only before a byte has gone to the client;
- `completions.settlement.settle` charges what was used, exactly once,
  whatever happened, in a task the client's disconnect cannot cancel, and
  the answer shows what it charged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import orjson
from django.http import HttpResponse

from billing.closing import Settlement
from completions import routing
from completions.admission import Admitted
from completions.catalog import Route
from completions.key_limits import key_request_take
from completions.services import (
    Ending,
    RequestOutcome,
    charge_shown,
    charged_breakdown,
    tokens_remaining_estimate,
)
from completions.settlement import settle, settle_quietly
from completions.tokens import count_text
from completions.upstream import EventStream, complete, open_stream
from completions.upstream_failures import UpstreamFailure, key_at_limit
from completions.usage import openai_usage_fields, reported_usage
from novakit import metrics
from novakit.errors import ApiError, json_response

logger = logging.getLogger(__name__)
T = TypeVar("T")

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def for_route(admitted: Admitted, route: Route, *, stream: bool) -> dict[str, Any]:
    """The body sent to one route: the client's parameters, the route's model name."""
    payload = {**admitted.payload, "model": route.upstream_model, "stream": stream}
    if stream:
        # Ask for usage in the last chunk, whatever the client asked.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    if admitted.web_search:
        payload["plugins"] = [*(payload.get("plugins") or []), {"id": "web"}]
    return payload


def note_failure(admitted: Admitted, route: Route, exc: UpstreamFailure, *,
                 mid_stream: bool = False) -> None:
    """Log and count one failed upstream attempt (before the first byte, or mid-stream)."""
    logger.warning("%s %s failed (%s) for %s", "stream from" if mid_stream else "upstream",
                   route.provider, exc.kind, admitted.request_id)
    metrics.record_upstream_error(provider=route.provider, kind=exc.kind)


def usage_extras(admitted: Admitted, outcome: RequestOutcome, settlement: Settlement | None,
                 ) -> dict[str, Any]:
    """The usage an answer shows: its tokens and what its settlement charged."""
    charged = charge_shown(outcome, settlement)
    usage: dict[str, Any] = {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.tokens,
        "credits_used": charged,
        "credits_breakdown": charged_breakdown(outcome.price, charged),
    }
    if settlement is not None:
        usage["tokens_remaining_estimate"] = tokens_remaining_estimate(
            settlement, multiplier=admitted.model.multiplier
        )
    return usage


def response_headers(admitted: Admitted, settlement: Settlement | None) -> dict[str, str]:
    headers = {"x-request-id": admitted.request_id, **admitted.rate_limit_headers}
    if settlement is not None:
        headers["x-credits-remaining"] = str(settlement.available)
    return headers


async def first_route(admitted: Admitted, attempt: Callable[[Route], Awaitable[T]]
                      ) -> tuple[T, Route]:
    """`attempt` on each route in order until one answers, settling the request if none
    does (or the client leaves, or we fail): fall back only on a retryable failure,
    nothing having reached the client yet."""
    failure: UpstreamFailure | None = None
    provider, own_key = "", False
    try:
        for route in routing.board.attempts(admitted.routes, admitted.key.organization_id):
            if route.key is not None and (
                    wait := await key_request_take(route.key)) is not None:
                failure = key_at_limit(route.provider, wait)
                routing.board.failed(route, kind=failure.kind, retry_after=wait)
                continue
            provider, own_key = route.provider, route.own_key
            try:
                result = await attempt(route)
            except UpstreamFailure as exc:
                failure = exc
                note_failure(admitted, route, exc)
                routing.board.failed(route, kind=exc.kind, retry_after=exc.retry_after)
                if not exc.retryable:
                    break
            else:
                routing.board.succeeded(route)
                return result, route
    except asyncio.CancelledError:
        # The provider was sent the prompt: it is charged (README "Credits").
        await settle_quietly(admitted.ended(
            Ending.CANCELLED, provider=provider, own_key=own_key,
            usage=(admitted.prompt_estimate, 0)))
        raise
    except Exception:
        logger.exception("request %s failed before its answer", admitted.request_id)
        await settle_quietly(admitted.ended(Ending.SERVER_ERROR, provider=provider))
        raise
    assert failure is not None
    await _refuse(admitted, failure, provider)


async def _refuse(admitted: Admitted, failure: UpstreamFailure, provider: str) -> NoReturn:
    """No route answered: release the reservation, record the error, answer with it."""
    await settle_quietly(admitted.ended(Ending.UPSTREAM_FAILED, provider=provider,
                                        failure_status=failure.status,
                                        failure_code=failure.code))
    raise ApiError(failure.code, failure.message,
                   headers=response_headers(admitted, None),
                   provider_error=failure.provider_error) from None


async def answer(admitted: Admitted) -> HttpResponse:
    """Non-streaming: try each route, settle, answer with the extras."""
    data, route = await first_route(
        admitted, lambda route: complete(route, for_route(admitted, route, stream=False)))
    reported = reported_usage(data)
    if reported is None:
        usage, source = (admitted.prompt_estimate, count_text(_completion_text(data))), "tokenizer"
    else:
        usage, source = reported, "upstream"
    outcome = admitted.ended(Ending.COMPLETED, provider=route.provider, own_key=route.own_key,
                             usage=usage, report=data.get("usage"),
                             upstream_id=str(data.get("id") or ""), source=source,
                             ttft_ms=admitted.elapsed_ms())
    settlement = await settle(outcome)  # SettlementFailed: a 500, never a free answer
    body = _normalise_completion(data, admitted)
    body["usage"] = {**openai_usage_fields(data.get("usage")),
                     **usage_extras(admitted, outcome, settlement)}
    return json_response(body, headers=response_headers(admitted, settlement))


async def open_with_fallback(admitted: Admitted) -> tuple[EventStream, Route]:
    """Open the first route that produces a first event; release and raise if none does."""
    return await first_route(
        admitted, lambda route: open_stream(route, for_route(admitted, route, stream=True)))


def _normalise_completion(data: dict[str, Any], admitted: Admitted) -> dict[str, Any]:
    """Fill what OpenAI's schema requires and the upstream may have left out."""
    choices = []
    for index, choice in enumerate(data.get("choices") or []):
        message = dict(choice.get("message") or {})
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        finish = choice.get("finish_reason")
        choices.append({
            **choice,
            "index": choice.get("index", index),
            "message": message,
            "finish_reason": finish if finish in FINISH_REASONS else "stop",
            "logprobs": choice.get("logprobs"),
        })
    created = data.get("created")
    return {
        **data,
        "id": admitted.request_id,
        "object": "chat.completion",
        "created": created if isinstance(created, int) else int(time.time()),
        "model": admitted.model.model_id,
        "model_tier": admitted.model.tier,
        "choices": choices,
    }


def _completion_text(data: dict[str, Any]) -> str:
    parts = []
    for choice in data.get("choices") or []:
        message = choice.get("message") or {}
        parts.append(str(message.get("content") or ""))
        if message.get("tool_calls"):
            parts.append(orjson.dumps(message["tool_calls"]).decode())
    return "".join(parts)
