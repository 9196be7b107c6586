"""ASGI entry point, with the lifespan protocol Django lacks.

On shutdown the process waits for settlements still running (so no request
is left half-billed) and closes the pooled upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from typing import Any

from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")

django_application = get_asgi_application()
logger = logging.getLogger(__name__)


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with the inference API's short middleware chain.

    Same views and error handling; only `settings.INFERENCE_MIDDLEWARE` runs
    instead of `settings.MIDDLEWARE` (read once, when the chain is built), and
    paths resolve against the inference API's URLs alone
    (novakit/inference_urls.py).
    """

    def load_middleware(self, is_async: bool = False) -> None:
        from django.conf import settings

        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.INFERENCE_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = everything

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[Any, Any]:
        request, error_response = super().create_request(scope, body_file)
        if request is not None:
            request.urlconf = "novakit.inference_urls"  # the inference API's URLs only
        return request, error_response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from django.conf import settings

        if not settings.DB_THREADS:
            # Database work runs in the request's own thread (novakit/db.py): Django's
            # way, whose signals close that thread's connections.
            await super().__call__(scope, receive, send)
            return
        await self._handle_on_the_loop(scope, receive, send)

    async def _handle_on_the_loop(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's `handle`, with `request_started` and `request_finished` sent on the loop.

        Django sends both through `sync_to_async`, in a thread it starts for
        each request: two thread hops and a thread start per completion, about
        a tenth of the gateway's CPU (bench/results/CHANGES.md). Their only
        receivers close and reset the database connections of the thread they
        run in; here the database is used only from novakit/db.py's threads,
        which look after their own connections, so on the event loop they
        find nothing to do and cost nothing. Disconnects are handled as Django
        does: a client that leaves cancels the view.
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


inference_application = InferenceHandler()


_beat_stop = asyncio.Event()
_beat_task: asyncio.Task[None] | None = None


async def _startup() -> None:
    global _beat_task
    from django.conf import settings

    from completions import tokens

    tokens.load()  # before the first request, not during it
    _freeze_what_start_up_built()

    if settings.IN_PROCESS_BEAT:
        from novakit.scheduler import run_forever

        _beat_stop.clear()
        _beat_task = asyncio.create_task(run_forever(_beat_stop))


def _freeze_what_start_up_built() -> None:
    """Keep the objects start-up made (modules, the inference API, the tokenizer) out of
    garbage collection.

    A full collection walks every tracked object, ~140,000 of them after
    start-up: ~40 ms with the event loop stopped. Under load one came every
    second or so (the requests in flight are promoted to the oldest
    generation), pausing every open request each time: the tail of the
    latency (bench/results/CHANGES.md). Frozen objects are never scanned; what
    requests create is still collected as before.
    """
    import novakit.inference_urls  # noqa: F401  the inference API's modules, loaded now

    gc.collect()
    gc.freeze()


async def _shutdown() -> None:
    from completions.settlement import pending_settlements
    from completions.upstream import upstream_client
    from novakit.db import close_database_threads

    _beat_stop.set()
    if _beat_task is not None:
        await asyncio.wait([_beat_task], timeout=10)

    # Settlements can start while others are awaited (a request cancelled at the graceful
    # timeout settles as it goes): wait until none is left, at most 30 s in all.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while pending_settlements and (left := deadline - loop.time()) > 0:
        logger.info("waiting for %d settlement(s) before exit", len(pending_settlements))
        await asyncio.wait(list(pending_settlements), timeout=left)
    await upstream_client.aclose()
    await loop.run_in_executor(None, close_database_threads)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    from django.conf import settings

    if scope["type"] == "http" and scope["path"].startswith(settings.INFERENCE_PATH_PREFIXES):
        await inference_application(scope, receive, send)
        return
    await django_application(scope, receive, send)
