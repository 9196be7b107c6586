"""Talking to upstream providers: one pooled HTTP client per process, SSE parsing, error mapping.

Each function here makes one attempt against one route and raises
`UpstreamFailure` on anything that went wrong; `gateway` decides whether to
fall back to the next route (only before a byte has gone to the client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson
from django.conf import settings

from completions import echo
from completions.catalog import Route

logger = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """An attempt failed. `retryable` says whether another route may be tried."""

    def __init__(
        self, status: int, code: str, message: str, *, retryable: bool, kind: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        # For counting and logs: timeout, connect, http_429, http_5xx, malformed, ...
        self.kind = kind


def _timed_out(exc: BaseException) -> bool:
    """Whether a failed attempt timed out (504) rather than lost its connection (503/502).

    The aiohttp transport (httpx-aiohttp 0.2) reports every aiohttp connection
    error as `httpx.ConnectTimeout`, a refused connection and a server that
    hung up included; the aiohttp error it came from tells them apart.
    """
    cause = exc.__cause__
    return not (isinstance(cause, aiohttp.ClientConnectionError)
                and not isinstance(cause, TimeoutError))


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


class _ClientHolder:
    """The process's pooled client, created on first use inside the running event loop."""

    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self.client is None or self.loop is not loop or self.client.is_closed:
            # A client is bound to the loop that made it (tests run several loops).
            self.client = _make_client()
            self.loop = loop
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def _make_client() -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=30,
    )
    transport: httpx.AsyncBaseTransport | None = None
    if settings.UPSTREAM_TRANSPORT == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    return httpx.AsyncClient(limits=limits, timeout=_timeout(), transport=transport)


def _timeout() -> httpx.Timeout:
    """Read per request, not fixed when the pooled client was made: settings can change."""
    return httpx.Timeout(
        connect=settings.UPSTREAM_CONNECT_TIMEOUT,
        read=settings.UPSTREAM_CHUNK_TIMEOUT,
        write=settings.UPSTREAM_CONNECT_TIMEOUT,
        pool=settings.UPSTREAM_CONNECT_TIMEOUT,
    )


upstream_client = _ClientHolder()


def _headers(route: Route) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {route.api_key}",
        "Content-Type": "application/json",
        "X-Title": "NovaKit",
    }


def _failure_from_status(route: Route, status: int, body: bytes) -> UpstreamFailure:
    message = _provider_message(body) or f"HTTP {status}"
    if status == 429:
        return UpstreamFailure(
            503, "upstream_unavailable", f"Provider '{route.provider}' is rate limiting: {message}",
            retryable=True, kind="http_429",
        )
    if status >= 500:
        return UpstreamFailure(
            502, "upstream_error", f"Provider '{route.provider}' failed: {message}",
            retryable=True, kind="http_5xx",
        )
    if status in (401, 403):
        # Our credentials, not the caller's fault: another route may work.
        return UpstreamFailure(
            502, "upstream_error", f"Provider '{route.provider}' refused NovaKit's credentials",
            retryable=True, kind="http_auth",
        )
    # 400, 404, 413, 422: the request itself (context too long, bad tool schema).
    return UpstreamFailure(400, "invalid_request", message, retryable=False, kind="http_4xx")


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
    client = upstream_client.get()
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            response = await client.post(
                f"{route.base_url}/chat/completions", content=orjson.dumps(payload),
                headers=_headers(route), timeout=_timeout(),
            )
    except (TimeoutError, httpx.TimeoutException) as exc:
        if _timed_out(exc):
            raise _timeout_failure(route.provider, "no response") from None
        raise _connect_failure(route.provider) from None
    except httpx.TransportError:
        raise _connect_failure(route.provider) from None
    except httpx.HTTPError:  # a body that cannot be decoded (bad gzip, bad charset)
        raise _malformed(route.provider, "response") from None
    if response.status_code != 200:
        raise _failure_from_status(route, response.status_code, response.content)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _malformed(route.provider, "response") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        if isinstance(data, dict) and data.get("error"):
            raise _failure_from_status(route, 502, response.content)
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
    response: httpx.Response | None

    async def aclose(self) -> None:
        aclose = getattr(self.rest, "aclose", None)
        if aclose is not None:
            await aclose()
        if self.response is not None:
            await self.response.aclose()


async def _sse_events(response: httpx.Response, provider: str) -> AsyncIterator[dict[str, Any]]:
    """Parsed `data:` events until `[DONE]`; comments and keep-alives are skipped."""
    data_lines: list[str] = []
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data_lines.append(line[5:].strip())
                continue
            if line.startswith(":") or line.strip() or not data_lines:
                continue  # comment / other field / blank line with no event pending
            data = "\n".join(data_lines)
            data_lines = []
            if data == "[DONE]":
                return
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise _malformed(provider, "stream event") from None
            if not isinstance(event, dict) or not _well_formed(event, "delta"):
                raise _malformed(provider, "stream event")
            yield event
    except httpx.TimeoutException as exc:
        if _timed_out(exc):
            raise _timeout_failure(provider, "gap between chunks") from None
        raise UpstreamFailure(
            502, "upstream_error", f"Provider '{provider}' closed the stream early",
            retryable=True, kind="stream_cut",
        ) from None
    except httpx.HTTPError:  # the connection dropped, or a body that cannot be decoded
        raise UpstreamFailure(
            502, "upstream_error", f"Provider '{provider}' closed the stream early",
            retryable=True, kind="stream_cut",
        ) from None
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
    client = upstream_client.get()
    request = client.build_request(
        "POST", f"{route.base_url}/chat/completions", content=orjson.dumps(payload),
        headers={**_headers(route), "Accept": "text/event-stream"}, timeout=_timeout(),
    )
    response: httpx.Response | None = None
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT):
            response = await client.send(request, stream=True)
            if response.status_code != 200:
                body = await response.aread()
                raise _failure_from_status(route, response.status_code, body)
            events = _sse_events(response, route.provider)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise _malformed(route.provider, "empty stream") from None
            if "error" in first and not first.get("choices"):
                raise _failure_from_status(route, 502, orjson.dumps(first))
    except UpstreamFailure:
        if response is not None:
            await response.aclose()
        raise
    except (TimeoutError, httpx.TimeoutException) as exc:
        if response is not None:
            await response.aclose()
        if _timed_out(exc):
            raise _timeout_failure(route.provider, "no first byte") from None
        raise _connect_failure(route.provider) from None
    except httpx.TransportError:
        if response is not None:
            await response.aclose()
        raise _connect_failure(route.provider) from None
    except BaseException:
        # Cancelled (the client left) or anything unforeseen: never leak the connection.
        if response is not None:
            await response.aclose()
        raise
    return EventStream(first=first, rest=events, response=response)
