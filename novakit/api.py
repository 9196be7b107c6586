"""The inference API (django-ninja): routers, and the one place its errors are rendered."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from completions.api import router as completions_router
from novakit.errors import (
    ApiError,
    code_for_status,
    database_unavailable,
    error_response,
    invalid_request,
    is_database_outage,
    not_found,
    server_error,
    unauthorized,
)

logger = logging.getLogger(__name__)

# Deeper than any real request (OpenAI caps a structured-output schema at a few levels), and
# far below orjson's limit of 255 when the gateway writes the body on to the upstream.
MAX_JSON_DEPTH = 100
# The integers orjson can write: a larger one would fail only when relayed.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class BodyRejected(ValueError):
    """A request body the API refuses before validating its fields: why, and where."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyRejected(f"The request body repeats the key '{_shown(key)}'",
                                   param=_shown(key))
            seen.add(key)
    return body


def _shown(text: str) -> str:
    """`text` as an error message can carry it: a lone surrogate cannot be written as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_json(constant: str) -> Any:
    raise BodyRejected(f"The request body is not valid JSON ({constant} is not a JSON number)")


def _check_relayable(data: Any) -> None:
    """Refuse what JSON allows but the gateway cannot pass on: too deep, numbers out of range,
    strings with lone surrogates. Iterative, so depth itself cannot exhaust the stack; each
    container keeps a link to its parent, not a copy of its path, so memory stays linear."""
    # (container, depth, parent's entry, key in the parent)
    stack: list[tuple[Any, int, Any, str]] = [(data, 1, None, "")]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if depth > MAX_JSON_DEPTH:
            raise BodyRejected(
                f"The request body is nested more than {MAX_JSON_DEPTH} levels deep")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and not _is_unicode(key):
                param = _path(entry) or None
                raise BodyRejected(
                    f"A key in '{param or 'the body'}' is not valid Unicode (a lone surrogate)",
                    param=param)
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, entry, str(key)))
                continue
            problem = None
            if isinstance(value, str):
                if not _is_unicode(value):
                    problem = "is not valid Unicode (a lone surrogate)"
            elif isinstance(value, float):
                if not math.isfinite(value):
                    problem = "is a number too large to represent"
            elif isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
                problem = "is an integer outside the 64-bit range"
            if problem:
                param = ".".join(filter(None, (_path(entry), str(key))))
                raise BodyRejected(f"Invalid '{param}': {problem}", param=param)


def _path(entry: tuple[Any, int, Any, str]) -> str:
    keys: list[str] = []
    while entry[2] is not None:
        keys.append(entry[3])
        entry = entry[2]
    return ".".join(reversed(keys))


class StrictJsonParser(Parser):
    """JSON as RFC 8259 defines it, and only what the gateway can relay upstream.

    Python's decoder is lenient where a relay must not be: it takes `NaN` and
    `Infinity`, repeated keys (the last one silently wins), lone surrogates,
    integers of any size, and nesting down to the interpreter's recursion limit.
    orjson, which writes the upstream request, refuses several of those, so such
    a body used to pass validation, reserve credits and then fail as a 500.
    """

    def parse_body(self, request: HttpRequest) -> Any:
        media_type = request.content_type or ""
        if media_type != "application/json" and not media_type.endswith("+json"):
            # A form post or text/plain is not taken as JSON: browsers send those cross-site.
            raise BodyRejected(
                f"The request body must be JSON, sent with 'Content-Type: application/json' "
                f"(got {_shown(media_type) or 'none'!r})", status=415)
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyRejected("The request body is not valid UTF-8") from None
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_not_json)
        except RecursionError:
            raise BodyRejected(
                f"The request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
        if isinstance(data, dict | list):
            _check_relayable(data)
        return data


api = NinjaAPI(
    title="NovaKit inference API",
    version="1.0.0",
    description="OpenAI-compatible chat completions and models.",
    urls_namespace="inference",
    docs_url="/docs" if settings.NOVAKIT_PROCESS == "all" else None,  # its page is a template
    parser=StrictJsonParser(),
)
api.add_router("/", completions_router)

# Last: any other path under /api/v1/ (a management URL whose id is not a number, a typo) is
# answered in the one error shape instead of Django's HTML "Not Found" page.
unmatched = Router()


@unmatched.api_operation(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                         "/{path:rest}", include_in_schema=False)
def _no_such_path(request: HttpRequest, rest: str) -> HttpResponse:
    return error_response(not_found(f"No API endpoint at '{request.path}'"))


api.add_router("/", unmatched)


# How pydantic names a union's branches inside an error location (`content.str`,
# `content.list[dict[str,any]]`, `function-after[...]`): not part of the field path.
_UNION_BRANCHES = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})
NOT_A_JSON_OBJECT = "The request body must be a JSON object"


def _is_union_branch(part: str) -> bool:
    return part in _UNION_BRANCHES or "[" in part or part.startswith("function-")


def param_and_reason(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
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
    param, message = param_and_reason(list(exc.errors))
    return error_response(invalid_request(message, param=param))


@api.exception_handler(AuthenticationError)
def _authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(unauthorized())


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc.message)
    if exc.status_code == 400 and isinstance(exc.__cause__, BodyRejected):
        # ninja's "Cannot parse request body", from StrictJsonParser's refusal.
        rejected = exc.__cause__
        return error_response(ApiError(code_for_status(rejected.status), rejected.message,
                                       param=rejected.param))
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # ninja's "Cannot parse request body", from the JSON decoder's error.
        message = "The request body is not valid JSON"
    return error_response(ApiError(code_for_status(exc.status_code), message))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    # Django raises it for a declared Content-Length over the limit and, reading with a cap,
    # for a chunked body that declared none. Not a server error: a retry cannot succeed.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(ApiError(
        "request_too_large", f"The request body is larger than the limit of {limit} bytes"
    ))


@api.exception_handler(Exception)
def _unhandled(request: HttpRequest, exc: Exception) -> HttpResponse:
    if is_database_outage(exc):
        # Not a bug: the database is restarting or unreachable, and a retry will work.
        logger.warning("inference API: database unavailable (%s)", exc)
        return error_response(database_unavailable())
    logger.exception("unhandled error in inference API")
    return error_response(server_error())
