"""Middleware that runs on the event loop, and the short chain the inference API uses.

Django's `MiddlewareMixin` runs each `process_request`/`process_response`
hook of a middleware in the request's own thread (`sync_to_async`,
thread-sensitive), so a chain of such middleware costs two thread hops per
middleware per request, and each ASGI request starts that thread (measured:
about an eighth of the gateway's CPU per completion, bench/results/REPORT.md).
Hooks that only compute (no database, no file) can run on the loop instead.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware

from novakit.errors import ApiError, error_response, not_found


class _HooksOnTheLoop:
    """`process_request` and `process_response` called on the event loop, for middleware
    whose hooks only read settings, headers and the URL configuration."""

    async def __acall__(self: Any, request: HttpRequest) -> HttpResponseBase:
        # Mixed in before a MiddlewareMixin subclass, which provides the rest.
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)


class EventLoopSecurityMiddleware(_HooksOnTheLoop, SecurityMiddleware):
    """Django's SecurityMiddleware: HTTPS redirect, HSTS, nosniff, referrer and opener policies."""


class EventLoopCommonMiddleware(_HooksOnTheLoop, CommonMiddleware):
    """Django's CommonMiddleware: disallowed user agents, slash redirects, Content-Length."""


class ApiErrorShapeMiddleware:
    """A wrong method or an unknown path on the inference chain: the API's error shape.

    django-ninja answers a wrong method with a plain-text "Method not allowed",
    and with DEBUG on Django answers an unknown path with its technical HTML
    page (the full site's chain has error_pages.NotFoundPageMiddleware for
    that); every other error of the API is JSON in one shape, which clients parse.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        if response.status_code not in (404, 405) or response.get("Content-Type", "").startswith(
                "application/json"):
            return response
        if response.status_code == 404:
            return error_response(not_found())
        allowed = response.get("Allow", "")
        return error_response(ApiError(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        ))
