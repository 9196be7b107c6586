"""The request path of `POST /api/v1/chat/completions`.

1. Validate what the schema cannot: the model, the key's model list, vision,
   web search, the completion budget against the context window.
2. Estimate the prompt, price the worst case, reserve it (402 when short).
3. Call the upstream's routes in order; fall back on connection errors,
   timeouts, 429 and 5xx, but only before a byte has gone to the client.
4. Answer: a completion with NovaKit's extras, or an SSE stream relayed chunk
   by chunk whose last chunk carries the usage and extras, then `[DONE]`.
5. Settle exactly once whatever happened (completed, failed, cancelled),
   in a task the client's disconnect cannot cancel.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from accounts.auth import KeyContext
from accounts.ratelimit import rate_limit_acquire, rate_limit_release
from billing.pricing import Price, price_request
from billing.services import Hold, Settlement
from completions.catalog import ModelInfo, Route, catalog_cache
from completions.group_commit import reserve_in_group, settle_in_group
from completions.models import UsageRecord
from completions.parameters import forwarded_parameters, parameters_check
from completions.schemas import ChatCompletionRequest
from completions.services import (
    RequestOutcome,
    charged_breakdown,
    fallback_outcome,
    request_settle_retrying,
    tokens_remaining_estimate,
)
from completions.tokens import count_text, estimate_prompt_tokens
from completions.upstream import EventStream, UpstreamFailure, complete, open_stream
from completions.usage import (
    UsageBounds,
    openai_usage_fields,
    reported_usage,
    usage_within,
)
from novakit import metrics
from novakit.errors import (
    ApiError,
    error_body,
    forbidden,
    invalid_request,
    is_database_outage,
    json_response,
)
from novakit.runtime.db import db_async

logger = logging.getLogger(__name__)
T = TypeVar("T")

_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
# Settlements still running; held so the event loop does not drop them, and
# so a graceful shutdown can wait for them.
pending_settlements: set[asyncio.Task[Any]] = set()
# A settlement the database was down for is tried again after these waits (doubling).
SETTLE_LATER_FIRST_DELAY = 0.5
SETTLE_LATER_MAX_DELAY = 5.0


@dataclass
class Admitted:
    """A request that passed validation and holds its reservation."""

    request_id: str
    key: KeyContext
    model: ModelInfo
    routes: list[Route]
    payload: dict[str, Any]
    web_search: bool
    images: int
    prompt_estimate: int
    reserved: Price
    # What the request can use at most: usage reported beyond it is billed at the bounds.
    bounds: UsageBounds
    end_user: str
    started: float
    # x-ratelimit-* as they stood when the request was admitted.
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
    # The client asked for OpenAI's last stream chunk: `choices: []` with the usage.
    usage_chunk: bool = False

    def outcome(self, *, streamed: bool) -> RequestOutcome:
        return RequestOutcome(
            request_id=self.request_id,
            organization_id=self.key.organization_id,
            api_key_id=self.key.key_id,
            model=self.model.model_id,
            multiplier=self.model.multiplier,
            credits_reserved=self.reserved.total,
            streamed=streamed,
            end_user=self.end_user,
            holds_quota=bool(self.key.reservation_targets and self.key.reservation_targets.quotas),
        )

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _upstream_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the upstream expects them: the contract's `images` become content parts."""
    messages = []
    for message in body.messages:
        # What the caller sent, as sent: an explicit `"content": null` beside tool calls stays.
        item = message.model_dump(exclude_unset=True, exclude={"images"})
        if message.images:
            parts = (
                [{"type": "text", "text": message.content}]
                if isinstance(message.content, str)
                else list(message.content or [])
            )
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
            item["content"] = parts
        messages.append(item)
    return messages


def _payload(body: ChatCompletionRequest, planned: Plan) -> dict[str, Any]:
    payload = forwarded_parameters(body, planned.model, budget=planned.budget)
    payload["messages"] = planned.messages
    return payload


