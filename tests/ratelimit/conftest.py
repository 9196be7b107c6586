"""Fixtures for the rate limit tests: Redis (the run's, or a private one), both limiter
backends, keys with limits, and gateways in separate processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection

from accounts import ratelimit
from accounts.auth import KeyContext
from accounts.services import api_key_create
from novakit.runtime import redis as shared_redis
from tests.conftest import Tenant
from tests.support.gateway_process import GatewayProcess, free_port, gateway_spawn

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DEFAULTS = {"RATE_LIMIT_ORG_RPM_DEFAULT": 3_000, "RATE_LIMIT_ORG_TPM_DEFAULT": 10_000_000}


@dataclass
class RedisServer:
    """A throwaway redis-server of our own, so a test may kill it (never the shared one)."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls) -> RedisServer:
        return cls.start_on(free_port())

    @classmethod
    def start_on(cls, port: int) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "these tests need redis-server on PATH (CI installs it)"
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    process.kill()
                    raise
                time.sleep(0.05)
        client.close()
        return cls(process=process, port=port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The run's Redis (`REDIS_URL`: db 3 for this suite's own runs, CI's otherwise);
    a private server when the run has none, so the Redis tests run everywhere."""
    if django_settings.REDIS_URL:
        yield django_settings.REDIS_URL
        return
    server = RedisServer.start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_limits(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Each test writes under its own Redis key prefix, starts with empty in-process state and
    runs with the shipped defaults, whatever the environment says."""
    prefix = f"novakit-test:{uuid.uuid4().hex[:12]}:"
    settings.REDIS_KEY_PREFIX = prefix
    settings.RATE_LIMIT_ENABLED = True
    settings.RATE_LIMIT_ORG_RPM_DEFAULT = SHIPPED_DEFAULTS["RATE_LIMIT_ORG_RPM_DEFAULT"]
    settings.RATE_LIMIT_ORG_TPM_DEFAULT = SHIPPED_DEFAULTS["RATE_LIMIT_ORG_TPM_DEFAULT"]
    ratelimit.local_reset()
    shared_redis.reset()
    yield prefix
    ratelimit.local_reset()
    shared_redis.reset()


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest, settings, redis_url: str) -> str:  # type: ignore[no-untyped-def]
    """Run the test against the in-process limiter and against Redis: same semantics."""
    settings.REDIS_URL = redis_url if request.param == "redis" else ""
    return str(request.param)


@pytest.fixture
def use_redis(settings, redis_url: str) -> str:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = redis_url
    return redis_url


def key_context(*, key_id: int = 1, organization_id: int = 1, rpm: int | None = None,
                tpm: int | None = None, concurrency: int | None = None,
                org_rpm: int | None = 0, org_tpm: int | None = 0) -> KeyContext:
    """What authentication hands the limiter, without a database (org limits 0 = none)."""
    return KeyContext(
        key_id=key_id, key_prefix=f"sk_test{key_id:04d}", organization_id=organization_id,
        organization_slug=f"org-{organization_id}", organization_active=True,
        scopes=frozenset({"chat"}), allowed_models=frozenset(), requests_per_minute=rpm,
        tokens_per_minute=tpm, max_concurrent_requests=concurrency,
        org_requests_per_minute=org_rpm, org_tokens_per_minute=org_tpm, expires_at=None,
        revoked_at=None,
    )


@pytest.fixture
def limited_key() -> Callable[..., Tenant]:
    """A tenant whose key (a new one) carries the given limits."""

    def make(tenant: Tenant, **limits: int) -> Tenant:
        key, secret = api_key_create(organization=tenant.org, name="limited", **limits)
        return Tenant(org=tenant.org, account=tenant.account, key=key, secret=secret,
                      user=tenant.user)

    return make


def database_url() -> str:
    """The test database as a URL another process can open (PostgreSQL, or SQLite's file)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(db["NAME"])
        assert "memory" not in name, (
            "the SQLite test database must be a file (novakit/databases.py)")
        return f"sqlite:///{name}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}")


@pytest.fixture
def gateway_processes(transactional_db: None, catalog: None, use_redis: str, tmp_path: Path,
                      settings) -> Iterator[Callable[..., list[GatewayProcess]]]:  # type: ignore[no-untyped-def]
    """Start N real gateways (`uvicorn novakit.asgi:application`, or `novakit.runtime.serve` with
    `workers=`) as separate processes on the test database and this test's Redis keys. Tests
    see committed data only (transactional_db)."""
    started: list[GatewayProcess] = []

    def start(count: int, *, workers: int | None = None, serve_args: tuple[str, ...] = (),
              ) -> list[GatewayProcess]:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": use_redis,
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            # Far longer than the test: a revocation that arrives comes through Redis.
            "API_KEY_CACHE_SECONDS": "300",
            "IN_PROCESS_BEAT": "0",
            "RATE_LIMIT_ENABLED": "1",
            **{name: str(value) for name, value in SHIPPED_DEFAULTS.items()},
            "LOG_LEVEL": "WARNING",
        }
        # All spawned first, then waited for: they start side by side.
        batch = [gateway_spawn(env=env, log=tmp_path / f"gateway-{number}.log", workers=workers,
                               serve_args=serve_args)
                 for number in range(count)]
        started.extend(batch)
        for gateway in batch:
            gateway.wait_until_healthy(timeout=60)
        return batch

    yield start
    for gateway in started:
        gateway.stop()
