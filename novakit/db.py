"""Database work from async code, on a small fixed set of threads.

Django's `sync_to_async` runs each ASGI request's database work in a thread
of its own, and every such thread opens its own database connection: a
thousand requests in flight would want a thousand PostgreSQL connections
(the benchmark hit "too many clients" at about a hundred) and pay a new
connection (~10 ms) each. The hot path instead sends its database calls to
`DB_THREADS` threads per process, each keeping one connection: a bounded
pool, reused across requests. A connection that broke (the database
restarted) is dropped after the call that saw it fail, and the next call
connects afresh. With psycopg's pool configured, the connection goes back
to that pool after every call instead.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

P = ParamSpec("P")
R = TypeVar("R")

_executors: dict[int, ThreadPoolExecutor] = {}


def _executor(size: int) -> ThreadPoolExecutor:
    if size not in _executors:
        _executors[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="novakit-db")
    return _executors[size]


def _tidy() -> None:
    if connection.connection is None:
        return
    if settings.DATABASES["default"].get("OPTIONS", {}).get("pool"):
        connection.close()  # back to psycopg's pool
    elif connection.errors_occurred and not connection.is_usable():
        connection.close()


def _run(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return func(*args, **kwargs)
    finally:
        _tidy()


def db_async(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func`, made awaitable on the database threads.

    DB_THREADS=0 falls back to Django's own thread-sensitive `sync_to_async`,
    which is what tests that wrap each test in one transaction need: there,
    only the test's own thread can see its data.
    """

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        size = settings.DB_THREADS
        if not size:
            return await sync_to_async(func)(*args, **kwargs)
        runner = sync_to_async(functools.partial(_run, func), thread_sensitive=False,
                               executor=_executor(size))
        return await runner(*args, **kwargs)

    return call