def _for_route(admitted: Admitted, route: Route, *, stream: bool) -> dict[str, Any]:
    payload = {**admitted.payload, "model": route.upstream_model, "stream": stream}
    if stream:
        # Ask for usage in the last chunk, whatever the client asked.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    if admitted.web_search:
        payload["plugins"] = [*(payload.get("plugins") or []), {"id": "web"}]
    return payload


@dataclass(frozen=True)
class Plan:
    """A validated request, priced at its worst case: what admission and quotes share."""

    model: ModelInfo
    routes: list[Route]
    messages: list[dict[str, Any]]
    prompt_estimate: int
    budget: int
    choices: int
    images: int
    worst_case: Price

    @property
    def completion_limit(self) -> int:
        """The most completion tokens the request may produce: the budget, for every choice."""
        return self.budget * self.choices


async def plan(body: ChatCompletionRequest, key: KeyContext) -> Plan:
    """Validate what the schema cannot, resolve the model and its routes, price the worst case."""
    catalog = await catalog_cache.get()
    model = catalog.get(body.model)
    if model is None:
        raise ApiError(
            404, "model_not_found", f"The model '{body.model}' does not exist", param="model"
        )
    if not key.allows_model(model.model_id):
        raise forbidden(f"This API key may not use the model '{model.model_id}'")
    images = body.image_count()
    if images and not model.supports_vision:
        raise invalid_request(
            f"The model '{model.model_id}' does not accept images; use a vision model",
            param="messages",
        )
    newer_budget = (body.model_extra or {}).get("max_completion_tokens")
    if newer_budget is not None and (
        not isinstance(newer_budget, int) or isinstance(newer_budget, bool) or newer_budget < 1
    ):
        raise invalid_request("max_completion_tokens must be a positive integer",
                              param="max_completion_tokens")
    parameters_check(body, model)
    budget = body.completion_budget()
    if budget > model.context_length:
        raise invalid_request(
            f"max_tokens ({budget}) exceeds the context window of '{model.model_id}' "
            f"({model.context_length} tokens)",
            param="max_tokens",
        )
    routes = [route for route in model.routes if route.configured]
    if not routes:
        missing = model.routes[0].missing_setting() if model.routes else "a provider route"
        raise ApiError(
            503, "upstream_unavailable",
            f"The model '{model.model_id}' has no configured provider: set {missing}",
        )
    if body.web_search:
        routes = [route for route in routes if route.supports_web_search]
        if not routes:
            raise invalid_request(
                f"Web search is not available for '{model.model_id}' on its providers",
                param="web_search",
            )
    messages = _upstream_messages(body)
    prompt_estimate = estimate_prompt_tokens(messages, body.model_extra)
    if prompt_estimate + budget > model.context_length:
        raise invalid_request(
            f"The prompt (about {prompt_estimate} tokens) plus max_tokens ({budget}) exceed the "
            f"context window of '{model.model_id}' ({model.context_length} tokens)",
            param="messages",
        )
    worst_case = price_request(
        multiplier=model.multiplier,
        prompt_tokens=prompt_estimate,
        completion_tokens=budget * body.choices(),
        web_search=body.web_search,
        images=images,
    )
    return Plan(model=model, routes=routes, messages=messages, prompt_estimate=prompt_estimate,
                budget=budget, choices=body.choices(), images=images, worst_case=worst_case)


async def admit(body: ChatCompletionRequest, key: KeyContext, request_id: str) -> Admitted:
    started = time.monotonic()
    planned = await plan(body, key)
    tokens = planned.prompt_estimate + planned.completion_limit
    # After authentication and validation, before the reservation: a 429 reserves nothing.
    rate = await rate_limit_acquire(key=key, request_id=request_id, tokens=tokens)
    try:
        admitted = Admitted(
            request_id=request_id,
            key=key,
            model=planned.model,
            routes=planned.routes,
            payload=_payload(body, planned),
            web_search=body.web_search,
            images=planned.images,
            prompt_estimate=planned.prompt_estimate,
            reserved=planned.worst_case,
            bounds=UsageBounds(prompt_tokens=planned.model.context_length,
                               completion_tokens=planned.completion_limit),
            end_user=body.user or "",
            started=started,
            rate_limit_headers=rate.headers(),
            usage_chunk=bool((body.stream_options or {}).get("include_usage")),
        )
        await _reserve(admitted, tokens=tokens, streamed=body.stream)
    except BaseException as exc:
        await rate_limit_release(request_id=request_id, tokens_used=0)
        if isinstance(exc, ApiError):
            exc.headers.update(rate.headers())
        raise
    return admitted


