"""The process's Redis clients, and what happens when Redis is away.

One asyncio client per event loop (a redis.asyncio connection belongs to the
loop that opened it: a uvicorn worker has one loop, tests run several), each
with its own bounded connection pool; one thread-safe synchronous client per
process for sync code (services, management commands). Both come from
`settings.REDIS_URL`; with no URL there is no client and callers use their
in-process fallbacks.

Redis is an accelerator NovaKit can live without for a while: rate limits fail
open and the API key cache falls back to its TTL. So a call must fail fast:
short socket timeouts, at most one immediate retry (a pooled connection that
died with a Redis restart), and after a failure the client is not offered for
`REDIS_RETRY_SECONDS`, so a Redis that is down costs requests nothing instead
of a timeout each. `failed()` records a failure: a counter per operation and a
warning log line, at most one per `_WARNING_INTERVAL_SECONDS` (an outage is one
event, not one per request).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import Counter

import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

# What a caller should catch around a Redis call: redis-py wraps socket errors
# in its own ConnectionError/TimeoutError, but a half-open pool can still leak
# an OSError or an asyncio timeout.
ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)

_WARNING_INTERVAL_SECONDS = 10.0

# Failures per operation ("rate_limit", "key_cache", ...) since the process
# started; a stand-in until the metrics endpoint exists.
errors_total: Counter[str] = Counter()

_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aredis.Redis]] = (
    weakref.WeakKeyDictionary()
)
_sync_clients: dict[str, redis.Redis] = {}
# The client `async_client` returned last, with its loop and URL.
_last_async: tuple[asyncio.AbstractEventLoop, str, aredis.Redis] | None = None
# URL -> monotonic time before which the URL is not tried again.
_down_until: dict[str, float] = {}
_last_warning: float | None = None


def key(*parts: object) -> str:
    """A Redis key under `REDIS_KEY_PREFIX`, so deployments and test runs can share a server."""
    return settings.REDIS_KEY_PREFIX + ":".join(str(part) for part in parts)


def _available(url: str) -> bool:
    return bool(url) and _down_until.get(url, 0.0) <= time.monotonic()


def _options() -> dict[str, object]:
    timeout = settings.REDIS_SOCKET_TIMEOUT
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }


def async_client() -> aredis.Redis | None:
    """This event loop's client, or None: no `REDIS_URL`, or Redis failed a moment ago."""
    global _last_async
    url = settings.REDIS_URL
    if not _available(url):
        return None
    loop = asyncio.get_running_loop()
    last = _last_async
    if last is not None and last[0] is loop and last[1] == url:
        return last[2]  # a request asks several times: no lock, no weak reference made
    with _lock:
        clients = _async_clients.setdefault(loop, {})
        client = clients.get(url)
        if client is None:
            pool = aredis.BlockingConnectionPool.from_url(
                url,
                max_connections=settings.REDIS_MAX_CONNECTIONS,
                # Waiting for a free connection counts as slow, like a slow answer.
                timeout=settings.REDIS_SOCKET_TIMEOUT,
                retry=AsyncRetry(NoBackoff(), 1),
                **_options(),
            )
            client = clients[url] = aredis.Redis(connection_pool=pool)
        _last_async = (loop, url, client)
    return client


def sync_client() -> redis.Redis | None:
    """The process's synchronous client (thread-safe pool), or None like `async_client`."""
    url = settings.REDIS_URL
    if not _available(url):
        return None
    with _lock:
        client = _sync_clients.get(url)
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=settings.REDIS_MAX_CONNECTIONS,
                timeout=settings.REDIS_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
                **_options(),
            )
            client = _sync_clients[url] = redis.Redis(connection_pool=pool)
    return client


def failed(operation: str, exc: BaseException) -> None:
    """Record a failed call: count it, pause Redis use briefly, warn (not on every request)."""
    global _last_warning
    now = time.monotonic()
    errors_total[operation] += 1
    url = settings.REDIS_URL
    if url:
        _down_until[url] = now + settings.REDIS_RETRY_SECONDS
    if _last_warning is None or now - _last_warning >= _WARNING_INTERVAL_SECONDS:
        _last_warning = now
        logger.warning(
            "redis unavailable for %s (%s: %s); continuing without it for %.1fs "
            "(%d failure(s) so far)",
            operation, type(exc).__name__, exc, settings.REDIS_RETRY_SECONDS,
            errors_total[operation],
        )


def reset() -> None:
    """Forget failures and warnings (tests). Clients stay: they are bound to their URL."""
    global _last_warning
    _down_until.clear()
    _last_warning = None


async def aclose() -> None:
    """Close this event loop's clients (process shutdown)."""
    global _last_async
    loop = asyncio.get_running_loop()
    with _lock:
        clients = _async_clients.pop(loop, {})
        if _last_async is not None and _last_async[0] is loop:
            _last_async = None
    for client in clients.values():
        await client.aclose()
