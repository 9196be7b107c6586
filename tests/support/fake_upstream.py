"""A real OpenAI-compatible HTTP server on a loopback port, with switchable faults.

The behaviour of a request is chosen, in order, by a `[[fault:NAME]]` or
`[[fault:NAME:ARG]]` marker in the last user message (so concurrent tests can
each pick their own), else by `FakeUpstream.scenario` (set by a test).

Scenarios:
  ok             a normal answer (streamed if asked), usage included
  no_usage       a normal answer without any usage numbers
  tools          the answer is a tool call (streamed as tool-call deltas)
  status:CODE    answers HTTP CODE with an OpenAI-style error body
  limited:SECS   answers 429 with `Retry-After: SECS`
  slow:SECONDS   streams with SECONDS between chunks
  cut:N          streams N chunks, then drops the connection (no [DONE])
  hang           never answers
  malformed      a 200 whose body is not JSON (or a stream with a broken event)
  error_event:N  streams N chunks, then an SSE `{"error": ...}` event
  finish_cut     streams, puts the last word on the finish chunk, then drops the connection
  garbled        valid JSON of the wrong shape (`choices` that are not objects)
  huge_usage     a normal answer whose usage claims 10**12 tokens of each kind
  no_cost        a normal answer whose usage has no `cost` (OpenAI's shape), with two
                 cached prompt tokens and one reasoning token
A request's `n` is honoured: n choices, and usage that counts all of them.

Answers follow what the request asks, as a model would: a `tool_choice` that names a
function, or is "required", answers a call to that function (else the first tool), with
arguments made from the tool's JSON schema; so does the `tools` scenario, once per turn
(after a `tool` message the model answers in text). A `response_format` of `json_schema`
answers JSON valid for that schema (`json_object`: a small object), streamed in pieces.

`strict = True` makes it refuse, as api.openai.com does, with its 400 bodies: both
`max_tokens` and `max_completion_tokens` set; `max_tokens`, or a temperature other
than 1, for a reasoning model (o1/o3/o4, or "reasoning" in its name); a prompt of more
than `context_words` words (`context_length_exceeded`, `param: messages`).
A provider with a fixed behaviour, whatever the scenario, is the base URL
`url_for(SCENARIO)` (e.g. a failing first route next to a healthy second).
`key_scenarios` maps an API key to the scenario of every request it authorises (one
bad key among good ones). `hang` lasts until the next `reset()`, so no handler
outlives its test.
Every request is recorded in `requests` (path, headers, parsed body). It also speaks
Anthropic's Messages API and serves an Azure OpenAI deployment (`anthropic_url`,
`azure_url`: tests/support/fake_anthropic.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import fake_anthropic

WORDS = "The quick brown fox jumps over the lazy dog and keeps running far away".split()
_MARKER = re.compile(r"\[\[fault:([a-z_]+)(?::([0-9.]+))?\]\]")


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    scenario: str = "ok"
    chunks: int = 8
    chunk_interval: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Refuse what api.openai.com refuses (module docstring); off unless a test turns it on.
    strict: bool = False
    context_words: int = 2000
    # What GET /v1/models lists (OpenRouter's format), for catalog sync tests.
    model_listing: list[dict[str, Any]] = field(default_factory=list)
    # API key -> the scenario of the requests it authorises.
    key_scenarios: dict[str, str] = field(default_factory=dict)
    # OpenRouter's per-generation accounts (GET /v1/generation?id=), by generation id, and
    # what a test wants them to say differently (drift).
    generations: dict[str, dict[str, Any]] = field(default_factory=dict)
    generation_drift: dict[str, Any] = field(default_factory=dict)
    # Bumped by reset(): a `hang` ends when the test that asked for it is over.
    _generation: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        """The base URL of its Anthropic Messages API (tests/support/fake_anthropic.py)."""
        return f"http://{self.host}:{self.port}/anthropic/v1"

    @property
    def azure_url(self) -> str:
        """The base URL of its Azure OpenAI resource (tests/support/fake_anthropic.py)."""
        return f"http://{self.host}:{self.port}/azure"

    def url_for(self, scenario: str) -> str:
        """A base URL whose requests always behave as `scenario` (e.g. "status:500")."""
        return f"http://{self.host}:{self.port}/forced/{scenario}/v1"

    def reset(self) -> None:
        self.scenario = "ok"
        self.strict = False
        self.context_words = 2000
        self.chunks = 8
        self.chunk_interval = 0.0
        self.requests.clear()
        self._generation += 1
        self.model_listing = []
        self.key_scenarios = {}
        self.generations = {}
        self.generation_drift = {}

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/forced/{scenario}/v1/chat/completions", self._chat)
            app.router.add_get("/v1/models", self._models)
            app.router.add_get("/v1/generation", self._generation_account)
            app.router.add_post("/anthropic/v1/messages",
                                lambda request: fake_anthropic.messages(self, request))
            app.router.add_post("/azure/openai/deployments/{deployment}/chat/completions",
                                lambda request: fake_anthropic.azure_chat(self, request))
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._generation += 1  # end any `hang` so cleanup does not wait for it
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)

    # --- behaviour -----------------------------------------------------------------
    def _choose(self, body: dict[str, Any], forced: str | None = None) -> tuple[str, str | None]:
        if forced:
            name, _, arg = forced.partition(":")
            return name, arg or None
        for message in reversed(body.get("messages", [])):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                found = _MARKER.search(message["content"])
                if found:
                    return found.group(1), found.group(2)
                break
        name, _, arg = self.scenario.partition(":")
        return name, arg or None

    def _words(self, body: dict[str, Any]) -> list[str]:
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 10_000
        return [WORDS[i % len(WORDS)] for i in range(min(self.chunks, int(limit)))]

    @staticmethod
    def _usage(body: dict[str, Any], words: list[str], name: str = "ok") -> dict[str, Any]:
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        completion = len(words) * int(body.get("n") or 1)
        if name == "huge_usage":
            prompt = completion = 10**12
        if name == "no_cost":
            # Like OpenAI's: no price, and some of the tokens of kinds priced apart.
            return {"prompt_tokens": prompt, "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": {"cached_tokens": min(2, prompt)},
                    "completion_tokens_details": {"reasoning_tokens": min(1, completion)}}
        # Like OpenRouter's: its price in dollars rides along, which NovaKit must not pass on.
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion, "cost": 0.000042,
                "prompt_tokens_details": {"cached_tokens": 0}}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if self.strict and (refusal := strict_refusal(body, self.context_words)):
            return web.json_response({"error": refusal}, status=400)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        name, arg = self._choose(body, request.match_info.get("scenario")
                                 or self.key_scenarios.get(bearer))
        if name == "ok" and _tool_forced(body):
            name = "tools"
        if name == "tools" and _after_tool_result(body):
            name = "ok"
        if name == "status":
            code = int(float(arg or 500))
            return web.json_response(
                {"error": {"message": f"fake upstream says {code}", "code": code}}, status=code
            )
        if name == "limited":
            return web.json_response(
                {"error": {"message": "fake upstream is rate limiting", "code": 429}},
                status=429, headers={"Retry-After": arg or "1"})
        if name == "hang":
            generation = self._generation
            while generation == self._generation:
                await asyncio.sleep(0.05)
            return web.json_response({"error": {"message": "hang ended"}}, status=500)
        if body.get("stream"):
            return await self._stream(request, body, name, arg)
        if name == "malformed":
            return web.Response(text="this is not json {", content_type="application/json")
        if name == "garbled":
            return web.json_response({"id": "gen-fake", "choices": ["not an object"]})
        words = self._words(body)
        message: dict[str, Any] = {"role": "assistant", "content": _structured(body)
                                   or " ".join(words)}
        finish = "stop"
        if name == "tools":
            function, arguments = _tool_call(body)
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": function, "arguments": arguments}}]}
            finish = "tool_calls"
        usage = self._usage(body, words, name)
        completion: dict[str, Any] = {
            "id": self._generated(usage), "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"), "choices": [
                {"index": index, "message": message, "finish_reason": finish}
                for index in range(int(body.get("n") or 1))],
        }
        if name != "no_usage":
            completion["usage"] = usage
        return web.json_response(completion)

    async def _stream(self, request: web.Request, body: dict[str, Any], name: str,
                      arg: str | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interval = float(arg) if name == "slow" and arg else self.chunk_interval
        words = self._words(body)
        base = {"id": self._generated(self._usage(body, words, name)),
                "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model")}

        async def send(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        await response.write(b": keep-alive comment\n\n")
        if name == "tools":
            function, arguments = _tool_call(body)
            opening = {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": function, "arguments": ""}}]}
            await send({**base, "choices": [{"index": 0, "delta": opening,
                                             "finish_reason": None}]})
            for piece in _halves(arguments):
                await send({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": piece}}]}, "finish_reason": None}]})
            await send({**base, "choices": [{"index": 0, "delta": {},
                                             "finish_reason": "tool_calls"}]})
            await send({**base, "choices": [], "usage": self._usage(body, ["x", "y"])})
            await send("[DONE]")
            return response
        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
        if name == "garbled":
            await send({**base, "choices": "not a list"})
            await send("[DONE]")
            return response
        structured = _structured(body)
        if structured:
            # JSON is streamed in pieces that are not JSON on their own, as a model's are.
            words = _halves(structured)
        for position, word in enumerate(words):
            if name == "cut" and position >= int(float(arg or 2)):
                request.transport.close()  # type: ignore[union-attr]
                return response
            if name == "error_event" and position >= int(float(arg or 2)):
                await send({"error": {"message": "fake upstream failed mid-stream", "code": 502}})
                await send("[DONE]")
                return response
            if name == "malformed" and position == 1:
                await response.write(b"data: {not json\n\n")
                return response
            if interval:
                await asyncio.sleep(interval)
            piece = word if position == 0 or structured else " " + word
            if name == "finish_cut" and position == len(words) - 1:
                await send({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                 "finish_reason": "stop"}]})
                request.transport.close()  # type: ignore[union-attr]
                return response
            for index in range(int(body.get("n") or 1)):
                await send({**base, "choices": [{"index": index, "delta": {"content": piece},
                                                 "finish_reason": None}]})
        for index in range(int(body.get("n") or 1)):
            await send({**base, "choices": [{"index": index, "delta": {},
                                             "finish_reason": "stop"}]})
        if name != "no_usage":
            await send({**base, "choices": [], "usage": self._usage(body, words, name)})
        await send("[DONE]")
        return response

    def _generated(self, usage: dict[str, Any]) -> str:
        """A new generation id, remembered with its account as OpenRouter keeps one."""
        generation_id = f"gen-fake-{len(self.generations) + 1}"
        self.generations[generation_id] = {
            "id": generation_id, "tokens_prompt": usage["prompt_tokens"],
            "tokens_completion": usage["completion_tokens"], "total_cost": usage.get("cost")}
        return generation_id

    async def _generation_account(self, request: web.Request) -> web.Response:
        account = self.generations.get(request.query.get("id", ""))
        if account is None:
            return web.json_response({"error": {"message": "not found", "code": 404}},
                                     status=404)
        return web.json_response({"data": {**account, **self.generation_drift}})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": self.model_listing})


# --- what a model would answer ---------------------------------------------------------
REASONING_PREFIXES = ("o1", "o3", "o4")


def _bare_model(body: dict[str, Any]) -> str:
    """The model's own name, without a provider's prefix ("openai/o1-mini" -> "o1-mini")."""
    return str(body.get("model") or "").rpartition("/")[2].lower()


def is_reasoning_model(model: str) -> bool:
    bare = model.rpartition("/")[2].lower()
    return bare.startswith(REASONING_PREFIXES) or "reasoning" in bare


def _invalid(message: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def strict_refusal(body: dict[str, Any], context_words: int) -> dict[str, Any] | None:
    """What api.openai.com refuses with a 400, as its error object; None when it would answer.

    Null is what an OpenAI client sends for "not set", and OpenAI takes it as such.
    """
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        return _invalid("Setting 'max_tokens' and 'max_completion_tokens' at the same time is "
                        "not supported.", param="max_tokens", code="invalid_parameter_combination")
    if is_reasoning_model(str(body.get("model") or "")):
        if body.get("max_tokens") is not None:
            return _invalid("Unsupported parameter: 'max_tokens' is not supported with this "
                            "model. Use 'max_completion_tokens' instead.",
                            param="max_tokens", code="unsupported_parameter")
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return _invalid(f"Unsupported value: 'temperature' does not support {temperature} "
                            "with this model. Only the default (1) value is supported.",
                            param="temperature", code="unsupported_value")
    words = sum(len(_text(message.get("content")).split())
                for message in body.get("messages") or [] if isinstance(message, dict))
    if words > context_words:
        return _invalid(f"This model's maximum context length is {context_words} tokens. "
                        f"However, your messages resulted in {words} tokens. Please reduce the "
                        "length of the messages.", param="messages", code="context_length_exceeded")
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _tool_forced(body: dict[str, Any]) -> bool:
    choice = body.get("tool_choice")
    return bool(body.get("tools")) and (choice == "required" or isinstance(choice, dict))


def _after_tool_result(body: dict[str, Any]) -> bool:
    """A model that was given its tool's result answers it, unless told to call again."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return last.get("role") == "tool" and not isinstance(body.get("tool_choice"), dict)


