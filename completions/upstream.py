"""Talking to upstream providers: one pooled HTTP client per process, SSE parsing.

Each function here makes one attempt against one route, in the way its kind
of provider is spoken to (completions.kinds), and raises `UpstreamFailure`
(completions.upstream_failures) on anything that went wrong; `gateway` decides whether to
fall back to the next route (only before a byte has gone to the client).

The client is aiohttp's: on this hot path it costs about a tenth of the CPU
of httpx's (~2.4 ms per request less; 58 -> 77 req/s at c=16), which NovaKit still uses where
speed does not matter (webhooks, catalog sync).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from completions import echo
from completions.catalog import Route
from completions.kinds import ProviderKind, Unsupported, kind_of
from completions.upstream_failures import (
    UpstreamFailure,
    connect_failure,
    failure_from_status,
    malformed,
    stream_cut,
    timeout_failure,
)

logger = logging.getLogger(__name__)


class _ClientHolder:
    """The process's pooled session, created on first use inside the running event loop."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self.session is None or self.loop is not loop or self.session.closed:
            # A session is bound to the loop that made it (tests run several loops).
            self.session = _make_session()
            self.loop = loop
        return self.session

    async def aclose(self) -> None:
        """Close the session, from the loop it belongs to (a session of a gone loop is dropped)."""
        session, self.session = self.session, None
        if session is not None and self.loop is asyncio.get_running_loop():
            await session.close()


def _make_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.UPSTREAM_MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Each request passes its own timeout (settings can change); none for the session.
        timeout=aiohttp.ClientTimeout(total=None),
        # HTTP(S)_PROXY / NO_PROXY are honoured when set, as httpx does; reading the
        # environment on every request costs CPU, so only when there is a proxy to use.
        trust_env=bool(urllib.request.getproxies()),
    )


def _timeout() -> aiohttp.ClientTimeout:
    """Read per request, not fixed when the pooled session was made: settings can change.

    `connect` bounds the wait for a pooled connection plus the connect itself;
    `sock_read` is the longest silence allowed while reading the answer.
    """
    return aiohttp.ClientTimeout(
        total=None,
        connect=settings.UPSTREAM_CONNECT_TIMEOUT,
        sock_connect=settings.UPSTREAM_CONNECT_TIMEOUT,
        sock_read=settings.UPSTREAM_CHUNK_TIMEOUT,
    )


upstream_client = _ClientHolder()


def _request(route: Route, payload: dict[str, Any]) -> tuple[ProviderKind, bytes]:
    """The route's kind and the body it takes (completions.kinds)."""
    kind = kind_of(route)
    try:
        return kind, orjson.dumps(kind.request(payload))
    except Unsupported as exc:  # another route may do it, so retryable; no cooldown
        raise UpstreamFailure(400, "invalid_request", str(exc), retryable=True,
                              kind="unsupported") from None


async def complete(route: Route, payload: dict[str, Any]) -> dict[str, Any]:
    """One non-streaming attempt; returns the provider's completion object."""
    if route.kind == "builtin":
        return echo.complete(payload)
    kind, body = _request(route, payload)
    session = upstream_client.get()
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            async with session.post(
                kind.url(route), data=body, headers=kind.headers(route), timeout=_timeout(),
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.read()
                retry_after = response.headers.get("Retry-After")
    except TimeoutError:  # asyncio's, and aiohttp's connect and read timeouts
        raise timeout_failure(route.provider, "no response") from None
    except aiohttp.ClientPayloadError:  # a body cut short, or one that cannot be decoded
        raise malformed(route.provider, "response") from None
    except (aiohttp.ClientError, OSError):
        raise connect_failure(route.provider) from None
    if status != 200:
        raise failure_from_status(route, status, body, retry_after)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(route.provider, "response") from None
    if isinstance(data, dict):
        data = kind.answer(data)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        if isinstance(data, dict) and data.get("error"):
            raise failure_from_status(route, 502, body)
        raise malformed(route.provider, "response")
    if not _well_formed(data, "message"):
        raise malformed(route.provider, "response")
    return data


def _well_formed(data: dict[str, Any], part: str) -> bool:
    """Choices the gateway can read: objects whose `message` (or `delta`) is an object."""
    choices = data.get("choices")
    if choices is None:
        return True  # a usage-only (or error) chunk
    if not isinstance(choices, list):
        return False
    return all(
        isinstance(choice, dict) and isinstance(choice.get(part) or {}, dict) for choice in choices
    )


@dataclass
class EventStream:
    """An open upstream stream whose first event has already arrived."""

    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]
    response: aiohttp.ClientResponse | None

    async def aclose(self) -> None:
        aclose = getattr(self.rest, "aclose", None)
        if aclose is not None:
            await aclose()
        if self.response is not None:
            self.response.release()


