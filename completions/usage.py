"""The token counts a request is billed and rate-limited for, read from what the upstream said.

An upstream's usage report is input like any other: it may be missing,
malformed, or absurd (a provider bug, a hostile self-hosted endpoint). What
is billed, recorded and corrected in the rate limiter is the report held to
what the request could possibly have used: a prompt no longer than the
model's context window, and no more completion tokens than the budget every
choice was given. A clamped report is logged and recorded as such
(`usage_source` "clamped").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# The fields of `usage` OpenAI defines; an upstream's others (OpenRouter's `cost`
# in dollars) are not passed on.
OPENAI_USAGE_FIELDS = frozenset({
    "prompt_tokens", "completion_tokens", "total_tokens",
    "prompt_tokens_details", "completion_tokens_details",
})


@dataclass(frozen=True, slots=True)
class UsageBounds:
    """The most one request can use: its prompt fits the context window, its answer the budget."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    clamped: bool = False


def reported_usage(data: dict[str, Any]) -> tuple[int, int] | None:
    """The upstream's (prompt, completion) token counts, or None when it reported none usable."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if (isinstance(prompt, int) and isinstance(completion, int)
            and not isinstance(prompt, bool) and not isinstance(completion, bool)
            and prompt >= 0 and completion >= 0):
        return prompt, completion
    return None


def openai_usage_fields(usage: Any) -> dict[str, Any]:
    """The fields OpenAI defines of the upstream's usage object, as it sent them."""
    if not isinstance(usage, dict):
        return {}
    return {name: value for name, value in usage.items() if name in OPENAI_USAGE_FIELDS}


def usage_within(prompt_tokens: int, completion_tokens: int, bounds: UsageBounds, *,
                 request_id: str) -> TokenUsage:
    """The counts held to `bounds`; a count beyond them is cut to the bound and logged."""
    prompt = min(prompt_tokens, bounds.prompt_tokens)
    completion = min(completion_tokens, bounds.completion_tokens)
    clamped = (prompt, completion) != (prompt_tokens, completion_tokens)
    if clamped:
        logger.warning(
            "usage for %s beyond what the request allows (prompt %d > %d or completion %d > %d): "
            "billed at the bounds", request_id, prompt_tokens, bounds.prompt_tokens,
            completion_tokens, bounds.completion_tokens)
    return TokenUsage(prompt, completion, clamped)