async def _reserve(admitted: Admitted, *, tokens: int, streamed: bool) -> None:
    """Reserve the worst case; if the client leaves meanwhile, give the reservation back.

    The reservation is written with the requests arriving meanwhile (one
    transaction for the group, completions/group_commit.py), in a task that
    cancelling the await does not stop: it may commit after the request is
    gone. Once it has, it is settled as a cancelled request (released,
    nothing charged) instead of holding the credits until the expiry job
    finds it.
    """
    prompt = _price(admitted, admitted.prompt_estimate, 0)
    task = asyncio.ensure_future(reserve_in_group(Hold(
        organization_id=admitted.key.organization_id,
        api_key_id=admitted.key.key_id,
        request_id=admitted.request_id,
        amount=admitted.reserved.total,
        tokens=tokens,
        targets=admitted.key.reservation_targets,
        # If the process dies before settling, the expiry job charges the prompt
        # and records the request from these.
        prompt_credits=prompt.total,
        prompt_tokens=admitted.prompt_estimate,
        details={"model": admitted.model.model_id, "multiplier": str(admitted.model.multiplier),
                 "streamed": streamed, "end_user": admitted.end_user,
                 "prompt_breakdown": prompt.breakdown},
    )))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        outcome = admitted.outcome(streamed=streamed)
        outcome.release = True
        outcome.status, outcome.http_status, outcome.error_code = "cancelled", 499, "client_closed"
        task.add_done_callback(functools.partial(_release_if_reserved, outcome),
                               context=contextvars.Context())
        raise


def _release_if_reserved(outcome: RequestOutcome, reservation: asyncio.Future[Any]) -> None:
    if reservation.cancelled() or reservation.exception() is not None:
        return  # refused (402) or failed: a refused reservation holds nothing
    _track(settle_quietly(outcome))


# --- settlement ---------------------------------------------------------------------


