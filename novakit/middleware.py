"""Middleware that runs on the event loop, and the short chain the inference API uses.

Django's `MiddlewareMixin` runs each `process_request`/`process_response`
hook of a middleware in the request's own thread (`sync_to_async`,
thread-sensitive), so a chain of such middleware costs two thread hops per
middleware per request, and each ASGI request starts that thread (measured:
about an eighth of the gateway's CPU per completion, bench/results/REPORT.md).
Hooks that only compute (no database, no file) can run on the loop instead.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.middleware.security import SecurityMiddleware


class EventLoopSecurityMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware (HTTPS redirect, HSTS, nosniff, referrer and opener
    policies), its hooks called on the event loop: they read settings and headers only."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)