def _tool_call(body: dict[str, Any]) -> tuple[str, str]:
    """The function to call (the one `tool_choice` names, else the first tool) and its
    arguments, made from its parameters' schema; `get_weather(city="Paris")` without tools."""
    tools = [tool.get("function") or {} for tool in body.get("tools") or []
             if isinstance(tool, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tools = [tool for tool in tools if tool.get("name") == wanted] or tools
    if not tools:
        return "get_weather", '{"city": "Paris"}'
    function = tools[0]
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    return str(function.get("name")), json.dumps(example_for(schema, schema))


def _structured(body: dict[str, Any]) -> str | None:
    """JSON text for a request whose `response_format` asks for JSON, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(example_for(schema, schema))
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": "Paris"})
    return None


def example_for(schema: Any, root: dict[str, Any], name: str = "", depth: int = 0) -> Any:
    """A value valid for a JSON schema (the subset structured outputs use: objects, arrays,
    scalars, enums, const, anyOf/oneOf/allOf, $ref into $defs or definitions)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example_for(target, root, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf"):
        options = [option for option in schema.get(combinator) or []
                   if isinstance(option, dict) and option.get("type") != "null"]
        if options:
            return example_for(options[0], root, name, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part if isinstance(part, dict) else {})
        return example_for(merged, root, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((option for option in kind if option != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {key: example_for(value, root, key, depth + 1) for key, value in properties.items()}
    if kind == "array":
        return [example_for(schema.get("items") or {}, root, name, depth + 1)]
    if kind == "integer":
        return max(int(schema.get("minimum", 0)), 3)
    if kind == "number":
        return max(float(schema.get("minimum", 0)), 21.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "Paris" if name == "city" else f"example {name}".strip()


def _halves(text: str) -> list[str]:
    middle = max(1, len(text) // 2)
    return [text[:middle], text[middle:]]
