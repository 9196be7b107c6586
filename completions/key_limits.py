"""Per-key request limits: a provider key with `requests_per_minute` is sent at most that many
requests in each clock minute.

Counted in Redis, one INCR per attempt on a limited key (keys without a limit
cost nothing), so the limit holds across every serving process; without
Redis (the embedded default, or Redis down a moment) each process counts its
own. A key at its limit rests until the minute ends (completions.routing, as
for a 429), and the next key or route is tried.
"""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from completions.catalog import RouteKey
from novakit.runtime import redis as novakit_redis

_WINDOW_SECONDS = 60
# The wall clock the minutes are counted by (a test stops it).
clock = time.time
# This process's counts when Redis is not there: (key id, minute) -> requests.
_local: dict[tuple[str, int], int] = {}


async def _redis_count(key_id: str, minute: int) -> int | None:
    client = novakit_redis.async_client()
    if client is None:
        return None
    name = novakit_redis.key("provider-key-requests", key_id, minute)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, 2 * _WINDOW_SECONDS)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        novakit_redis.failed("provider key limit", exc)
        return None
    return int(count)


async def key_request_take(key: RouteKey, *, now: float | None = None) -> float | None:
    """Count one request on `key`: None when it is within the key's limit, else the seconds
    until the minute ends (when the key may be used again)."""
    limit = key.requests_per_minute
    if not limit:
        return None
    now = clock() if now is None else now
    minute = int(now // _WINDOW_SECONDS)
    count = await _redis_count(key.id, minute)
    if count is None:
        for old in [entry for entry in _local if entry[1] < minute]:
            del _local[old]
        count = _local[(key.id, minute)] = _local.get((key.id, minute), 0) + 1
    return None if count <= limit else _WINDOW_SECONDS - now % _WINDOW_SECONDS


def reset() -> None:
    """Forget every count, this process's and Redis's (tests)."""
    _local.clear()
    client = novakit_redis.sync_client()
    if client is not None:
        try:
            names = list(client.scan_iter(novakit_redis.key("provider-key-requests", "*")))
            if names:
                client.delete(*names)
        except (RedisError, OSError):
            pass  # no Redis to forget