def _track(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `coroutine` as a task held in `pending_settlements` until it ends (so the
    event loop cannot drop it, and a graceful shutdown waits for it)."""
    task = asyncio.ensure_future(coroutine)
    pending_settlements.add(task)
    task.add_done_callback(pending_settlements.discard)
    return task


class SettlementFailed(ApiError):
    """Neither the settlement of a delivered answer nor its fallback could be written."""

    def __init__(self) -> None:
        super().__init__(500, "server_error",
                         "The request's charge could not be recorded; it was not charged")


async def settle(outcome: RequestOutcome) -> Settlement | None:
    """Settle in a task of its own, shielded: a client that leaves cannot interrupt it.

    None: the database is down; the same settlement is retried in the
    background until it commits (`_settle_when_back`), so what the answer
    shows is what will be charged. A settlement that fails for another
    reason (a bug, data the database refuses) is not allowed to give the
    answer away: the request is settled instead as a charge of its whole
    reservation, its record marked `usage_source` "fallback" and error code
    `settlement_failed`. When even that fails, SettlementFailed is raised:
    the caller must not deliver the answer, and the reservation is left to
    the expiry job, which records the request as interrupted.
    """
    try:
        return await asyncio.shield(_track(_settle(outcome)))
    except Exception as exc:
        if is_database_outage(exc):
            logger.warning("settlement of %s waits for the database", outcome.request_id)
            return None
        logger.exception("settlement failed for %s; charging its reservation instead",
                         outcome.request_id)
    try:
        return await asyncio.shield(_track(_settle(fallback_outcome(outcome))))
    except Exception as exc:
        if is_database_outage(exc):
            return None
        logger.exception("the fallback settlement of %s failed too", outcome.request_id)
        raise SettlementFailed() from None


async def settle_quietly(outcome: RequestOutcome) -> None:
    """Settle a request whose answer is an error already: a failure is logged, not raised."""
    try:
        await settle(outcome)
    except SettlementFailed:
        pass


def _note_failure(admitted: Admitted, route: Route, exc: UpstreamFailure, *,
                  mid_stream: bool = False) -> None:
    """Log and count one failed upstream attempt (before the first byte, or mid-stream)."""
    logger.warning("%s %s failed (%s) for %s", "stream from" if mid_stream else "upstream",
                   route.provider, exc.kind, admitted.request_id)
    metrics.record_upstream_error(provider=route.provider, kind=exc.kind)


async def _settle(outcome: RequestOutcome) -> Settlement:
    try:
        try:
            settlement = await settle_in_group(outcome)
        except Exception as exc:
            if is_database_outage(exc):
                _settle_when_back(outcome)
            raise
        if not settlement.already_closed:
            metrics.record_outcome(outcome, charged=settlement.charged)
        return settlement
    finally:
        # The request is over: free its concurrency slot, correct its tokens to the usage.
        await rate_limit_release(request_id=outcome.request_id,
                                 tokens_used=outcome.prompt_tokens + outcome.completion_tokens)


def _settle_when_back(outcome: RequestOutcome) -> None:
    """Keep trying a settlement the database was down for, in the background.

    The answer may already have gone out: leaving the reservation to the expiry
    job would release it without charge and without a usage record. Retried
    with backoff until it settles or the reservation's TTL has passed (then the
    expiry job has closed it, and a late settlement would be a no-op anyway).
    Settlement is idempotent by request id, so a retry never charges twice.
    """
    _track(_settle_retrying_until_back(outcome))


async def _settle_retrying_until_back(outcome: RequestOutcome) -> None:
    deadline = time.monotonic() + settings.RESERVATION_TTL_SECONDS
    delay = SETTLE_LATER_FIRST_DELAY
    logger.warning("settling %s waits for the database to come back", outcome.request_id)
    while time.monotonic() + delay < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, SETTLE_LATER_MAX_DELAY)
        try:
            settlement = await db_async(request_settle_retrying)(outcome=outcome)
        except Exception as exc:
            if is_database_outage(exc):
                continue
            logger.exception("settlement failed for %s", outcome.request_id)
            return
        if not settlement.already_closed:
            metrics.record_outcome(outcome, charged=settlement.charged)
        logger.info("settled %s once the database was back", outcome.request_id)
        return
    logger.error("gave up settling %s: the expiry job releases its reservation",
                 outcome.request_id)


def _price(admitted: Admitted, prompt_tokens: int, completion_tokens: int) -> Price:
    return price_request(
        multiplier=admitted.model.multiplier,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        web_search=admitted.web_search,
        images=admitted.images,
    )


def _bill(admitted: Admitted, outcome: RequestOutcome, prompt_tokens: int,
          completion_tokens: int, *, source: str) -> None:
    """Set what the request is billed, rate-limited and recorded for: the usage held to its
    bounds (README "Credits"), priced by the one pricing function."""
    usage = usage_within(prompt_tokens, completion_tokens, admitted.bounds,
                         request_id=admitted.request_id)
    outcome.prompt_tokens, outcome.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    outcome.usage_source = "clamped" if usage.clamped else source
    outcome.price = _price(admitted, usage.prompt_tokens, usage.completion_tokens)


def _usage_extras(admitted: Admitted, outcome: RequestOutcome, settlement: Settlement | None,
                  ) -> dict[str, Any]:
    # Without a settlement (the database is down, it is retried until it commits) the
    # charge shown is the one that retry commits: the price, at most the reservation.
    charged = settlement.charged if settlement else min(outcome.price.total,
                                                        outcome.credits_reserved)
    usage: dict[str, Any] = {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
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


# --- non-streaming ------------------------------------------------------------------------


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
            "finish_reason": finish if finish in _FINISH_REASONS else "stop",
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


async def _first_route(admitted: Admitted, outcome: RequestOutcome,
                       attempt: Callable[[Route], Awaitable[T]]) -> tuple[T, Route]:
    """`attempt` on each route in order until one answers; fall back only on a retryable
    failure (nothing has reached the client yet). Raises the last failure if none answers."""
    failure: UpstreamFailure | None = None
    for route in admitted.routes:
        outcome.provider = route.provider
        try:
            return await attempt(route), route
        except UpstreamFailure as exc:
            failure = exc
            _note_failure(admitted, route, exc)
            if not exc.retryable:
                break
    assert failure is not None
    raise failure


async def _refuse_after_failed_routes(admitted: Admitted, outcome: RequestOutcome,
                                      failure: UpstreamFailure) -> NoReturn:
    """No route answered: release the reservation, record the error, answer with it."""
    outcome.release = True
    outcome.status = UsageRecord.Status.ERROR
    outcome.http_status, outcome.error_code = failure.status, failure.code
    outcome.latency_ms = admitted.elapsed_ms()
    await settle_quietly(outcome)
    raise ApiError(failure.status, failure.code, failure.message,
                   headers=response_headers(admitted, None),
                   provider_error=failure.provider_error) from None


async def answer(admitted: Admitted) -> HttpResponse:
    """Non-streaming: try each route, settle, answer with the extras."""
    outcome = admitted.outcome(streamed=False)
    try:
        data, _ = await _first_route(
            admitted, outcome,
            lambda route: complete(route, _for_route(admitted, route, stream=False)))
    except UpstreamFailure as failure:
        await _refuse_after_failed_routes(admitted, outcome, failure)
    except asyncio.CancelledError:
        await _settle_client_left(admitted, outcome)
        raise
    except Exception:
        await _settle_server_error(admitted, outcome)
        raise
    outcome.latency_ms = admitted.elapsed_ms()
    reported = reported_usage(data)
    if reported is None:
        _bill(admitted, outcome, admitted.prompt_estimate, count_text(_completion_text(data)),
              source="tokenizer")
    else:
        _bill(admitted, outcome, *reported, source="upstream")
    outcome.ttft_ms = outcome.latency_ms
    settlement = await settle(outcome)  # SettlementFailed: a 500, never a free answer
    body = _normalise_completion(data, admitted)
    body["usage"] = {**openai_usage_fields(data), **_usage_extras(admitted, outcome, settlement)}
    return json_response(body, headers=response_headers(admitted, settlement))


async def _settle_client_left(admitted: Admitted, outcome: RequestOutcome) -> None:
    """The client left while the provider worked on its request, before any byte reached it.

    One rule for streams and non-streams (README "Credits"): the provider
    was sent the prompt, so the prompt is charged; nothing is charged for an
    answer never delivered.
    """
    outcome.status, outcome.http_status, outcome.error_code = "cancelled", 499, "client_closed"
    _bill(admitted, outcome, admitted.prompt_estimate, 0, source="tokenizer")
    outcome.latency_ms = admitted.elapsed_ms()
    await settle_quietly(outcome)


async def _settle_server_error(admitted: Admitted, outcome: RequestOutcome) -> None:
    """A fault of ours before anything was delivered: release, and keep the record of it."""
    logger.exception("request %s failed before its answer", admitted.request_id)
    outcome.release = True
    outcome.status = UsageRecord.Status.ERROR
    outcome.http_status, outcome.error_code = 500, "server_error"
    outcome.latency_ms = admitted.elapsed_ms()
    await settle_quietly(outcome)


# --- streaming -------------------------------------------------------------------------------


async def open_with_fallback(admitted: Admitted) -> tuple[EventStream, Route]:
    """Open the first route that produces a first event; release and raise if none does."""
    outcome = admitted.outcome(streamed=True)
    try:
        return await _first_route(
            admitted, outcome,
            lambda route: open_stream(route, _for_route(admitted, route, stream=True)))
    except UpstreamFailure as failure:
        await _refuse_after_failed_routes(admitted, outcome, failure)
    except asyncio.CancelledError:
        await _settle_client_left(admitted, outcome)
        raise
    except Exception:
        await _settle_server_error(admitted, outcome)
        raise


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk_text(chunk: dict[str, Any]) -> str:
    """A chunk's generated text, tool-call deltas included, as the tokenizer should count it."""
    parts = []
    for choice in chunk["choices"]:
        delta = choice["delta"]
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        if delta.get("tool_calls"):
            parts.append(orjson.dumps(delta["tool_calls"]).decode())
    return "".join(parts)


