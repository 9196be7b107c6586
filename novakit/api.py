"""The inference API (django-ninja): routers, and the one place its errors are rendered."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
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


# How pydantic names a union's branches inside an error location (`content.str`,
# `content.list[dict[str,any]]`, `function-after[...]`): not part of the field path.
_UNION_BRANCHES = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})
NOT_A_JSON_OBJECT = "The request body must be a JSON object"


def _is_union_branch(part: str) -> bool:
    return part in _UNION_BRANCHES or "[" in part or part.startswith("function-")


def _param_and_reason(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "payload")]
    location = [part for part in location if not _is_union_branch(part)]
    param = ".".join(location) or None
    reason = str(first.get("msg", "is invalid"))
    if first.get("type") == "json_invalid":
        return None, "The request body is not valid JSON"
    if param is None:
        # The body as a whole: empty, an array, a string, `null`.
        return None, NOT_A_JSON_OBJECT
    return param, f"Invalid '{param}': {reason}"


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
    message = str(exc.message)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # ninja's "Cannot parse request body", from the JSON decoder's error.
        message = "The request body is not valid JSON"
    return error_response(ApiError(exc.status_code, code, message))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    # Not a server error: retrying the same body cannot succeed.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(ApiError(
        413, "invalid_request", f"The request body is larger than the limit of {limit} bytes"
    ))


@api.exception_handler(Exception)
def _unhandled(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled error in inference API")
    return error_response(ApiError(500, "server_error", "Internal error (retry safe)"))
