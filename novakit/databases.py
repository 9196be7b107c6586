"""The database connection settings (`DATABASES["default"]`), from the environment.

`DATABASE_URL` names the database (SQLite in the checkout by default); each
engine then gets what it needs to be served well: SQLite its write-ahead log
and a busy timeout, PostgreSQL its optional connection pool and prepared
statements with generic plans.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

from novakit.env import env_bool, env_float, env_int, env_str


def default_database(base_dir: Path) -> dict[str, Any]:
    database: dict[str, Any] = dict(dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{base_dir / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    ))
    if database["ENGINE"] == "django.db.backends.sqlite3":
        _sqlite(database, base_dir)
    elif database["ENGINE"].endswith("postgresql"):
        _postgresql(database)
    return database


def _sqlite(database: dict[str, Any], base_dir: Path) -> None:
    # WAL lets readers run beside the single writer; the busy timeout makes a
    # writer wait for the lock instead of failing at once under concurrency.
    database["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # The test database is a file, not memory, so tests can start real
    # subprocesses (a second gateway, a Celery worker) that share it; one per
    # test run, so two runs on one machine do not trample each other.
    database["TEST"] = {
        "NAME": env_str("SQLITE_TEST_DATABASE",
                        str(base_dir / f".test-db-{os.getpid()}.sqlite3"))
    }


def _postgresql(database: dict[str, Any]) -> None:
    options = database.setdefault("OPTIONS", {})
    # psycopg 3's connection pool, through Django: set a size to use it. Off by
    # default so a fresh checkout needs nothing; production sets it
    # (platform/k8s/config.yaml). Pooled connections need CONN_MAX_AGE 0.
    pool_size = env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0)
    if pool_size:
        database["CONN_MAX_AGE"] = 0
        options["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
            "max_size": pool_size,
            # How long a request waits for a pooled connection. Short: while the
            # database is down every call waits this long before its 503, and a
            # stream's last chunk waits for its settlement to fail.
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 3.0, minimum=0.1),
        }
    # The hot path's billing statements are prepared and planned once per connection
    # (novakit/runtime/db.py `execute_prepared`); Django's own queries are never
    # prepared. Set 0 behind PgBouncer (it refuses the start-up option; before 1.21
    # it cannot keep them).
    if env_bool("DATABASE_PREPARED_STATEMENTS", True):
        options["prepare_threshold"] = 5
        options["options"] = " ".join(filter(None, [options.get("options"),
                                                    "-c plan_cache_mode=force_generic_plan"]))
