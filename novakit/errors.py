"""One error family for every API surface.

An `ApiError` carries the HTTP status, NovaKit's error code, a message, the
offending parameter and optional extras (`remaining`). It is rendered in one
shape everywhere: OpenAI's `{"error": {...}}`, which the OpenAI SDKs parse into
typed exceptions, plus the seed contract's top-level `code` (and extras), so
clients written against either read it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.http import HttpResponse

logger = logging.getLogger(__name__)

# NovaKit code -> OpenAI error `type`.
_OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "unauthorized": "authentication_error",
    "quota_exceeded": "insufficient_quota",
    "forbidden": "permission_error",
    "not_found": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "idempotency_conflict": "invalid_request_error",
    "idempotency_key_reused": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "server_error": "server_error",
    "upstream_error": "upstream_error",
    "upstream_unavailable": "upstream_error",
    "upstream_timeout": "upstream_error",
    "service_unavailable": "server_error",
}
# How long a client should wait before retrying while our database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 2


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        extras: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        provider_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.extras = extras or {}
        self.headers = headers or {}
        # A provider's own `error` object, passed on as it said it (see error_body).
        self.provider_error = provider_error

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, param=self.param, extras=self.extras,
                          provider_error=self.provider_error)


def error_body(
    code: str, message: str, *, param: str | None = None, extras: dict[str, Any] | None = None,
    provider_error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one error shape. With `provider_error` (a provider refused the request itself),
    `error` keeps the provider's `code`, `param`, `type` and message, so clients that branch
    on them (`context_length_exceeded`, LangChain's overflow handling) see what the provider
    said; the top-level `code` stays NovaKit's own vocabulary."""
    error: dict[str, Any] = {
        "message": message,
        "type": _OPENAI_TYPES.get(code, "invalid_request_error"),
        "code": code,
        "param": param,
    }
    if provider_error:
        for name in ("message", "type", "code", "param"):
            value = provider_error.get(name)
            if isinstance(value, str) and value:
                error[name] = value
    body: dict[str, Any] = {"error": error, "code": code}
    if extras:
        body.update(extras)
    return body


def invalid_request(message: str, *, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, param=param)


def unauthorized(message: str = "Invalid or missing API key") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "Not found") -> ApiError:
    return ApiError(404, "not_found", message)


def database_unavailable() -> ApiError:
    """Our database is unreachable (restarting, failing over): a 503 to retry, not a 500."""
    return ApiError(
        503, "service_unavailable",
        "The service is temporarily unavailable (its database cannot be reached); retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def is_database_outage(exc: BaseException) -> bool:
    """True for the errors of a database that cannot be reached or whose connection broke.

    Django wraps the driver's errors in its own `OperationalError`/`InterfaceError`
    (a refused connection, a connection the server closed, a pool timeout); a
    driver error that escaped the wrapping is recognised too. Other database
    errors (an integrity error, a bad query) are bugs, and stay 500s; so are
    SQLite's operational errors (`no such table`) other than a busy database.
    """
    import sqlite3

    from django.db import InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        if isinstance(exc.__cause__, sqlite3.Error):
            return "locked" in str(exc) or "unable to open" in str(exc)
        return True
    try:
        import psycopg
    except ImportError:  # SQLite-only installs
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(error: ApiError) -> HttpResponse:
    return json_response(error.body(), status=error.status, headers=error.headers)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """Render DRF's exceptions and our ApiError in the one error shape."""
    from django.http import Http404
    from rest_framework import exceptions as drf

    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, Http404 | drf.NotFound):
        return error_response(not_found())
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return error_response(unauthorized(str(exc.detail)))
    if isinstance(exc, drf.PermissionDenied):
        return error_response(forbidden(str(exc.detail)))
    if isinstance(exc, drf.Throttled):
        wait = int(exc.wait or 1)
        return error_response(
            ApiError(429, "rate_limited", "Too many requests", headers={"Retry-After": str(wait)})
        )
    if isinstance(exc, drf.ValidationError):
        param, message = _first_drf_error(exc.detail)
        return error_response(invalid_request(message, param=param))
    if isinstance(exc, drf.APIException):
        return error_response(ApiError(exc.status_code, "invalid_request", str(exc.detail)))
    if is_database_outage(exc):
        logger.warning("management API: database unavailable (%s)", exc)
        return error_response(database_unavailable())
    logger.exception("unhandled error in management API")
    return error_response(ApiError(500, "server_error", "Internal error (retry safe)"))


def _first_drf_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    if isinstance(detail, dict):
        for field, value in detail.items():
            name = field if field != "non_field_errors" else ""
            return _first_drf_error(value, f"{path}.{name}".strip(".") if name else path)
    if isinstance(detail, list) and detail:
        return _first_drf_error(detail[0], path)
    param = path or None
    message = f"{param}: {detail}" if param else str(detail)
    return param, message
