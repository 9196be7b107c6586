"""`novakit/echo`: a built-in development model so a fresh install works offline.

It answers with the last user message, streamed word by word, once for each
of the `n` choices asked for, and reports usage like a real provider (every
choice's tokens counted), so keys, credits, usage and the playground can be
tried with no upstream configured.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from completions.tokens import count_text, estimate_prompt_tokens

_WORD_DELAY_SECONDS = 0.01


def _reply_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    str(part.get("text", "")) for part in content if part.get("type") == "text"
                )
            text = str(content or "").strip()
            break
    else:
        text = ""
    reply = f"Echo: {text}" if text else "Echo: (no user message)"
    words = reply.split(" ")
    budget = payload.get("max_completion_tokens") or payload.get("max_tokens") or 2048
    return " ".join(words[: max(1, int(budget))])


def _choices(payload: dict[str, Any]) -> range:
    return range(int(payload.get("n") or 1))


def _usage(payload: dict[str, Any], reply: str) -> dict[str, int]:
    prompt = estimate_prompt_tokens(payload.get("messages", []))
    completion = count_text(reply) * len(_choices(payload))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def complete(payload: dict[str, Any]) -> dict[str, Any]:
    reply = _reply_text(payload)
    return {
        "id": f"echo-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "echo",
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
            for index in _choices(payload)
        ],
        "usage": _usage(payload, reply),
    }


async def stream(payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    reply = _reply_text(payload)
    base = {"id": f"echo-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": "echo"}
    choices = _choices(payload)
    for index in choices:
        yield {**base, "choices": [{"index": index,
                                     "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]}
    words = reply.split(" ")
    for position, word in enumerate(words):
        await asyncio.sleep(_WORD_DELAY_SECONDS)
        piece = word if position == 0 else " " + word
        for index in choices:
            yield {**base, "choices": [{"index": index, "delta": {"content": piece},
                                         "finish_reason": None}]}
    for index in choices:
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]}
    yield {**base, "choices": [], "usage": _usage(payload, reply)}
