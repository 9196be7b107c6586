"""Anthropic's Messages API, spoken for OpenAI's chat completions: requests one way, answers and
their event stream the other.

What OpenAI's request says maps onto Messages as Anthropic documents it:
system messages become `system`; image parts become image blocks (a URL, or
a data URL as base64); an assistant's `tool_calls` become `tool_use` blocks
and `tool` messages `tool_result` blocks in the user turn that follows;
`tools` and `tool_choice` take Anthropic's shapes; `stop` becomes
`stop_sequences`; `max_tokens` (required there) comes from the budget the
request was admitted with. Only what Messages takes is sent: parameters it
has no equivalent for (penalties, `seed`, `logprobs`, `response_format` ...)
are left out; `n` above 1 is refused (completions.kinds).

Back, a message becomes one choice; `stop_reason` becomes `finish_reason`;
`usage` counts cache reads and writes as prompt tokens (cache reads also as
`cached_tokens`). The stream's events (`message_start`, `content_block_*`,
`message_delta`, `message_stop`) become chunks as OpenAI streams them, the
usage last.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

VERSION = "2023-06-01"
# The longest answer asked for when the request named no budget (it always has one
# by the time it is sent: admission sets it).
DEFAULT_MAX_TOKENS = 4096
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        header, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": header,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append(_image(url))
    return blocks


def _arguments(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw if isinstance(raw, dict) else {}
    try:
        parsed = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _turns(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt, and the turns: consecutive messages of one role in one turn."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": str(message.get("tool_call_id", "")),
                       "content": _text(message.get("content"))}]
            role = "user"
        else:
            blocks = _blocks(message.get("content"))
            for call in message.get("tool_calls") or [] if role == "assistant" else []:
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": str(call.get("id", "")),
                               "name": str(function.get("name", "")),
                               "input": _arguments(function.get("arguments"))})
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(part for part in system if part), turns


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": str(choice["function"].get("name", ""))}
    return None


def messages_request(payload: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's chat completion body as a Messages body."""
    system, turns = _turns(payload.get("messages") or [])
    body: dict[str, Any] = {
        "model": payload["model"],
        "messages": turns,
        "max_tokens": payload.get("max_completion_tokens") or payload.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = system
    for name in ("temperature", "top_p", "top_k", "stream"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("user"):
        body["metadata"] = {"user_id": str(payload["user"])}
    tools = [tool["function"] for tool in payload.get("tools") or []
             if isinstance(tool, dict) and isinstance(tool.get("function"), dict)]
    if tools:
        body["tools"] = [{"name": tool.get("name"), "description": tool.get("description", ""),
                          "input_schema": tool.get("parameters") or {"type": "object"}}
                         for tool in tools]
    if (choice := _tool_choice(payload.get("tool_choice"))) is not None and tools:
        body["tool_choice"] = choice
    return body


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Messages' usage as OpenAI counts it: every prompt token, cached ones among them."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (int(usage.get("input_tokens") or 0) + cached
              + int(usage.get("cache_creation_input_tokens") or 0))
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _tool_call(block: dict[str, Any], index: int) -> dict[str, Any]:
    return {"index": index, "id": str(block.get("id", "")), "type": "function",
            "function": {"name": str(block.get("name", "")),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    """A Messages answer as OpenAI's chat completion (one choice). An error body is
    passed on as it is, for the caller's error handling."""
    if message.get("type") == "error" or not isinstance(message.get("content"), list):
        return message
    blocks = [block for block in message["content"] if isinstance(block, dict)]
    text = "".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text")
    calls = [_tool_call(block, index) for index, block in
             enumerate(block for block in blocks if block.get("type") == "tool_use")]
    reply: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        reply["tool_calls"] = [{key: value for key, value in call.items() if key != "index"}
                               for call in calls]
    completion = {
        "id": str(message.get("id", "")), "object": "chat.completion",
        "created": int(time.time()), "model": str(message.get("model", "")),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": STOP_REASONS.get(str(message.get("stop_reason")), "stop")}],
    }
    if isinstance(message.get("usage"), dict):
        completion["usage"] = openai_usage(message["usage"])
    return completion


async def chat_chunks(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Messages' stream events as OpenAI's chunks: deltas, one finish chunk, then the usage.

    An `error` event is passed on as `{"error": ...}`, which the relay turns
    into the client's error event.
    """
    base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": ""}
    usage: dict[str, Any] = {}
    tools: dict[int, int] = {}  # content block index -> tool call index

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            base.update(id=str(message.get("id", "")), model=str(message.get("model", "")))
            usage.update(message.get("usage") or {})
            yield chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                tools[int(event.get("index", 0))] = len(tools)
                call = _tool_call({**block, "input": {}}, len(tools) - 1)
                call["function"]["arguments"] = ""
                yield chunk({"tool_calls": [call]})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield chunk({"content": str(delta.get("text", ""))})
            elif delta.get("type") == "input_json_delta":
                index = tools.get(int(event.get("index", 0)), 0)
                yield chunk({"tool_calls": [{"index": index, "function": {
                    "arguments": str(delta.get("partial_json", ""))}}]})
        elif kind == "message_delta":
            usage.update(event.get("usage") or {})
            reason = (event.get("delta") or {}).get("stop_reason")
            yield chunk({}, STOP_REASONS.get(str(reason), "stop"))
        elif kind == "error":
            yield {"error": event.get("error") or {"message": "the provider failed"}}
        elif kind == "message_stop":
            yield {**base, "choices": [], "usage": openai_usage(usage)}
            return
