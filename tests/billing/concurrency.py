"""Run a function in many threads at once, each on its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import connection

T = TypeVar("T")


def run_together(calls: list[Callable[[], T]], *, timeout: float = 60) -> list[T | BaseException]:
    """Start every call at the same moment, each in its own thread with its own connection.

    Each thread connects before the start line, so the race is between the
    calls themselves rather than between connection set-ups. Exceptions are
    returned in place of results, in the order of `calls`.
    """
    barrier = threading.Barrier(len(calls), timeout=timeout)

    def run(call: Callable[[], T]) -> T | BaseException:
        try:
            connection.ensure_connection()
            barrier.wait()
            return call()
        except BaseException as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=timeout) for future in futures]
