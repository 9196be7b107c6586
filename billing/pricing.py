"""The one pricing function. Reservation, settlement, quotes and tests all use it.

credits = ceil((prompt_tokens * prompt_rate + completion_tokens * completion_rate)
               / 1000 * multiplier)
          + web search surcharge (when asked for)
          + per-image surcharge * images

Rates are credits per 1,000 tokens at 1x (settings `CREDITS_PER_1K_*`).
The base is rounded up once per request, never per part, so a request that
used any tokens costs at least one credit and rounding never favours either
side by more than one credit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings


@dataclass(frozen=True, slots=True)
class Price:
    base: int
    surcharges: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.base + sum(self.surcharges.values())

    @property
    def breakdown(self) -> dict[str, int]:
        return {"base": self.base, **self.surcharges}


def price_request(
    *,
    multiplier: Decimal,
    prompt_tokens: int,
    completion_tokens: int,
    web_search: bool = False,
    images: int = 0,
) -> Price:
    if prompt_tokens < 0 or completion_tokens < 0 or images < 0:
        raise ValueError("token and image counts cannot be negative")
    raw = (
        Decimal(prompt_tokens) * settings.CREDITS_PER_1K_PROMPT_TOKENS
        + Decimal(completion_tokens) * settings.CREDITS_PER_1K_COMPLETION_TOKENS
    ) / 1000 * multiplier
    surcharges: dict[str, int] = {}
    if web_search:
        surcharges["web_search"] = math.ceil(settings.CREDITS_WEB_SEARCH_SURCHARGE)
    if images:
        surcharges["images"] = math.ceil(settings.CREDITS_PER_IMAGE_SURCHARGE * images)
    return Price(base=math.ceil(raw), surcharges=surcharges)


def byok_fee(price: Price) -> Price:
    """What a request served with the organization's own provider key costs: the platform's
    fee, `BYOK_FEE_PERCENT` of what it would have cost on the platform's key, rounded up
    once (the provider bills the tokens to the organization itself)."""
    fee = math.ceil(Decimal(price.total) * settings.BYOK_FEE_PERCENT / 100)
    return Price(base=0, surcharges={"byok_fee": fee})


def credits_per_1k_tokens(multiplier: Decimal) -> dict[str, Decimal]:
    """What 1,000 tokens of a model cost, for /models and quotes."""
    return {
        "prompt": settings.CREDITS_PER_1K_PROMPT_TOKENS * multiplier,
        "completion": settings.CREDITS_PER_1K_COMPLETION_TOKENS * multiplier,
    }


def tokens_affordable(*, credits: int, multiplier: Decimal) -> int:
    """How many completion tokens `credits` pay for at `multiplier` (the dearer rate: a floor)."""
    per_token = settings.CREDITS_PER_1K_COMPLETION_TOKENS * multiplier / 1000
    if per_token <= 0:
        return 0
    return max(0, int(Decimal(credits) / per_token))
