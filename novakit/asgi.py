"""ASGI entry point, with the lifespan protocol Django lacks.

On shutdown the process waits for settlements still running (so no request
is left half-billed) and closes the pooled upstream client.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")

django_application = get_asgi_application()
logger = logging.getLogger(__name__)


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with the inference API's short middleware chain.

    Same URLs, views and error handling; only `settings.INFERENCE_MIDDLEWARE`
    runs instead of `settings.MIDDLEWARE` (read once, when the chain is built).
    """

    def load_middleware(self, is_async: bool = False) -> None:
        from django.conf import settings

        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.INFERENCE_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = everything


inference_application = InferenceHandler()


_beat_stop = asyncio.Event()
_beat_task: asyncio.Task[None] | None = None


async def _startup() -> None:
    global _beat_task
    from django.conf import settings

    from completions import tokens

    tokens.load()  # before the first request, not during it

    if settings.IN_PROCESS_BEAT:
        from novakit.scheduler import run_forever

        _beat_stop.clear()
        _beat_task = asyncio.create_task(run_forever(_beat_stop))


async def _shutdown() -> None:
    from completions.gateway import pending_settlements
    from completions.upstream import upstream_client

    _beat_stop.set()
    if _beat_task is not None:
        await asyncio.wait([_beat_task], timeout=10)

    if pending_settlements:
        logger.info("waiting for %d settlement(s) before exit", len(pending_settlements))
        await asyncio.wait(list(pending_settlements), timeout=30)
    await upstream_client.aclose()


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
