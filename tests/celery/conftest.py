"""Real Celery workers in subprocesses, on the run's broker (Redis in CI, a folder otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection

from novakit.celery import app

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    config = connection.settings_dict
    if config["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{config['NAME']}"
    user = config.get("USER") or "postgres"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    host = config.get("HOST") or "127.0.0.1"
    port = config.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{config['NAME']}"


@pytest.fixture
def celery_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Point this process's Celery app at a real broker and return the workers' environment."""
    env = {**os.environ, "DATABASE_URL": _database_url(), "PYTHONPATH": str(ROOT),
           "DJANGO_SETTINGS_MODULE": "tests.support.worker_settings"}
    saved = {key: app.conf.get(key) for key in
             ("broker_url", "result_backend", "task_always_eager", "broker_transport_options")}
    if settings.REDIS_URL:
        app.conf.update(broker_url=settings.REDIS_URL, result_backend=settings.REDIS_URL,
                        task_always_eager=False)
        env["CELERY_BROKER_URL"] = settings.REDIS_URL
        env["CELERY_RESULT_BACKEND"] = settings.REDIS_URL
    else:
        folder = str(tmp_path / "broker")
        for path in (folder, folder + "-processed", folder + "-results", folder + "-control"):
            os.makedirs(path, exist_ok=True)
        app.conf.update(
            broker_url="filesystem://", result_backend=f"file://{folder}-results",
            task_always_eager=False,
            broker_transport_options={"data_folder_in": folder, "data_folder_out": folder,
                                      "processed_folder": folder + "-processed",
                                      "control_folder": folder + "-control",
                                      "store_processed": False},
        )
        env["TEST_BROKER_FOLDER"] = folder
    _forget_connections()
    yield env
    app.conf.update(saved)
    _forget_connections()


def _forget_connections() -> None:
    """Make the app connect afresh with its current configuration."""
    # kombu keeps process-wide connection and producer pools keyed by broker URL:
    # reset() closes and forgets them, so nothing later acquires from a closed one.
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@pytest.fixture
def start_workers(celery_broker: dict[str, str], transactional_db: None
                  ) -> Iterator[Callable[[int], list[subprocess.Popen[bytes]]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(count: int = 1) -> list[subprocess.Popen[bytes]]:
        for number in range(count):
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "novakit", "worker", "--pool=solo",
                 "--loglevel=WARNING", f"--hostname=test-worker-{number}-{os.getpid()}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=celery_broker,
            )
            started.append(process)
        return started

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
