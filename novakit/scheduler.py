"""An in-process stand-in for Celery beat when no broker is configured (the embedded default).

`make run` on SQLite has no Redis and no worker, yet usage should still be
rolled up and stale reservations released. With IN_PROCESS_BEAT on, the ASGI
process runs the beat schedule itself, calling each task eagerly in a thread.
The jobs are idempotent, so several processes doing this is harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

logger = logging.getLogger(__name__)


@functools.cache
def _tasks_loaded() -> None:
    """Import the apps' tasks once: Celery's Django fixup re-runs django.setup() each time."""
    from novakit.celery import app

    app.loader.import_default_modules()
    # Celery's tracer logs every task that succeeds at INFO; with the webhook retry
    # job due every 5 s that is a line every 5 s in the embedded default's console.
    # No worker runs in this process, so only these runs are quietened; a failure
    # is still logged, by the tracer (ERROR) and by `_run_task`.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


def _run_task(name: str) -> None:
    from novakit.celery import app

    _tasks_loaded()
    try:
        app.tasks[name].apply(throw=True)
    except Exception:
        logger.exception("in-process beat: %s failed", name)
    finally:
        from django.db import close_old_connections

        close_old_connections()


async def run_forever(stop: asyncio.Event, *, tick: float = 5.0) -> None:
    last_run: dict[str, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        schedule: dict[str, dict[str, Any]] = settings.CELERY_BEAT_SCHEDULE
        for entry in schedule.values():
            task, every = str(entry["task"]), float(entry["schedule"])
            if now - last_run.get(task, float("-inf")) >= every:
                last_run[task] = now
                await sync_to_async(_run_task, thread_sensitive=False)(task)
        try:
            await asyncio.wait_for(stop.wait(), timeout=tick)
        except TimeoutError:
            pass
