"""Admitting a chat completion: validate, price the worst case, take the rate limit, hold it.

1. Validate what the schema cannot: the model, the key's model list, vision,
   web search, the completion budget against the context window (`plan`).
2. Estimate the prompt, price the worst case, take the rate limit's slot and
   tokens, reserve the credits and quota (402 when short): `admit`.
What happens next is completions.gateway's (answers) and completions.relay's
(streams); either ends in completions.settlement.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from accounts.auth import KeyContext
from accounts.ratelimit import rate_limit_acquire, rate_limit_release
from billing import commit
from billing.holds import Hold
from billing.pricing import Price, byok_fee, price_request
from completions.catalog import ModelInfo, Route, catalog_cache
from completions.costs import upstream_cost
from completions.parameters import forwarded_parameters, parameters_check
from completions.refusals import refusal_record
from completions.schemas import ChatCompletionRequest
from completions.services import (
    ENDINGS,
    KEY_CLASS_OWN,
    KEY_CLASS_PLATFORM,
    Ending,
    RequestOutcome,
)
from completions.settlement import settle_later
from completions.tokens import estimate_prompt_tokens
from completions.usage import UsageBounds, usage_within
from novakit.errors import ApiError, forbidden, invalid_request, model_not_found


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


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
    # Why it would be refused though valid (no configured provider), or None.
    unavailable: ApiError | None = None

    @property
    def completion_limit(self) -> int:
        """The most completion tokens the request may produce: the budget, for every choice."""
        return self.budget * self.choices


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
    streamed: bool
    started: float
    # x-ratelimit-* as they stood when the request was admitted.
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
    # The client asked for OpenAI's last stream chunk: `choices: []` with the usage.
    usage_chunk: bool = False
    # What the reservation holds against quotas, given back when it is closed.
    quota_holds: Sequence[Sequence[Any]] = ()

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def price(self, prompt_tokens: int, completion_tokens: int) -> Price:
        return price_request(multiplier=self.model.multiplier, prompt_tokens=prompt_tokens,
                             completion_tokens=completion_tokens, web_search=self.web_search,
                             images=self.images)

    def ended(self, ending: Ending, *, provider: str = "", own_key: bool = False,
              usage: tuple[int, int] | None = None, report: dict[str, Any] | None = None,
              upstream_id: str = "", source: str = "tokenizer", ttft_ms: int | None = None,
              failure_status: int | None = None, failure_code: str | None = None,
              ) -> RequestOutcome:
        """The request's outcome: how it ended and, unless the ending releases, what it used,
        held to its bounds (README "Credits") and priced by the one pricing function; served
        with the organization's own provider key (`own_key`), at the BYOK fee. `report` is
        the upstream's usage object, read for its cost (completions.costs)."""
        used: dict[str, Any] = {}
        if not ENDINGS[ending].release and usage is not None:
            held = usage_within(*usage, self.bounds, request_id=self.request_id)
            price = self.price(held.prompt_tokens, held.completion_tokens)
            used = {
                "prompt_tokens": held.prompt_tokens, "completion_tokens": held.completion_tokens,
                "usage_source": "clamped" if held.clamped else source,
                "price": byok_fee(price) if own_key else price,
                "cost": upstream_cost(self.model.prices, prompt_tokens=held.prompt_tokens,
                                      completion_tokens=held.completion_tokens, usage=report,
                                      images=self.images, own_key=own_key),
            }
        return RequestOutcome(
            request_id=self.request_id, organization_id=self.key.organization_id,
            api_key_id=self.key.key_id, model=self.model.model_id,
            multiplier=self.model.multiplier, credits_reserved=self.reserved.total,
            streamed=self.streamed, ending=ending, end_user=self.end_user, provider=provider,
            failure_status=failure_status, failure_code=failure_code,
            latency_ms=self.elapsed_ms(), ttft_ms=ttft_ms, quota_holds=self.quota_holds,
            key_class=KEY_CLASS_OWN if own_key else KEY_CLASS_PLATFORM, upstream_id=upstream_id,
            **used,
        )


def _upstream_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the upstream expects them: the contract's `images` become content parts."""
    messages = []
    for message in body.messages:
        # What the caller sent, as sent: an explicit `"content": null` beside tool calls stays.
        item = message.model_dump(exclude_unset=True, exclude={"images"})
        if message.images:
            parts: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}]
                if isinstance(message.content, str)
                else list(message.content or [])
            )
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
            item["content"] = parts
        messages.append(item)
    return messages


