"""Talking to upstream providers: one pooled HTTP client per process, SSE parsing, error mapping.

Each function here makes one attempt against one route and raises
`UpstreamFailure` on anything that went wrong; `gateway` decides whether to
fall back to the next route (only before a byte has gone to the client).

The client is aiohttp's: on this hot path it costs about a tenth of the CPU
of httpx's (~2.4 ms per request less; 58 -> 77 req/s at c=16), which NovaKit still uses where
speed does not matter (webhooks, catalog sync).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from completions import echo
from completions.catalog import Route
from novakit.errors import ErrorCode

logger = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """An attempt failed. `retryable` says whether another route may be tried."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, retryable: bool, kind: str,
        provider_error: dict[str, Any] | None = None, retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        # For counting and logs: timeout, connect, http_429, http_5xx, malformed, ...
        self.kind = kind
        # The provider's `error` object when it refused the request itself (a 4xx).
        self.provider_error = provider_error
        # Seconds the provider asked us to wait (its Retry-After), if it said.
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """An HTTP `Retry-After`: seconds, or a date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _timeout_failure(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(
        504, "upstream_timeout", f"Provider '{provider}' timed out ({what})",
        retryable=True, kind="timeout",
    )


def _connect_failure(provider: str) -> UpstreamFailure:
    return UpstreamFailure(
        503, "upstream_unavailable", f"Provider '{provider}' could not be reached",
        retryable=True, kind="connect",
    )


def _malformed(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(
        502, "upstream_error", f"Provider '{provider}' sent a malformed {what}",
        retryable=True, kind="malformed",
    )


def _stream_cut(provider: str) -> UpstreamFailure:
    return UpstreamFailure(
        502, "upstream_error", f"Provider '{provider}' closed the stream early",
        retryable=True, kind="stream_cut",
    )


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


def _headers(route: Route) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {route.api_key}",
        "Content-Type": "application/json",
        "X-Title": "NovaKit",
    }


def _failure_from_status(route: Route, status: int, body: bytes,
                         retry_after: str | None = None) -> UpstreamFailure:
    message = _provider_message(body) or f"HTTP {status}"
    if status == 429:
        return UpstreamFailure(
            503, "upstream_unavailable", f"Provider '{route.provider}' is rate limiting: {message}",
            retryable=True, kind="http_429", retry_after=retry_after_seconds(retry_after),
        )
    if status >= 500:
        return UpstreamFailure(
            502, "upstream_error", f"Provider '{route.provider}' failed: {message}",
            retryable=True, kind="http_5xx", retry_after=retry_after_seconds(retry_after),
        )
    if status in (401, 403):
        # Our credentials, not the caller's fault: another route may work.
        return UpstreamFailure(
            502, "upstream_error", f"Provider '{route.provider}' refused NovaKit's credentials",
            retryable=True, kind="http_auth",
        )
    # 400, 404, 413, 422: the request itself (context too long, bad tool schema).
    return UpstreamFailure(400, "invalid_request", message, retryable=False, kind="http_4xx",
                           provider_error=_provider_error(body))


def _provider_error(body: bytes) -> dict[str, Any] | None:
    """The provider's OpenAI-style `error` object: its code, param and type, as strings."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    kept = {name: error.get(name) for name in ("message", "type", "code", "param")}
    kept["message"] = _provider_message(body) or None
    return {name: value for name, value in kept.items() if isinstance(value, str) and value}


def _provider_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:500]
        if isinstance(error, str):
            return error[:500]
    return ""


async def complete(route: Route, payload: dict[str, Any]) -> dict[str, Any]:
    """One non-streaming attempt; returns the provider's completion object."""
    if route.kind == "builtin":
        return echo.complete(payload)
    session = upstream_client.get()
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            async with session.post(
                f"{route.base_url}/chat/completions", data=orjson.dumps(payload),
                headers=_headers(route), timeout=_timeout(), allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.read()
                retry_after = response.headers.get("Retry-After")
    except TimeoutError:  # asyncio's, and aiohttp's connect and read timeouts
        raise _timeout_failure(route.provider, "no response") from None
    except aiohttp.ClientPayloadError:  # a body cut short, or one that cannot be decoded
        raise _malformed(route.provider, "response") from None
    except (aiohttp.ClientError, OSError):
        raise _connect_failure(route.provider) from None
    if status != 200:
        raise _failure_from_status(route, status, body, retry_after)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _malformed(route.provider, "response") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        if isinstance(data, dict) and data.get("error"):
            raise _failure_from_status(route, 502, body)
        raise _malformed(route.provider, "response")
    if not _well_formed(data, "message"):
        raise _malformed(route.provider, "response")
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
    response: aiohttp.ClientResponse, provider: str
) -> AsyncIterator[dict[str, Any]]:
    """Parsed `data:` events until `[DONE]`; comments and keep-alives are skipped."""
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
                raise _malformed(provider, "stream event") from None
            if not isinstance(event, dict) or not _well_formed(event, "delta"):
                raise _malformed(provider, "stream event")
            yield event
    except TimeoutError:
        raise _timeout_failure(provider, "gap between chunks") from None
    except (aiohttp.ClientError, OSError):  # the connection dropped, or an undecodable body
        raise _stream_cut(provider) from None
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
    session = upstream_client.get()
    response: aiohttp.ClientResponse | None = None
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            response = await session.post(
                f"{route.base_url}/chat/completions", data=orjson.dumps(payload),
                headers={**_headers(route), "Accept": "text/event-stream"}, timeout=_timeout(),
                allow_redirects=False,
            )
            if response.status != 200:
                body = await response.read()
                raise _failure_from_status(route, response.status, body,
                                           response.headers.get("Retry-After"))
            events = _sse_events(response, route.provider)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise _malformed(route.provider, "empty stream") from None
            if "error" in first and not first.get("choices"):
                raise _failure_from_status(route, 502, orjson.dumps(first))
    except UpstreamFailure:
        if response is not None:
            response.release()
        raise
    except TimeoutError:
        if response is not None:
            response.release()
        raise _timeout_failure(route.provider, "no first byte") from None
    except (aiohttp.ClientError, OSError):
        if response is not None:
            response.release()
        raise _connect_failure(route.provider) from None
    except BaseException:
        # Cancelled (the client left) or anything unforeseen: never leak the connection.
        if response is not None:
            response.release()
        raise
    return EventStream(first=first, rest=events, response=response)
