"""Liveness and readiness for load balancers and Kubernetes probes."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving; checks nothing else."""
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("readiness: database unavailable", exc_info=True)
        return False
    finally:
        connection.close_if_unusable_or_obsolete()


async def _redis_ok() -> bool:
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:
        logger.warning("readiness: redis unavailable", exc_info=True)
        return False
    finally:
        await client.aclose()


async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready only when the database (and Redis, when configured) answer."""
    checks = {"database": await sync_to_async(_database_ok)()}
    if settings.REDIS_URL:
        checks["redis"] = await _redis_ok()
    ready = all(checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