async def plan(body: ChatCompletionRequest, key: KeyContext) -> Plan:
    """Validate what the schema cannot, resolve the model and its routes, price the worst case."""
    catalog = await catalog_cache.get()
    model = catalog.get(body.model)
    if model is None:
        raise model_not_found(body.model)
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
    routes = [route for route in model.routes if route.configured_for(key.organization_id)]
    unavailable = None
    if not routes:
        # Not the request's fault: the rest is still validated, and a quote still priced.
        missing = model.routes[0].missing_setting() if model.routes else "a provider route"
        unavailable = ApiError(
            "upstream_unavailable",
            f"The model '{model.model_id}' has no configured provider: set {missing}",
        )
    elif body.web_search:
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
                budget=budget, choices=body.choices(), images=images, worst_case=worst_case,
                unavailable=unavailable)


async def admit(body: ChatCompletionRequest, key: KeyContext, request_id: str, *,
                stream: bool | None = None) -> Admitted:
    """Admit the request, to be answered as a stream if `stream` (default: as its body says);
    a refusal (402, 429, 503) is in the usage records before it is raised."""
    started = time.monotonic()
    streamed = bool(body.stream if stream is None else stream)
    planned: Plan | None = None
    try:
        planned = await plan(body, key)
        if planned.unavailable is not None:
            raise planned.unavailable
        return await _hold(planned, body, key, request_id, streamed=streamed, started=started)
    except ApiError as exc:
        await refusal_record(
            request_id=request_id, key=key, streamed=streamed, error=exc,
            model=planned.model.model_id if planned else str(body.model or ""),
            multiplier=planned.model.multiplier if planned else Decimal(0),
            latency_ms=int((time.monotonic() - started) * 1000))
        raise


async def _hold(planned: Plan, body: ChatCompletionRequest, key: KeyContext, request_id: str,
                *, streamed: bool, started: float) -> Admitted:
    """Take the rate limit's slot and tokens, then reserve the worst case."""
    tokens = planned.prompt_estimate + planned.completion_limit
    # After authentication and validation, before the reservation: a 429 reserves nothing.
    rate = await rate_limit_acquire(key=key, request_id=request_id, tokens=tokens)
    try:
        payload = forwarded_parameters(body, planned.model, budget=planned.budget)
        payload["messages"] = planned.messages
        admitted = Admitted(
            request_id=request_id, key=key, model=planned.model, routes=planned.routes,
            payload=payload, web_search=body.web_search, images=planned.images,
            prompt_estimate=planned.prompt_estimate, reserved=planned.worst_case,
            bounds=UsageBounds(prompt_tokens=planned.model.context_length,
                               completion_tokens=planned.completion_limit),
            end_user=body.user or "", streamed=streamed,
            started=started,
            rate_limit_headers=rate.headers(),
            usage_chunk=bool((body.stream_options or {}).get("include_usage")),
        )
        await _reserve(admitted, tokens=tokens)
    except BaseException as exc:
        await rate_limit_release(request_id=request_id, tokens_used=0)
        if isinstance(exc, ApiError):
            exc.headers.update(rate.headers())
        raise
    return admitted


async def _reserve(admitted: Admitted, *, tokens: int) -> None:
    """Reserve the worst case; if the client leaves meanwhile, give the reservation back.

    The reservation is written with the requests arriving meanwhile (one
    group, billing.commit), in a task that cancelling the await does not
    stop: it may commit after the request is gone. Once it has, it is
    settled as withdrawn (released, nothing charged) instead of holding the
    credits until the expiry job finds it.
    """
    prompt = admitted.price(admitted.prompt_estimate, 0)
    task = asyncio.ensure_future(commit.hold(Hold(
        organization_id=admitted.key.organization_id,
        api_key_id=admitted.key.key_id,
        request_id=admitted.request_id,
        amount=admitted.reserved.total,
        tokens=tokens,
        targets=admitted.key.extras.get("reservation_targets"),
        # If the process dies before settling, the expiry job charges the prompt
        # and records the request from these.
        prompt_credits=prompt.total,
        prompt_tokens=admitted.prompt_estimate,
        details={"model": admitted.model.model_id, "multiplier": str(admitted.model.multiplier),
                 "streamed": admitted.streamed, "end_user": admitted.end_user,
                 "prompt_breakdown": prompt.breakdown},
    )))
    try:
        reservation = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda held: _withdraw_if_held(admitted, held))
        raise
    admitted.quota_holds = reservation.quota_holds


def _withdraw_if_held(admitted: Admitted, held: asyncio.Future[Any]) -> None:
    if held.cancelled() or held.exception() is not None:
        return  # refused (402) or failed: a refused reservation holds nothing
    admitted.quota_holds = held.result().quota_holds
    settle_later(admitted.ended(Ending.WITHDRAWN))
