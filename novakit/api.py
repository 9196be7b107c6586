"""The inference API (django-ninja): routers, and the one place its errors are rendered."""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from completions.api import router as completions_router
from novakit.errors import ApiError, error_response, invalid_request, unauthorized

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="NovaKit inference API",
    version="1.0.0",
    description="OpenAI-compatible chat completions and models.",
    urls_namespace="inference",
    docs_url="/docs",
)
api.add_router("/", completions_router)


def _param_and_reason(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "payload")]
    # Pydantic names a union's branches in the location; keep the field path only.
    location = [part for part in location if not part.startswith(("str", "list[", "function-"))]
    param = ".".join(location) or None
    reason = str(first.get("msg", "is invalid"))
    if first.get("type") == "json_invalid":
        return None, "The request body is not valid JSON"
    return param, (f"Invalid '{param}': {reason}" if param else reason)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    param, message = _param_and_reason(list(exc.errors))
    return error_response(invalid_request(message, param=param))


@api.exception_handler(AuthenticationError)
def _authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(unauthorized())


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = "invalid_request" if exc.status_code < 500 else "server_error"
    return error_response(ApiError(exc.status_code, code, str(exc.message)))


@api.exception_handler(Exception)
def _unhandled(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled error in inference API")
    return error_response(ApiError(500, "server_error", "Internal error (retry safe)"))
