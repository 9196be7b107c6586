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
}


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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.extras = extras or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, param=self.param, extras=self.extras)


def error_body(
    code: str, message: str, *, param: str | None = None, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(code, "invalid_request_error"),
            "code": code,
            "param": param,
        },
        "code": code,
    }
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