class _Relay:
    """One relayed stream, settled exactly once however it ends.

    `run()` is what Django iterates: it passes the upstream's chunks on as they
    come, settles, and sends the usage chunk and `[DONE]` at the end. The chunk
    that carries `finish_reason` is held back until the stream ends so the usage
    can ride on it: clients that read `choices[0]` of every chunk (the contract's
    own streaming example) keep working.

    Ways a stream can end, and who settles it:
    - completed, or the upstream failed mid-stream: `run()`, in order;
    - the client left while `run()` awaited the upstream: Django cancels the
      task, `run()` sees CancelledError;
    - the client left while a chunk was being written: Django closes only its
      own wrapper, then the response; `_StreamBody.close()` closes `run()`,
      which sees GeneratorExit;
    - the client left before `run()` ever started (Django was still in the
      middleware): `_StreamBody.close()` or, when the response is simply
      dropped, its finaliser settles through `abandon()`.
    Only what was actually yielded counts as delivered.
    """

    def __init__(self, admitted: Admitted, stream: EventStream, route: Route) -> None:
        self.admitted = admitted
        self.stream = stream
        self.route = route
        self.created = int(time.time())
        self.outcome = admitted.outcome(streamed=True)
        self.outcome.provider = route.provider
        self.delivered: list[str] = []
        self.usage: tuple[int, int] | None = None
        self.usage_fields: dict[str, Any] = {}  # as the upstream reported them (details too)
        self.held_finish: dict[str, Any] | None = None
        self.settled = False

    def normalise(self, event: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(event.get("choices") or []):
            finish = choice.get("finish_reason")
            choices.append({
                **choice,
                "index": choice.get("index", index),
                "delta": choice.get("delta") or {},
                "finish_reason": finish if finish in _FINISH_REASONS else None,
            })
        chunk = {
            **event,
            "id": self.admitted.request_id,
            "object": "chat.completion.chunk",
            "created": event["created"] if isinstance(event.get("created"), int) else self.created,
            "model": self.admitted.model.model_id,
            "choices": choices,
        }
        chunk.pop("usage", None)
        return chunk

    def send(self, chunk: dict[str, Any]) -> bytes:
        self.delivered.append(_chunk_text(chunk))
        return _sse(chunk)

    async def finish(self, status: str, http_status: int = 200, error_code: str = ""
                     ) -> Settlement | None:
        """Settle, once: the flag is set before the first await, so no second caller gets here."""
        if self.settled:
            return None
        self.settled = True
        admitted, outcome = self.admitted, self.outcome
        outcome.status, outcome.http_status, outcome.error_code = status, http_status, error_code
        outcome.latency_ms = admitted.elapsed_ms()
        if self.usage is not None and status == UsageRecord.Status.OK:
            _bill(admitted, outcome, *self.usage, source="upstream")
        else:
            # No usage from the upstream for what was delivered: count it ourselves.
            _bill(admitted, outcome, admitted.prompt_estimate,
                  count_text("".join(self.delivered)), source="tokenizer")
        if status == UsageRecord.Status.OK:
            return await settle(outcome)  # SettlementFailed: an error event, not a clean end
        await settle_quietly(outcome)
        return None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        yield self.stream.first
        async for event in self.stream.rest:
            yield event

    async def run(self) -> AsyncGenerator[bytes, None]:
        admitted, outcome = self.admitted, self.outcome
        try:
            async for event in self.events():
                if "error" in event and not event.get("choices"):
                    error = event["error"] if isinstance(event["error"], dict) else {}
                    message = str(error.get("message") or "The provider failed mid-stream")
                    raise UpstreamFailure(502, "upstream_error", message, retryable=False,
                                          kind="stream_error")
                reported = reported_usage(event)
                if reported is not None:
                    self.usage = reported
                    self.usage_fields = openai_usage_fields(event)
                if not event.get("choices"):
                    continue  # a usage-only chunk: its numbers go on our final chunk
                chunk = self.normalise(event)
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = admitted.elapsed_ms()
                if any(choice["finish_reason"] for choice in chunk["choices"]):
                    if self.held_finish is not None:  # n > 1: one finish chunk per choice
                        yield self.send(self.held_finish)
                    self.held_finish = chunk
                    continue
                yield self.send(chunk)
            final = self.held_finish or {
                "id": admitted.request_id, "object": "chat.completion.chunk",
                "created": self.created, "model": admitted.model.model_id, "choices": [],
            }
            self.delivered.append(_chunk_text(final))
            settlement = await self.finish(UsageRecord.Status.OK)
            usage = {**self.usage_fields, **_usage_extras(admitted, outcome, settlement)}
            final["model_tier"] = admitted.model.tier
            if admitted.usage_chunk:
                # As OpenAI ends a stream asked for its usage: one more chunk, no choices.
                if final["choices"]:
                    yield _sse(final)
                final = {**final, "choices": [], "usage": usage}
            else:
                # Unasked, the usage rides on the finish chunk: clients that read
                # `choices[0]` of every chunk (the contract's example) keep working.
                final["usage"] = usage
            yield _sse(final)
            yield b"data: [DONE]\n\n"
        except UpstreamFailure as exc:
            _note_failure(admitted, self.route, exc, mid_stream=True)
            await self.finish(UsageRecord.Status.ERROR, exc.status, exc.code)
            # One error event, then the stream closes without [DONE]: never a clean end.
            yield _sse(error_body(exc.code, exc.message))
        except (asyncio.CancelledError, GeneratorExit):
            await self.finish(UsageRecord.Status.CANCELLED, 499, "client_closed")
            raise
        except Exception:
            logger.exception("relaying the stream of %s failed", admitted.request_id)
            await self.finish(UsageRecord.Status.ERROR, 500, "server_error")
            yield _sse(error_body("server_error", "Internal error while streaming"))
        finally:
            await self.stream.aclose()

    async def abandon(self, iterator: AsyncGenerator[bytes, None]) -> None:
        """Settle a stream Django let go of without running it to its end."""
        try:
            await iterator.aclose()  # suspended at a yield: `run()` settles on GeneratorExit
        except RuntimeError:  # still being iterated after all: that iteration settles
            logger.warning("stream %s closed while running", self.admitted.request_id)
            return
        # Never started, so nothing ran: settle here.
        await self.finish(UsageRecord.Status.CANCELLED, 499, "client_closed")
        await self.stream.aclose()


class _StreamBody:
    """The body of a streaming response: iterated by Django, and closed by it in every case.

    Django calls `close()` once it is done with the response (from a worker
    thread, or on the event loop in novakit/asgi.py's inference handler); the
    finaliser covers a response dropped before Django got it. Either way a
    stream not yet settled is settled on the event loop.
    """

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.iterator = relay.run()
        self.loop = asyncio.get_running_loop()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iterator

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.iterator.ag_frame is None:  # ran to its end, and settled on the way
            return
        try:
            # A fresh context: not the closing thread's, which asgiref marks as busy, nor
            # the request's, whose thread may be gone by now.
            self.loop.call_soon_threadsafe(self._abandon, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: the process is exiting
            logger.error("stream %s closed after its event loop", self.relay.admitted.request_id)

    def _abandon(self) -> None:
        _track(self.relay.abandon(self.iterator))

    def __del__(self) -> None:
        if hasattr(self, "closed"):  # not when __init__ itself failed
            self.close()


def stream_response(admitted: Admitted, stream: EventStream, route: Route) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _StreamBody(_Relay(admitted, stream, route)), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in response_headers(admitted, None).items():
        response[name] = value
    return response