async def _received_bytes(body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive; when the connection breaks, what came before it first.

    aiohttp's readers raise a broken connection's error before handing out what
    they had already buffered, so the chunks that arrived with the hang-up
    (an upstream that sends its last events and drops the connection) would
    be lost. Those bytes are still in the reader's buffer (`_buffer`, a deque
    of bytes, whole because only `readany` reads it); they are yielded before
    the error is raised again. tests/completions/test_billing_paths.py fails
    if an aiohttp upgrade changes this.
    """
    while True:
        try:
            data = await body.readany()
        except aiohttp.ClientPayloadError:
            left = b"".join(getattr(body, "_buffer", ()))
            if left:
                yield left
            raise
        if not data:
            return
        yield data


async def _lines(body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines without their endings (LF, CRLF or a lone CR), the last one included."""
    pending = b""  # the start of a line whose end has not arrived yet
    after_cr = False  # the last piece ended on CR: an LF opening the next one belongs to it
    async for received in _received_bytes(body):
        if after_cr and received.startswith(b"\n"):
            received = received[1:]
        lines = (pending + received).splitlines(keepends=True)
        pending = b""
        after_cr = bool(lines) and lines[-1].endswith(b"\r")
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            pending = lines.pop()
        for line in lines:
            yield line.rstrip(b"\r\n")
    if pending:
        yield pending


async def _sse_events(
    response: aiohttp.ClientResponse, provider: str, *, last_event: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Parsed `data:` events until `[DONE]` (or the event whose `type` is `last_event`,
    included); comments, keep-alives and `event:` lines are skipped."""
    data_lines: list[bytes] = []
    try:
        async for line in _lines(response.content):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].strip())
                continue
            if line.startswith(b":") or line.strip() or not data_lines:
                continue  # comment / other field / blank line with no event pending
            data = b"\n".join(data_lines)
            data_lines = []
            if data == b"[DONE]":
                return
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise malformed(provider, "stream event") from None
            if not isinstance(event, dict) or not _well_formed(event, "delta"):
                raise malformed(provider, "stream event")
            yield event
            if last_event is not None and event.get("type") == last_event:
                return
    except TimeoutError:
        raise timeout_failure(provider, "gap between chunks") from None
    except (aiohttp.ClientError, OSError):  # the connection dropped, or an undecodable body
        raise stream_cut(provider) from None
    # The connection ended without `[DONE]`: a truncated stream is not a success.
    raise UpstreamFailure(
        502, "upstream_error", f"Provider '{provider}' ended the stream without finishing it",
        retryable=True, kind="stream_cut",
    )


async def open_stream(route: Route, payload: dict[str, Any]) -> EventStream:
    """One streaming attempt, read up to its first event so a failure can still fall back."""
    if route.kind == "builtin":
        events = echo.stream(payload)
        first = await anext(events)
        return EventStream(first=first, rest=events, response=None)
    kind, body = _request(route, payload)
    session = upstream_client.get()
    response: aiohttp.ClientResponse | None = None
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            response = await session.post(
                kind.url(route), data=body,
                headers={**kind.headers(route), "Accept": "text/event-stream"},
                timeout=_timeout(), allow_redirects=False,
            )
            if response.status != 200:
                refusal = await response.read()
                raise failure_from_status(route, response.status, refusal,
                                           response.headers.get("Retry-After"))
            events = _sse_events(response, route.provider, last_event=kind.last_event)
            if kind.chunks is not None:
                events = kind.chunks(events)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise malformed(route.provider, "empty stream") from None
            if "error" in first and not first.get("choices"):
                raise failure_from_status(route, 502, orjson.dumps(first))
    except UpstreamFailure:
        if response is not None:
            response.release()
        raise
    except TimeoutError:
        if response is not None:
            response.release()
        raise timeout_failure(route.provider, "no first byte") from None
    except (aiohttp.ClientError, OSError):
        if response is not None:
            response.release()
        raise connect_failure(route.provider) from None
    except BaseException:
        # Cancelled (the client left) or anything unforeseen: never leak the connection.
        if response is not None:
            response.release()
        raise
    return EventStream(first=first, rest=events, response=response)
