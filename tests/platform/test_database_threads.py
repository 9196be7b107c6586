"""The database threads (novakit/runtime/db.py): their connections are closed at shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import connection

from novakit.runtime.db import close_database_threads, db_async

pytestmark = pytest.mark.django_db(transaction=True)
THREADS = 3


def database_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("novakit-db")]


def sessions_on_this_database() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND backend_type = 'client backend'")
        return cursor.fetchone()[0]


def test_given_each_database_thread_holds_a_connection_then_shutdown_closes_them_all(settings):
    settings.DB_THREADS = THREADS
    close_database_threads()  # a pool of this size, started afresh
    together = threading.Barrier(THREADS)

    def query_held_together() -> int:
        together.wait(timeout=10)  # so each call lands on a thread of its own
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0]

    async def occupy_every_thread() -> list[int]:
        return await asyncio.gather(*[db_async(query_held_together)() for _ in range(THREADS)])

    assert asyncio.run(occupy_every_thread()) == [1] * THREADS
    assert len(database_threads()) == THREADS
    before = sessions_on_this_database() if connection.vendor == "postgresql" else None

    close_database_threads()

    assert database_threads() == []
    if before is not None:  # PostgreSQL counts its sessions; SQLite has none to count
        deadline = time.monotonic() + 10  # the server notices a client's goodbye in its time
        while sessions_on_this_database() > before - THREADS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sessions_on_this_database() == before - THREADS
