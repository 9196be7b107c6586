"""Which route, and which of its provider's keys, a request tries next.

The routes are walked in priority order. Within a provider the key is chosen by
smooth weighted round-robin (nginx's): each pick adds every key's weight to its
running score, takes the highest and subtracts the total from it, so weights 3:1
give A A B A, A A B A ... spread out rather than in runs. A key (or a provider's
single key) that answers 429, 5xx, refuses NovaKit's credentials, times out or
cannot be reached is cooled down: for its `Retry-After` (at most
`MAX_COOLDOWN_SECONDS`) when it sent one, else for a backoff that doubles with
each failure in a row, from 5 s to 60 s. A cooled key is skipped, and a route
with every key cooled is skipped; when every route is cooled the one whose
cooldown ends first is still tried, since refusing outright would turn one
provider's bad minute into certain failures. A success clears the key.

Health is kept per process, in memory: consulting Redis before each attempt
would cost a round trip on every request, and each process learns of a bad key
from its own first failure, so N processes send at most N requests into a
cooldown. What a process learns is also published to Redis (on failures and
recoveries only, never on the common path), so the staff dashboard shows every
process's view (`health_overview`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from completions.catalog import Route, RouteKey
from novakit.runtime import redis as novakit_redis

logger = logging.getLogger(__name__)

MAX_COOLDOWN_SECONDS = 300.0
BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 60.0
# The failures that say the key or provider is unwell, not the request.
COOLING_KINDS = frozenset({"http_429", "http_5xx", "http_auth", "timeout", "connect",
                           "key_limit"})
# A published health entry outlives its last event by this much (the dashboard's horizon).
HEALTH_TTL_SECONDS = 3600


@dataclass(slots=True)
class KeyHealth:
    failures: int = 0  # in a row
    cooled_until: float = 0.0  # on the board's clock
    last_failure: str = ""
    last_failure_at: float = 0.0  # wall-clock time, for people


def _health_key() -> str:
    """The Redis hash of published key health (read when used: the prefix is a setting)."""
    return novakit_redis.key("provider-key-health")


def _key_id(route: Route) -> str:
    return route.key.id if route.key is not None else route.provider


class RoutingBoard:
    """One process's key health and weighted round-robin scores."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 publish: bool = False) -> None:
        self.clock = clock
        # Whether failures and recoveries are told to Redis (the process's own board).
        self.publish = publish
        self.health: dict[str, KeyHealth] = {}
        self._scores: dict[str, int] = {}
        self._publishing: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        """Forget every key's health and score, and what was published (a test's fresh
        start: another test's key may have had the same id)."""
        self.health.clear()
        self._scores.clear()
        client = novakit_redis.sync_client() if self.publish else None
        if client is not None:
            try:
                client.delete(_health_key())
            except novakit_redis.ERRORS as exc:
                novakit_redis.failed("provider_key_health", exc)

    def cooled(self, key_id: str, now: float) -> bool:
        health = self.health.get(key_id)
        return health is not None and health.cooled_until > now

    def _pick(self, keys: tuple[RouteKey, ...], now: float, tried: set[str]) -> RouteKey | None:
        """The next of `keys` by weight, among those neither cooled nor tried."""
        best: RouteKey | None = None
        total = 0
        scores = self._scores
        for key in keys:
            if key.id in tried or self.cooled(key.id, now):
                continue
            total += key.weight
            score = scores.get(key.id, 0) + key.weight
            scores[key.id] = score
            if best is None or score > scores[best.id]:
                best = key
        if best is not None:
            scores[best.id] -= total
        return best

    def attempts(self, routes: Iterable[Route], organization_id: int | None = None,
                 ) -> Iterator[Route]:
        """The routes to try, in order, each bound to a key: on each route the organization's
        own keys for its provider first, then the platform's. Lazy, so a failure reported
        between two attempts is already heeded by the next."""
        routes = tuple(routes)
        now = self.clock()
        tried: set[str] = set()
        for route in routes:
            own = self._own_keys(route, organization_id)
            if not (own or route.keys):  # the built-in model: no key to choose
                if route.provider not in tried and not self.cooled(route.provider, now):
                    tried.add(route.provider)
                    yield route
                continue
            for keys in (own, route.keys):
                while (key := self._pick(keys, now, tried)) is not None:
                    tried.add(key.id)
                    yield dataclasses.replace(route, key=key)
                    now = self.clock()
        if not tried and routes:
            yield self._soonest(routes, organization_id)

    @staticmethod
    def _own_keys(route: Route, organization_id: int | None) -> tuple[RouteKey, ...]:
        return route.own_keys.get(organization_id, ()) if organization_id is not None else ()

    def _soonest(self, routes: tuple[Route, ...], organization_id: int | None) -> Route:
        """Every route cooled: the route and key whose cooldown ends first."""
        candidates: list[tuple[Route, RouteKey | None]] = [
            (route, key) for route in routes
            for key in (*self._own_keys(route, organization_id), *route.keys) or (None,)
        ]

        def ends(candidate: tuple[Route, RouteKey | None]) -> float:
            route, key = candidate
            health = self.health.get(key.id if key is not None else route.provider)
            return health.cooled_until if health is not None else 0.0

        route, key = min(candidates, key=ends)
        return route if key is None else dataclasses.replace(route, key=key)

    def succeeded(self, route: Route) -> None:
        key_id = _key_id(route)
        health = self.health.get(key_id)
        if health is not None and health.failures:
            self.health[key_id] = KeyHealth()
            self._publish(key_id, None)

    def failed(self, route: Route, *, kind: str, retry_after: float | None = None) -> None:
        """Cool the attempt's key when the failure says it (not the request) is unwell."""
        if kind not in COOLING_KINDS:
            return
        key_id = _key_id(route)
        health = self.health.setdefault(key_id, KeyHealth())
        health.failures += 1
        if retry_after is not None:
            pause = min(retry_after, MAX_COOLDOWN_SECONDS)
        else:
            pause = min(BACKOFF_FIRST_SECONDS * 2 ** (health.failures - 1), BACKOFF_MAX_SECONDS)
        health.cooled_until = self.clock() + pause
        health.last_failure, health.last_failure_at = kind, time.time()
        logger.warning("provider key %s cooled for %.0f s after %s (%d in a row)",
                       key_id, pause, kind, health.failures)
        self._publish(key_id, health)

    # --- the staff dashboard's view ----------------------------------------------------
    def _entry(self, health: KeyHealth) -> dict[str, Any]:
        """A key's health as the dashboard shows it, in wall-clock times."""
        return {"failures": health.failures, "last_failure": health.last_failure,
                "last_failure_at": health.last_failure_at,
                "cooled_until": health.cooled_until + time.time() - self.clock()}

    def _publish(self, key_id: str, health: KeyHealth | None) -> None:
        """Tell Redis, without waiting for it; nothing to do on the embedded default."""
        client = novakit_redis.async_client() if self.publish else None
        if client is None:
            return
        entry = None if health is None else json.dumps(self._entry(health))

        async def send() -> None:
            name = _health_key()
            try:
                async with client.pipeline(transaction=False) as pipe:
                    if entry is None:
                        pipe.hdel(name, key_id)
                    else:
                        pipe.hset(name, key_id, entry)
                    pipe.expire(name, HEALTH_TTL_SECONDS)
                    await pipe.execute()
            except novakit_redis.ERRORS as exc:
                novakit_redis.failed("provider_key_health", exc)

        task = asyncio.get_running_loop().create_task(send())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def local_overview(self) -> dict[str, dict[str, Any]]:
        return {key_id: self._entry(health)
                for key_id, health in self.health.items() if health.failures}


