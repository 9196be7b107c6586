"""Offline token counting (bpe-openai ships its o200k/cl100k tables; nothing is downloaded).

Used to size a request's reservation before the upstream has seen it, and to
count what was delivered when the upstream reports no usage (a stream the
client abandoned, an upstream that omits `usage`).
"""

from __future__ import annotations

import functools
from typing import Any

import bpe_openai

# OpenAI's chat format adds a few tokens per message and per reply; this is
# the usual allowance for it.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
# What an image may cost a vision model at high detail; a reservation is a
# ceiling, so the high estimate is the safe one.
TOKENS_PER_IMAGE = 800


@functools.lru_cache(maxsize=1)
def _encoding() -> bpe_openai.Encoding:
    return bpe_openai.get_encoding("o200k_base")


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    total = 0
    for part in content:
        if part.get("type") == "text":
            total += count_text(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image"):
            total += TOKENS_PER_IMAGE
        else:
            total += count_text(str(part))
    return total


def estimate_prompt_tokens(
    messages: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> int:
    """Prompt tokens of upstream-shaped messages (content parts already built), plus tools."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        total += _TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        if message.get("tool_calls"):
            total += count_text(str(message["tool_calls"]))
    if extra and extra.get("tools"):
        total += count_text(str(extra["tools"]))
    return total
