"""Database work from async code, on a small fixed set of threads.

Django's `sync_to_async` runs each ASGI request's database work in a thread
of its own, and every such thread opens its own database connection: a
thousand requests in flight would want a thousand PostgreSQL connections
(the benchmark hit "too many clients" at about a hundred) and pay a new
connection (~10 ms) each. The hot path instead sends its database calls to
`DB_THREADS` threads per process, each keeping one connection: a bounded
pool, reused across requests. A kept connection is checked before each
call: one the server hung up on while it sat idle (the database restarted)
is dropped and the call connects afresh, so no request after a restart
fails on a dead connection; one that broke during a call is dropped after
it. With psycopg's pool configured, the connection goes back to that pool
after every call instead.

Measured: the benchmark hit PostgreSQL's "too many clients" at about a
hundred requests in flight under `sync_to_async`; with the pool the
connections per process are `DB_THREADS`. Calling the executor directly
instead of through asgiref's `SyncToAsync` saved ~5% of the gateway's CPU per
completion (bench/profile.py, 2026-11-26); the same change as a commit
(3714692, one worker, c=16) measured 120 -> 119 req/s, i.e. no throughput of
its own. Prepared statements (`execute_prepared`, 06c0c68, c=64): 667 -> 969
req/s, p99 133.2 -> 102.9 ms, CPU 1.33 -> 0.93 ms per request.

Off switch: `DB_THREADS=0` runs the database work through Django's own
thread-sensitive `sync_to_async` (a thread and a connection per request);
`DATABASE_PREPARED_STATEMENTS=0` turns prepared statements off (PgBouncer).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import select
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import psycopg
from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db import connection, connections
from psycopg.types.numeric import Int8Dumper

P = ParamSpec("P")
R = TypeVar("R")

_executors: dict[int, ThreadPoolExecutor] = {}
_THREAD_PREFIX = "novakit-db"


def _executor(size: int) -> ThreadPoolExecutor:
    if size not in _executors:
        _executors[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=_THREAD_PREFIX)
    return _executors[size]


def _hung_up(raw: object) -> bool:
    """Whether the server closed this idle connection (a restart, an admin's terminate).

    Between calls nothing is owed to an idle PostgreSQL client, so a socket
    with anything to read has been hung up on (EOF, or the server's FATAL
    "terminating connection" before it). One non-blocking poll, no round trip.
    """
    if getattr(raw, "closed", False) or getattr(raw, "broken", False):
        return True
    try:
        fileno = raw.fileno()  # type: ignore[attr-defined]
    except Exception:  # closed under us
        return True
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _drop_dead_connection() -> None:
    if connection.connection is None or connection.vendor != "postgresql":
        return
    if connection.in_atomic_block or not _hung_up(connection.connection):
        return
    try:
        connection.close()
    except Exception:  # closing a dead socket may complain; it is gone either way
        connection.connection = None


def _tidy() -> None:
    if connection.connection is None or connection.in_atomic_block:
        return  # a transaction still open belongs to whoever opened it (a test's)
    if settings.DATABASES["default"].get("OPTIONS", {}).get("pool"):
        connection.close()  # back to psycopg's pool
    elif connection.errors_occurred and not connection.is_usable():
        connection.close()


def _run(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    _drop_dead_connection()
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
        # Straight to the executor, with this task's context (the request id in
        # the logs): asgiref's SyncToAsync adds nothing needed here and cost
        # ~5% of the gateway's CPU per completion (bench/profile.py).
        context = contextvars.copy_context()
        work = functools.partial(context.run, functools.partial(_run, func, *args, **kwargs))
        return await asyncio.get_running_loop().run_in_executor(_executor(size), work)

    return call


def on_every_database_thread(func: Callable[[], object], *, timeout: float = 10) -> None:
    """Run `func` once on each of the current pool's threads (`DB_THREADS` of them), and wait.

    Each call is held at a barrier until all have started, so that no idle
    thread takes two; a thread still busy breaks the barrier after `timeout`
    and the others go on all the same (it runs its call once it is free).
    """
    size = settings.DB_THREADS
    if not size:
        return
    _each_thread(_executor(size), size, func, timeout)


def _each_thread(executor: ThreadPoolExecutor, size: int, func: Callable[[], object],
                 timeout: float) -> None:
    if threading.current_thread().name.startswith(_THREAD_PREFIX):
        raise RuntimeError("a database thread cannot wait for the database threads")
    barrier = threading.Barrier(size)

    def once() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=timeout)
        func()

    for future in [executor.submit(once) for _ in range(size)]:
        future.result()


def close_database_threads() -> None:
    """Close the connection each database thread keeps, and stop the threads (at shutdown).

    Django's connections belong to their thread, so each thread closes its
    own (`_each_thread`: one call per thread). A thread still busy (a
    settlement that outlived the graceful wait) breaks the barrier after
    10 s; the others close theirs all the same, and it closes its own when
    it is done. Left open, the connections would outlive the server's
    shutdown until the process exits (and a test run could not drop its
    database). A `db_async` call made after this starts a new pool. The
    thread Django's own `sync_to_async` uses (DB_THREADS=0) closes its
    connections too; that thread stays, as asgiref keeps it.
    """
    if threading.current_thread().name.startswith(_THREAD_PREFIX):
        raise RuntimeError("a database thread cannot close the database threads")
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
    while _executors:
        size, executor = _executors.popitem()
        # Looked up on each thread: `connection` is that thread's own.
        _each_thread(executor, size, lambda: connection.close(), 10)
        executor.shutdown(wait=True)  # calls still running finish first


def execute_prepared(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run one statement on Django's PostgreSQL connection as a prepared statement; its rows.

    Django binds parameters on the client, so PostgreSQL plans every statement
    afresh: for the hot path's CTE statements, planning (0.25-0.41 ms) took as
    long as running. Bound on the server and
    prepared, a statement is planned once per connection (unless settings
    turn prepared statements off: DATABASE_PREPARED_STATEMENTS). It runs in
    the caller's transaction, or commits by itself outside one. Errors come
    out as Django's (IntegrityError, OperationalError), as from a Django cursor.
    Parameters go by name (`%(name)s`): a value the statement uses twice is
    passed once.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        # Every int as int8: psycopg would pick int2, int4 or int8 by value, and a
        # statement is prepared once per combination of parameter types.
        cursor.adapters.register_dumper(int, Int8Dumper)
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if cursor.description else []
