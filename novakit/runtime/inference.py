"""The inference API's request handler: Django's ASGI handler with a short chain, on the loop.

Same views and error handling as the rest of the site; only
`settings.INFERENCE_MIDDLEWARE` runs instead of `settings.MIDDLEWARE`
(novakit/runtime/middleware.py: hooks that run on the event loop), paths
resolve against the inference API's URLs alone (novakit/inference_urls.py),
and Django's request signals are sent on the event loop instead of through a
thread started for each request.

Measured (one worker, c=16, PostgreSQL + Redis, non-streaming, 2026-11-26):
- its own middleware chain on the event loop (c0ce723): 91 -> 120 req/s,
  CPU 10.51 -> 7.80 ms per request;
- the request signals on the loop (2969918): 105 -> 133 req/s, CPU 8.72 -> 6.63 ms
  (the two thread hops and the thread start were about a tenth of the CPU);
- the inference URLs only (865d6b4): 133 -> 138 req/s, CPU 6.63 -> 6.44 ms;
- task outcomes read, not re-raised (a7dbccb; c=64): 594 -> 630 req/s, p99
  195.7 -> 166.3 ms (a reference cycle per request was left to the collector).

Off switch: `INFERENCE_HANDLER=0` sends the inference paths through Django's
own handler and full middleware chain like every other path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with the inference API's middleware chain and URLs."""

    def load_middleware(self, is_async: bool = False) -> None:
        from django.conf import settings

        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.INFERENCE_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = everything

    def create_request(self, scope: Mapping[str, Any], body_file: Any) -> tuple[Any, Any]:
        request, error_response = super().create_request(scope, body_file)
        if request is not None:
            # The inference API's URLs only (Django's per-request URLconf attribute).
            request.urlconf = "novakit.inference_urls"  # type: ignore[attr-defined]
        return request, error_response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from django.conf import settings

        if not settings.DB_THREADS:
            # Database work runs in the request's own thread (novakit/runtime/db.py):
            # Django's way, whose signals close that thread's connections.
            await super().__call__(scope, receive, send)
            return
        await self._handle_on_the_loop(scope, receive, send)

    async def _handle_on_the_loop(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's `handle`, with `request_started` and `request_finished` sent on the loop.

        Django sends both through `sync_to_async`, in a thread it starts for
        each request: two thread hops and a thread start per completion.
        Their only receivers close and reset the database connections of the
        thread they run in; here the database is used only from
        novakit/runtime/db.py's threads, which look after their own
        connections, so on the event loop they find nothing to do and cost
        nothing. Disconnects are handled as Django does: a client that leaves
        cancels the view.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                await self.send_response(error_response, send)
                error_response.close()
                return
            response = await self._respond_unless_gone(request, receive, send)
            if response is None:
                signals.request_finished.send(sender=self.__class__)
            else:
                response.close()  # sends request_finished
        finally:
            body_file.close()

    async def _respond_unless_gone(self, request: Any, receive: Any, send: Any) -> Any:
        """The response once sent, or None when the client left first (the view is cancelled)."""

        async def respond() -> Any:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client left mid-send
                await self.send_response(response, send)
            return response

        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        responding = asyncio.create_task(respond())
        await asyncio.wait([listening, responding], return_when=asyncio.FIRST_COMPLETED)
        stopped = not responding.done()  # the client left before the response was out
        for task in (listening, responding):
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
        # Outcomes are read, never raised and caught here: a caught exception
        # holds this frame in its traceback, the frame holds the task, the task
        # the exception. That cycle, with the request and response in it, was
        # left for the garbage collector on every request (the listener ends
        # with RequestAborted once the response is out).
        for task in (listening, responding):
            failure = None if task.cancelled() else task.exception()
            if failure is not None and not isinstance(failure, RequestAborted):
                raise failure
        # None only for a view this cancelled; one that finished all the same (the
        # cancel came mid-send) still has its response closed by the caller.
        return None if stopped and responding.cancelled() else responding.result()
