"""A fast fake OpenAI-compatible upstream for the benchmark: its own process, loopback only.

It must never be the bottleneck, so it does as little as possible per request:
the non-streaming body and the stream's chunks are serialised once per
configuration, not per request, and the request body is read but not parsed
beyond what the answer needs (`stream`).

Knobs (command-line defaults, changed at run time with `POST /control` and a
JSON object of the same names; `GET /control` shows them):

  ttfb_ms            time to first byte (sleep before the answer starts)
  chunks             content chunks in a streamed answer
  chunk_interval_ms  pause between streamed chunks
  response_bytes     size of the answer's text (split evenly across chunks)
  usage              "final": usage numbers in the non-streamed body and in a
                     last stream chunk (OpenAI's `include_usage` form);
                     "none": no usage anywhere

    python bench/fake_upstream.py --port 9100 --chunks 32 --chunk-interval-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

MODEL = "openai/gpt-4o-mini"


@dataclass
class Knobs:
    ttfb_ms: float = 0.0
    chunks: int = 32
    chunk_interval_ms: float = 20.0
    response_bytes: int = 256
    usage: str = "final"

    def check(self) -> None:
        if self.ttfb_ms < 0 or self.chunk_interval_ms < 0:
            raise ValueError("times cannot be negative")
        if not 1 <= self.chunks <= 100_000:
            raise ValueError("chunks must be between 1 and 100000")
        if not 1 <= self.response_bytes <= 10_000_000:
            raise ValueError("response_bytes must be between 1 and 10000000")
        if self.usage not in ("final", "none"):
            raise ValueError("usage must be 'final' or 'none'")


class Answers:
    """Everything an answer sends, rendered once for the current knobs."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        text = ("lorem ipsum dolor sit amet " * (knobs.response_bytes // 27 + 1))[
            : knobs.response_bytes
        ]
        # One content piece per chunk; every piece is non-empty so a client can
        # count delivered chunks by counting content deltas.
        size = max(1, len(text) // knobs.chunks)
        pieces = [text[i * size : (i + 1) * size] for i in range(knobs.chunks - 1)]
        pieces.append(text[(knobs.chunks - 1) * size :] or "x")
        usage = {"prompt_tokens": 12, "completion_tokens": knobs.chunks,
                 "total_tokens": 12 + knobs.chunks}
        created = int(time.time())
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                "model": MODEL}
        completion: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
        }
        if knobs.usage == "final":
            completion["usage"] = usage
        self.completion = json.dumps(completion).encode()
        events = []
        for index, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece}
            if index == 0:
                delta["role"] = "assistant"
            events.append({**base, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]})
        events.append({**base, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]})
        self.stream_events = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        # The last content chunk and the finish chunk go together: the finish
        # chunk carries no content, so it needs no pause of its own.
        tail = [self.stream_events.pop()]
        if knobs.usage == "final":
            tail.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode()
                        + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        self.stream_tail = b"".join(tail)


class FakeUpstream:
    def __init__(self, knobs: Knobs) -> None:
        self.answers = Answers(knobs)
        self.served = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.served += 1
        answers = self.answers  # a /control change mid-request does not mix two configs
        knobs = answers.knobs
        # A cheap test instead of a JSON parse; every client here sends `"stream": true`
        # with or without a space.
        streamed = b'"stream":true' in raw.replace(b" ", b"")
        if knobs.ttfb_ms:
            await asyncio.sleep(knobs.ttfb_ms / 1000)
        if not streamed:
            return web.Response(body=answers.completion, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        interval = knobs.chunk_interval_ms / 1000
        last = len(answers.stream_events) - 1
        for index, event in enumerate(answers.stream_events):
            await response.write(event)
            if interval and index < last:
                await asyncio.sleep(interval)
        await response.write(answers.stream_tail)
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "openai"}]})

    async def get_control(self, request: web.Request) -> web.Response:
        return web.json_response({**asdict(self.answers.knobs), "served": self.served})

    async def set_control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            knobs = Knobs(**{**asdict(self.answers.knobs), **changes})
            knobs.check()
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        self.answers = Answers(knobs)
        return web.json_response(asdict(knobs))


def build_app(knobs: Knobs) -> web.Application:
    fake = FakeUpstream(knobs)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_get("/control", fake.get_control)
    app.router.add_post("/control", fake.set_control)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttfb-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--chunk-interval-ms", type=float, default=20.0)
    parser.add_argument("--response-bytes", type=int, default=256)
    parser.add_argument("--usage", choices=["final", "none"], default="final")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the fake upstream serves loopback addresses only")
    knobs = Knobs(ttfb_ms=args.ttfb_ms, chunks=args.chunks,
                  chunk_interval_ms=args.chunk_interval_ms,
                  response_bytes=args.response_bytes, usage=args.usage)
    knobs.check()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(knobs), host=args.host, port=args.port, access_log=None,
                print=None, backlog=4096)


if __name__ == "__main__":
    main()
