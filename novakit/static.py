"""WhiteNoise's static files middleware, made async-capable.

WhiteNoise 6's middleware is sync-only. In Django's async stack a sync-only
middleware makes every request hop into a thread and back (sync_to_async for
it, async_to_sync for the rest of the chain) and each ASGI request start a
thread of its own for that: measured at about a fifth of the gateway's CPU
per completion (bench/results/REPORT.md). Only paths under STATIC_URL need
WhiteNoise; everything else now passes straight through on the event loop.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response, settings=None):  # type: ignore[no-untyped-def]
        if settings is None:
            super().__init__(get_response)
        else:
            super().__init__(get_response, settings=settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = self.find_file(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
