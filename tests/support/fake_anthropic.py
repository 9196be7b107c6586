"""Anthropic's Messages API and an Azure OpenAI deployment, as the fake upstream serves them.

`POST /anthropic/v1/messages` answers as api.anthropic.com does, and refuses
what it refuses (400, Anthropic's error shape): no `x-api-key` or
`anthropic-version` header, no `max_tokens`, a `system` or `tool` role inside
`messages`, an OpenAI parameter Messages does not take (`n`, penalties,
`stream_options` ...), a `tool_result` whose `tool_use_id` no earlier
`tool_use` named. Streams are Messages' events (`message_start`,
`content_block_*`, `message_delta`, `message_stop`). A tool is called when
`tool_choice` asks for one (`any`, `tool`), or in the `tools` scenario,
unless the last turn carries the tool's result. The scenarios `status:CODE`,
`limited:SECS` and `cut:N` work as on the OpenAI side, with Anthropic's
error bodies (529 is its "overloaded").

`POST /azure/openai/deployments/<deployment>/chat/completions` wants an
`api-key` header and an `api-version` query parameter, and then answers as
the OpenAI side does; every request is recorded like the others.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fake_upstream import FakeUpstream

MESSAGES_FIELDS = {"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
                   "stop_sequences", "stream", "metadata", "tools", "tool_choice", "thinking"}


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None
           ) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}},
                             status=status, headers=headers)


def _refusal(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    extra = sorted(set(body) - MESSAGES_FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    used: set[str] = set()
    for message in body.get("messages") or []:
        if message.get("role") not in ("user", "assistant"):
            return f"messages: Unexpected role \"{message.get('role')}\""
        for block in message.get("content") if isinstance(message.get("content"), list) else []:
            if block.get("type") == "tool_use":
                used.add(block.get("id"))
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in used:
                return "messages: tool_result block(s) provided without a matching tool_use"
    return None


def _openai_view(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the OpenAI side's helpers read it (tools, the forced tool, words)."""
    tools = [{"type": "function", "function": {"name": tool.get("name"),
                                               "parameters": tool.get("input_schema")}}
             for tool in body.get("tools") or []]
    choice = body.get("tool_choice") or {}
    forced = ({"type": "function", "function": {"name": choice.get("name")}}
              if choice.get("type") == "tool" else "required" if choice.get("type") == "any"
              else None)
    return {"model": body.get("model"), "max_tokens": body.get("max_tokens"), "tools": tools,
            "tool_choice": forced, "messages": body.get("messages") or []}


def _after_tool_result(body: dict[str, Any]) -> bool:
    last = (body.get("messages") or [{}])[-1]
    content = last.get("content") if isinstance(last.get("content"), list) else []
    return any(block.get("type") == "tool_result" for block in content)


def _usage(fake: FakeUpstream, view: dict[str, Any], output: int) -> dict[str, Any]:
    openai = fake._usage(view, ["x"] * output)
    # Like Anthropic's with prompt caching: part of the prompt read from its cache.
    cached = min(3, openai["prompt_tokens"])
    return {"input_tokens": openai["prompt_tokens"] - cached, "output_tokens": output,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


async def messages(fake: FakeUpstream, request: web.Request) -> web.StreamResponse:
    from tests.support.fake_upstream import _tool_call

    body = json.loads(await request.read())
    fake.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
    if not request.headers.get("x-api-key") or not request.headers.get("anthropic-version"):
        return _error(401, "authentication_error", "x-api-key and anthropic-version required")
    if refusal := _refusal(body):
        return _error(400, "invalid_request_error", refusal)
    view = _openai_view(body)
    name, arg = fake._choose({"messages": [
        {"role": m["role"], "content": " ".join(str(b.get("text", "")) for b in m["content"])
         if isinstance(m.get("content"), list) else m.get("content")}
        for m in body["messages"]]}, fake.key_scenarios.get(request.headers["x-api-key"]))
    if name == "status":
        return _error(int(float(arg or 500)), "api_error", f"fake anthropic says {arg}")
    if name == "limited":
        return _error(429, "rate_limit_error", "rate limited", {"retry-after": arg or "1"})
    tool = (name == "tools" or view["tool_choice"] is not None) and bool(view["tools"]) and (
        not _after_tool_result(body) or isinstance(view["tool_choice"], dict))
    words = fake._words(view)
    if tool:
        function, arguments = _tool_call(view)
        content = [{"type": "tool_use", "id": "toolu_fake_1", "name": function,
                    "input": json.loads(arguments)}]
        stop, output = "tool_use", 2
    else:
        content = [{"type": "text", "text": " ".join(words)}]
        stop, output = "end_turn", len(words)
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
               "content": content, "stop_reason": stop, "stop_sequence": None,
               "usage": _usage(fake, view, output)}
    if not body.get("stream"):
        return web.json_response(message)
    return await _stream(request, message, cut=int(float(arg or 2)) if name == "cut" else None,
                         interval=fake.chunk_interval)


async def _stream(request: web.Request, message: dict[str, Any], *, cut: int | None,
                  interval: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    sent = 0

    async def send(event: dict[str, Any]) -> None:
        nonlocal sent
        if cut is not None and sent >= cut:
            request.transport.close()  # type: ignore[union-attr]
            raise ConnectionResetError
        sent += 1
        if interval:
            await asyncio.sleep(interval)
        await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())

    usage = message["usage"]
    try:
        await send({"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None,
            "usage": {**usage, "output_tokens": 1}}})
        await response.write(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await send({"type": "content_block_start", "index": index,
                            "content_block": {"type": "text", "text": ""}})
                for position, word in enumerate(block["text"].split(" ")):
                    await send({"type": "content_block_delta", "index": index, "delta": {
                        "type": "text_delta", "text": word if position == 0 else " " + word}})
            else:
                await send({"type": "content_block_start", "index": index,
                            "content_block": {**block, "input": {}}})
                arguments = json.dumps(block["input"])
                for piece in (arguments[:len(arguments) // 2], arguments[len(arguments) // 2:]):
                    await send({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece}})
            await send({"type": "content_block_stop", "index": index})
        await send({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                       "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]}})
        await send({"type": "message_stop"})
    except ConnectionResetError:
        pass
    return response


async def azure_chat(fake: FakeUpstream, request: web.Request) -> web.StreamResponse:
    if not request.headers.get("api-key") or not request.query.get("api-version"):
        return web.json_response({"error": {"code": "401", "message": "Access denied due to "
                                            "missing api-key or api-version"}}, status=401)
    return await fake._chat(request)
