"""What a request cost the platform upstream, in USD.

The provider's own figure where it reports one (OpenRouter's `usage.cost`),
otherwise the catalog's prices applied to the tokens the request is billed
for, each kind at its own rate: cached prompt tokens (OpenAI's
`prompt_tokens_details.cached_tokens`), reasoning tokens
(`completion_tokens_details.reasoning_tokens`, a part of the completion) and
input images. A request served with the organization's own key cost the
platform nothing: the organization's provider bills it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

PER_MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
# What a usage record keeps (UsageRecord.upstream_cost_usd): the same figure on every database.
_PLACES = Decimal("1e-10")

# UsageRecord.cost_source
SOURCE_PROVIDER = "provider"
SOURCE_CATALOG = "catalog"
SOURCE_OWN_KEY = "organization_key"


@dataclass(frozen=True, slots=True)
class UpstreamPrices:
    """A model's upstream prices: USD per million tokens, and per input image.

    A cached prompt token without a price of its own costs a prompt token's
    price; a reasoning token without one, a completion token's.
    """

    prompt: Decimal
    completion: Decimal
    cached_prompt: Decimal | None = None
    reasoning: Decimal | None = None
    image: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class UpstreamCost:
    usd: Decimal
    source: str


NO_COST = UpstreamCost(ZERO, "")


def _detail(usage: dict[str, Any], details: str, name: str) -> int:
    part = usage.get(details)
    value = part.get(name) if isinstance(part, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def reported_cost(usage: dict[str, Any] | None) -> Decimal | None:
    """The provider's own figure for the request, in USD, or None when it gave none usable."""
    if not isinstance(usage, dict):
        return None
    raw = usage.get("cost")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None
    try:
        cost = Decimal(str(raw))
    except InvalidOperation:
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def catalog_cost(prices: UpstreamPrices, *, prompt_tokens: int, completion_tokens: int,
                 usage: dict[str, Any] | None = None, images: int = 0) -> Decimal:
    """The request's cost at the catalog's prices, each kind of token at its own rate."""
    usage = usage if isinstance(usage, dict) else {}
    cached = min(_detail(usage, "prompt_tokens_details", "cached_tokens"), prompt_tokens)
    reasoning = min(_detail(usage, "completion_tokens_details", "reasoning_tokens"),
                    completion_tokens)
    cached_rate = prices.prompt if prices.cached_prompt is None else prices.cached_prompt
    reasoning_rate = prices.completion if prices.reasoning is None else prices.reasoning
    per_million = ((prompt_tokens - cached) * prices.prompt + cached * cached_rate
                   + (completion_tokens - reasoning) * prices.completion
                   + reasoning * reasoning_rate)
    return per_million / PER_MILLION + images * prices.image


def upstream_cost(prices: UpstreamPrices, *, prompt_tokens: int, completion_tokens: int,
                  usage: dict[str, Any] | None, images: int, own_key: bool) -> UpstreamCost:
    """What the request cost the platform: the provider's figure, else the catalog's."""
    if own_key:
        return UpstreamCost(ZERO, SOURCE_OWN_KEY)
    reported = reported_cost(usage)
    if reported is not None:
        return UpstreamCost(reported.quantize(_PLACES), SOURCE_PROVIDER)
    cost = catalog_cost(prices, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        usage=usage, images=images)
    return UpstreamCost(cost.quantize(_PLACES), SOURCE_CATALOG)