board = RoutingBoard(publish=True)


def health_overview() -> dict[str, dict[str, Any]]:
    """Every process's recent key failures (Redis), or this process's alone without Redis;
    by key id, with wall-clock times."""
    overview = board.local_overview()
    client = novakit_redis.sync_client()
    if client is None:
        return overview
    try:
        published = client.hgetall(_health_key())
    except novakit_redis.ERRORS as exc:
        novakit_redis.failed("provider_key_health", exc)
        return overview
    for raw_id, raw in published.items():
        key_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        entry = json.loads(raw)
        if entry["last_failure_at"] >= overview.get(key_id, {}).get("last_failure_at", 0):
            overview[key_id] = entry
    return overview


def provider_keys_health() -> list[dict[str, Any]]:
    """For the staff dashboard: each active provider's keys, with weight and state."""
    from completions.catalog import provider_endpoint
    from completions.models import Provider

    overview = health_overview()
    wall_now = time.time()
    rows = []
    providers = Provider.objects.filter(is_active=True).exclude(kind=Provider.Kind.BUILTIN)
    for provider in providers.prefetch_related("keys").order_by("slug"):
        _, keys, _ = provider_endpoint(provider)
        for key in keys:
            entry = overview.get(key.id)
            cooled_until = entry["cooled_until"] if entry else 0.0
            rows.append({
                "provider": provider.slug, "label": key.label, "weight": key.weight,
                "cooling": cooled_until > wall_now,
                "cooled_until": dt.datetime.fromtimestamp(cooled_until, dt.UTC) if entry else None,
                "failures": entry["failures"] if entry else 0,
                "last_failure": entry["last_failure"] if entry else "",
            })
    return rows
