"""One error family for every API surface.

Every error NovaKit answers with has a code in `ERRORS`, the one table that
gives each code its HTTP status and its OpenAI error `type`. An `ApiError` is
built from a code (`ApiError("model_not_found", "...", param="model")`); its
status and type come from the table. It carries the message, the offending
parameter and optional extras (`remaining`), and is rendered in one shape
everywhere: OpenAI's `{"error": {...}}`, which the OpenAI SDKs parse into
typed exceptions, plus the seed contract's top-level `code` (and extras), so
clients written against either read it.

The public contract fixes six of the codes: 400 invalid_request, 401
unauthorized, 402 quota_exceeded, 403 forbidden, 429 rate_limited and 500
server_error (retry safe), with the body
`{"error": ..., "code": "quota_exceeded", "remaining": 0}` for quota errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from django.http import HttpResponse

logger = logging.getLogger(__name__)

ErrorCode = Literal[
    "invalid_request",
    "unauthorized",
    "quota_exceeded",
    "forbidden",
    "not_found",
    "model_not_found",
    "method_not_allowed",
    "not_acceptable",
    "conflict",
    "idempotency_conflict",
    "request_too_large",
    "unsupported_media_type",
    "idempotency_key_reused",
    "rate_limited",
    "server_error",
    "upstream_error",
    "service_unavailable",
    "upstream_unavailable",
    "upstream_timeout",
]


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    # OpenAI's error `type`, which its SDKs and the clients built on them read.
    type: str
    # The code for its status when nothing more specific is known (a framework's
    # exception that carries only a status): one per status.
    generic: bool = False


ERRORS: dict[ErrorCode, ErrorKind] = {
    "invalid_request": ErrorKind(400, "invalid_request_error", generic=True),
    "unauthorized": ErrorKind(401, "authentication_error", generic=True),
    "quota_exceeded": ErrorKind(402, "insufficient_quota", generic=True),
    "forbidden": ErrorKind(403, "permission_error", generic=True),
    "not_found": ErrorKind(404, "invalid_request_error", generic=True),
    "model_not_found": ErrorKind(404, "invalid_request_error"),
    "method_not_allowed": ErrorKind(405, "invalid_request_error", generic=True),
    "not_acceptable": ErrorKind(406, "invalid_request_error", generic=True),
    # The request contradicts the state of what it changes (the last owner's role).
    "conflict": ErrorKind(409, "invalid_request_error", generic=True),
    # An Idempotency-Key whose first request is still running: retry later.
    "idempotency_conflict": ErrorKind(409, "invalid_request_error"),
    "request_too_large": ErrorKind(413, "invalid_request_error", generic=True),
    "unsupported_media_type": ErrorKind(415, "invalid_request_error", generic=True),
    "idempotency_key_reused": ErrorKind(422, "invalid_request_error"),
    "rate_limited": ErrorKind(429, "rate_limit_error", generic=True),
    "server_error": ErrorKind(500, "server_error", generic=True),
    "upstream_error": ErrorKind(502, "upstream_error", generic=True),
    # Our own database is unreachable.
    "service_unavailable": ErrorKind(503, "server_error", generic=True),
    # The model's provider is not configured, unreachable or rate limiting us.
    "upstream_unavailable": ErrorKind(503, "upstream_error"),
    "upstream_timeout": ErrorKind(504, "upstream_error", generic=True),
}
assert set(ERRORS) == set(get_args(ErrorCode)), "ERRORS and ErrorCode name the same codes"

_GENERIC: dict[int, ErrorCode] = {
    kind.status: code for code, kind in ERRORS.items() if kind.generic
}
# How long a client should wait before retrying while our database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 2
INTERNAL_ERROR = "Internal error (retry safe)"


def code_for_status(status: int) -> ErrorCode:
    """The code of a framework's error that carries only an HTTP status.

    A status the table has no code for becomes invalid_request (a 4xx) or server_error,
    and so is answered with that code's status: every answer's status is the table's.
    """
    if status in _GENERIC:
        return _GENERIC[status]
    return "invalid_request" if status < 500 else "server_error"


class ApiError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        extras: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        provider_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        kind = ERRORS[code]
        self.status = kind.status
        self.code: ErrorCode = code
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
    code: ErrorCode, message: str, *, param: str | None = None,
    extras: dict[str, Any] | None = None, provider_error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one error shape. With `provider_error` (a provider refused the request itself),
    `error` keeps the provider's `code`, `param`, `type` and message, so clients that branch
    on them (`context_length_exceeded`, LangChain's overflow handling) see what the provider
    said; the top-level `code` stays NovaKit's own vocabulary."""
    error: dict[str, Any] = {
        "message": message,
        "type": ERRORS[code].type,
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
    return ApiError("invalid_request", message, param=param)


def unauthorized(message: str = "Invalid or missing API key") -> ApiError:
    return ApiError("unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError("forbidden", message)


def not_found(message: str = "Not found") -> ApiError:
    return ApiError("not_found", message)


def model_not_found(model_id: str) -> ApiError:
    return ApiError("model_not_found", f"The model '{model_id}' does not exist", param="model")


def server_error(message: str = INTERNAL_ERROR) -> ApiError:
    return ApiError("server_error", message)


def database_unavailable() -> ApiError:
    """Our database is unreachable (restarting, failing over): a 503 to retry, not a 500."""
    return ApiError(
        "service_unavailable",
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
        # DRF sets `wait` (whole seconds, or None) in Throttled.__init__; its stubs omit it.
        wait = int(getattr(exc, "wait", None) or 1)
        return error_response(
            ApiError("rate_limited", "Too many requests", headers={"Retry-After": str(wait)})
        )
    if isinstance(exc, drf.ValidationError):
        param, message = _first_drf_error(exc.detail)
        return error_response(invalid_request(message, param=param))
    if isinstance(exc, drf.APIException):
        return error_response(ApiError(code_for_status(exc.status_code), str(exc.detail)))
    if is_database_outage(exc):
        logger.warning("management API: database unavailable (%s)", exc)
        return error_response(database_unavailable())
    logger.exception("unhandled error in management API")
    return error_response(server_error())


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
