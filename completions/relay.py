"""Relaying a stream: the provider's chunks passed on as they come, settled once however it ends.

The chunk that carries `finish_reason` is held back until the stream ends so
the usage can ride on it, then `[DONE]`; a stream that fails after its first
chunk ends in one error event and no `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse

from billing.closing import Settlement
from completions.admission import Admitted
from completions.catalog import Route
from completions.gateway import FINISH_REASONS, note_failure, response_headers, usage_extras
from completions.services import Ending, RequestOutcome
from completions.settlement import settle, settle_quietly, track
from completions.tokens import count_text
from completions.upstream import EventStream
from completions.upstream_failures import UpstreamFailure
from completions.usage import openai_usage_fields, reported_usage
from novakit.errors import error_body

logger = logging.getLogger(__name__)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk_text(chunk: dict[str, Any]) -> str:
    """A chunk's generated text, tool-call deltas included, as the tokenizer should count it."""
    parts = []
    for choice in chunk["choices"]:
        delta = choice["delta"]
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        if delta.get("tool_calls"):
            parts.append(orjson.dumps(delta["tool_calls"]).decode())
    return "".join(parts)


class _Relay:
    """One relayed stream, settled exactly once however it ends.

    `run()` is what Django iterates: it passes the upstream's chunks on as they
    come, settles, and sends the usage chunk and `[DONE]` at the end. The chunk
    that carries `finish_reason` is held back until the stream ends so the usage
    can ride on it: clients that read `choices[0]` of every chunk (the contract's
    own streaming example) keep working.

    Ways a stream can end, and who settles it:
    - completed, or the upstream failed mid-stream: `run()`, in order;
    - the client left while `run()` awaited the upstream: Django cancels the
      task, `run()` sees CancelledError;
    - the client left while a chunk was being written: Django closes only its
      own wrapper, then the response; `_StreamBody.close()` closes `run()`,
      which sees GeneratorExit;
    - the client left before `run()` ever started (Django was still in the
      middleware): `_StreamBody.close()` or, when the response is simply
      dropped, its finaliser settles through `abandon()`.
    Only what was actually yielded counts as delivered.
    """

    def __init__(self, admitted: Admitted, stream: EventStream, route: Route) -> None:
        self.admitted = admitted
        self.stream = stream
        self.route = route
        self.created = int(time.time())
        self.ttft_ms: int | None = None
        self.outcome: RequestOutcome | None = None  # once settled
        self.delivered: list[str] = []
        self.usage: tuple[int, int] | None = None
        # The upstream's usage object as it sent it (details and cost included).
        self.report: dict[str, Any] | None = None
        self.held_finish: dict[str, Any] | None = None
        self.settled = False

    def normalise(self, event: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(event.get("choices") or []):
            finish = choice.get("finish_reason")
            choices.append({
                **choice,
                "index": choice.get("index", index),
                "delta": choice.get("delta") or {},
                "finish_reason": finish if finish in FINISH_REASONS else None,
            })
        chunk = {
            **event,
            "id": self.admitted.request_id,
            "object": "chat.completion.chunk",
            "created": event["created"] if isinstance(event.get("created"), int) else self.created,
            "model": self.admitted.model.model_id,
            "choices": choices,
        }
        chunk.pop("usage", None)
        return chunk

    def send(self, chunk: dict[str, Any]) -> bytes:
        self.delivered.append(_chunk_text(chunk))
        return _sse(chunk)

    async def finish(self, ending: Ending, *, failure_status: int | None = None,
                     failure_code: str | None = None) -> Settlement | None:
        """Settle, once: the flag is set before the first await, so no second caller gets here.

        Completed, it is billed the upstream's usage; otherwise what was delivered,
        counted by the tokenizer (the prompt was sent: README "Credits").
        """
        if self.settled:
            return None
        self.settled = True
        admitted = self.admitted
        report = None
        if self.usage is not None and ending is Ending.COMPLETED:
            usage, source, report = self.usage, "upstream", self.report
        else:
            usage = (admitted.prompt_estimate, count_text("".join(self.delivered)))
            source = "tokenizer"
        self.outcome = admitted.ended(ending, provider=self.route.provider,
                                      own_key=self.route.own_key, usage=usage, report=report,
                                      upstream_id=str(self.stream.first.get("id") or ""),
                                      source=source, ttft_ms=self.ttft_ms,
                                      failure_status=failure_status, failure_code=failure_code)
        if ending is Ending.COMPLETED:
            return await settle(self.outcome)  # SettlementFailed: an error event, not [DONE]
        await settle_quietly(self.outcome)
        return None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        yield self.stream.first
        async for event in self.stream.rest:
            yield event

    async def run(self) -> AsyncGenerator[bytes, None]:
        admitted = self.admitted
        try:
            async for event in self.events():
                if "error" in event and not event.get("choices"):
                    error = event["error"] if isinstance(event["error"], dict) else {}
                    message = str(error.get("message") or "The provider failed mid-stream")
                    raise UpstreamFailure(502, "upstream_error", message, retryable=False,
                                          kind="stream_error")
                reported = reported_usage(event)
                if reported is not None:
                    self.usage, self.report = reported, event["usage"]
                if not event.get("choices"):
                    continue  # a usage-only chunk: its numbers go on our final chunk
                chunk = self.normalise(event)
                if self.ttft_ms is None:
                    self.ttft_ms = admitted.elapsed_ms()
                if any(choice["finish_reason"] for choice in chunk["choices"]):
                    if self.held_finish is not None:  # n > 1: one finish chunk per choice
                        yield self.send(self.held_finish)
                    self.held_finish = chunk
                    continue
                yield self.send(chunk)
            final = self.held_finish or {
                "id": admitted.request_id, "object": "chat.completion.chunk",
                "created": self.created, "model": admitted.model.model_id, "choices": [],
            }
            self.delivered.append(_chunk_text(final))
            settlement = await self.finish(Ending.COMPLETED)
            assert self.outcome is not None
            usage = {**openai_usage_fields(self.report),
                     **usage_extras(admitted, self.outcome, settlement)}
            final["model_tier"] = admitted.model.tier
            if admitted.usage_chunk:
                # As OpenAI ends a stream asked for its usage: one more chunk, no choices.
                if final["choices"]:
                    yield _sse(final)
                final = {**final, "choices": [], "usage": usage}
            else:
                # Unasked, the usage rides on the finish chunk: clients that read
                # `choices[0]` of every chunk (the contract's example) keep working.
                final["usage"] = usage
            yield _sse(final)
            yield b"data: [DONE]\n\n"
        except UpstreamFailure as exc:
            note_failure(admitted, self.route, exc, mid_stream=True)
            await self.finish(Ending.STREAM_BROKEN, failure_status=exc.status,
                              failure_code=exc.code)
            # One error event, then the stream closes without [DONE]: never a clean end.
            yield _sse(error_body(exc.code, exc.message))
        except (asyncio.CancelledError, GeneratorExit):
            await self.finish(Ending.CANCELLED)
            raise
        except Exception:
            logger.exception("relaying the stream of %s failed", admitted.request_id)
            await self.finish(Ending.STREAM_BROKEN, failure_status=500,
                              failure_code="server_error")
            yield _sse(error_body("server_error", "Internal error while streaming"))
        finally:
            await self.stream.aclose()

    async def abandon(self, iterator: AsyncGenerator[bytes, None]) -> None:
        """Settle a stream Django let go of without running it to its end."""
        try:
            await iterator.aclose()  # suspended at a yield: `run()` settles on GeneratorExit
        except RuntimeError:  # still being iterated after all: that iteration settles
            logger.warning("stream %s closed while running", self.admitted.request_id)
            return
        # Never started, so nothing ran: settle here.
        await self.finish(Ending.CANCELLED)
        await self.stream.aclose()


class _StreamBody:
    """The body of a streaming response: iterated by Django, and closed by it in every case.

    Django calls `close()` once it is done with the response (from a worker
    thread, or on the event loop in novakit/runtime/inference.py's handler); the
    finaliser covers a response dropped before Django got it. Either way a
    stream not yet settled is settled on the event loop.
    """

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.iterator = relay.run()
        self.loop = asyncio.get_running_loop()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iterator

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.iterator.ag_frame is None:  # type: ignore[attr-defined]  # ran to its end, settled
            return
        try:
            # A fresh context: not the closing thread's, which asgiref marks as busy, nor
            # the request's, whose thread may be gone by now.
            self.loop.call_soon_threadsafe(self._abandon, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: the process is exiting
            logger.error("stream %s closed after its event loop", self.relay.admitted.request_id)

    def _abandon(self) -> None:
        track(self.relay.abandon(self.iterator))

    def __del__(self) -> None:
        if hasattr(self, "closed"):  # not when __init__ itself failed
            self.close()


def stream_response(admitted: Admitted, stream: EventStream, route: Route) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _StreamBody(_Relay(admitted, stream, route)), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in response_headers(admitted, None).items():
        response[name] = value
    return response
