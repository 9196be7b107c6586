"""How an attempt on a provider failed, as the gateway tells its client: `UpstreamFailure`,
and the mapping from what the provider answered (status, body, Retry-After) to it."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson

from completions.catalog import Route
from novakit.errors import ErrorCode


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


def timeout_failure(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(
        504, "upstream_timeout", f"Provider '{provider}' timed out ({what})",
        retryable=True, kind="timeout",
    )


def connect_failure(provider: str) -> UpstreamFailure:
    return UpstreamFailure(
        503, "upstream_unavailable", f"Provider '{provider}' could not be reached",
        retryable=True, kind="connect",
    )


def malformed(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(
        502, "upstream_error", f"Provider '{provider}' sent a malformed {what}",
        retryable=True, kind="malformed",
    )


def key_at_limit(provider: str, wait: float) -> UpstreamFailure:
    """Every key of the provider tried is at its requests-per-minute (completions.key_limits)."""
    return UpstreamFailure(
        503, "upstream_unavailable", f"Provider '{provider}' is at NovaKit's request limit for "
        "its keys", retryable=True, kind="key_limit", retry_after=wait,
    )


def stream_cut(provider: str) -> UpstreamFailure:
    return UpstreamFailure(
        502, "upstream_error", f"Provider '{provider}' closed the stream early",
        retryable=True, kind="stream_cut",
    )


def failure_from_status(route: Route, status: int, body: bytes,
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


