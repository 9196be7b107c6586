"""The request path's entry points: take, look, renew and give back what a request holds.

`rate_limit_acquire` takes (or refuses), `rate_limit_release` gives back and
corrects the tokens, `leases_renew` keeps this process's concurrency slots
alive, `rate_limit_peek` looks without taking (quotes). With Redis
configured but failing, requests are let through (fail open, counted in
`fail_open_total`), and releases Redis refused are retried after its next answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from django.conf import settings

from accounts.ratelimit.local import LocalLimiter
from accounts.ratelimit.redis_backend import RedisLimiter
from accounts.ratelimit.rules import (
    REFUSAL_LABELS,
    Decision,
    Lease,
    Limits,
    check_fits,
    refusal_message,
    renewal_interval_ms,
    unmetered,
)
from novakit.errors import ApiError
from novakit.metrics import RATE_LIMIT_REFUSALS
from novakit.runtime import redis as shared_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from accounts.auth import KeyContext

logger = logging.getLogger(__name__)

_MAX_PENDING_RELEASES = 10_000
_FAIL_OPEN_WARNING_SECONDS = 10.0
_last_fail_open_warning = -_FAIL_OPEN_WARNING_SECONDS


class _Counter:
    """A process-wide counter; a stand-in until the metrics endpoint exists."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def inc(self) -> None:
        with self._lock:
            self.value += 1


# Requests let through unchecked because Redis failed.
fail_open_total = _Counter()


_local = LocalLimiter()
_redis = RedisLimiter()
# request id -> (what it took, whether Redis holds it)
_open: dict[str, tuple[Lease, bool]] = {}
# Releases Redis refused, to retry once it answers again.
_unreleased: deque[tuple[Lease, int]] = deque(maxlen=_MAX_PENDING_RELEASES)
# Release tasks in flight: held so the loop does not drop them mid-way.
_pending: set[asyncio.Task[None]] = set()
# The task renewing this process's concurrency slots (one per event loop).
_renewer: asyncio.Task[None] | None = None


def _refusal(decision: Decision, limits: Limits) -> ApiError:
    RATE_LIMIT_REFUSALS.labels(REFUSAL_LABELS[decision.refused_by]).inc()
    return ApiError("rate_limited", refusal_message(decision, limits),
                    headers=decision.headers())



def _fail_open(limits: Limits) -> Decision:
    global _last_fail_open_warning
    fail_open_total.inc()
    now = time.monotonic()
    if now - _last_fail_open_warning >= _FAIL_OPEN_WARNING_SECONDS:
        _last_fail_open_warning = now
        logger.warning("rate limits are not enforced: Redis is unavailable, failing open "
                       "(%d request(s) let through unchecked so far)", fail_open_total.value)
    return unmetered(limits)


async def _acquire(lease: Lease) -> tuple[Decision, bool]:
    """The backend's decision, and whether Redis holds what was taken."""
    if not settings.REDIS_URL:
        return _local.acquire(lease), False
    client = shared_redis.async_client()
    if client is None:  # it failed a moment ago: do not wait on it again yet
        return _fail_open(lease.limits), False
    if _unreleased:
        # Slots Redis could not be told about are freed first, or they would refuse this.
        await _retry_releases(client)
    try:
        decision = await _redis.acquire(client, lease)
    except shared_redis.ERRORS as exc:
        shared_redis.failed("rate_limit", exc)
        return _fail_open(lease.limits), False
    return decision, True


async def rate_limit_acquire(*, key: KeyContext, request_id: str, tokens: int) -> Decision:
    """Take a request, `tokens` and a concurrency slot from every limit that applies, or nothing.

    Returns the decision (its `headers()` go on the response); raises 429 when
    a limit is reached and 400 when `tokens` exceeds a whole minute's worth.
    """
    if not settings.RATE_LIMIT_ENABLED:
        return Decision(allowed=True)
    limits = Limits.for_key(key)
    if limits.unlimited:
        return Decision(allowed=True)
    check_fits(limits, tokens)
    lease = Lease(request_id=request_id, organization_id=key.organization_id,
                  key_id=key.key_id, limits=limits, tokens=tokens)
    # Shielded: a client that leaves mid-call must not leave a slot taken and unrecorded.
    task = asyncio.ensure_future(_acquire(lease))
    try:
        decision, in_redis = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _undo_cancelled(done, lease))
        raise
    if not decision.allowed:
        raise _refusal(decision, limits)
    if limits.needs_release:
        _open[request_id] = (lease, in_redis)
        if limits.key_concurrency:
            _keep_renewing()
    return decision


def _keep_renewing() -> None:
    """Make sure this event loop renews its requests' slots while any is held."""
    global _renewer
    loop = asyncio.get_running_loop()
    if _renewer is None or _renewer.done() or _renewer.get_loop() is not loop:
        _renewer = loop.create_task(_renew_while_held())


async def _renew_while_held() -> None:
    while any(lease.limits.key_concurrency for lease, _ in _open.values()):
        await asyncio.sleep(renewal_interval_ms() / 1000)
        await leases_renew()


async def leases_renew() -> None:
    """Push back the expiry of every concurrency slot this process's live requests hold.

    One pipelined round trip to Redis for all of them. A failure is left for
    the next renewal: a slot lapses only after a whole lease without one.
    """
    held = [(lease, in_redis) for lease, in_redis in list(_open.values())
            if lease.limits.key_concurrency]
    _local.renew([lease for lease, in_redis in held if not in_redis])
    shared = [lease for lease, in_redis in held if in_redis]
    if not shared:
        return
    client = shared_redis.async_client()
    if client is None:
        return
    try:
        await asyncio.gather(*(_redis.renew(client, lease) for lease in shared))
    except shared_redis.ERRORS as exc:
        shared_redis.failed("rate_limit", exc)


def _undo_cancelled(task: asyncio.Task[tuple[Decision, bool]], lease: Lease) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    decision, in_redis = task.result()
    if decision.allowed and lease.limits.needs_release:
        _spawn(_release(lease, in_redis, 0))


async def rate_limit_release(*, request_id: str, tokens_used: int) -> None:
    """Free the request's slot and correct its tokens to `tokens_used`. Idempotent; never raises."""
    entry = _open.pop(request_id, None)
    if entry is None:
        return
    lease, in_redis = entry
    # Shielded like settlement: a cancelled caller must not leave the slot taken.
    await asyncio.shield(_spawn(_release(lease, in_redis, tokens_used)))


def _spawn(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(coroutine)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def _release(lease: Lease, in_redis: bool, tokens_used: int) -> None:
    if not in_redis:
        _local.release(lease, tokens_used)
        return
    client = shared_redis.async_client()
    if client is None:
        _unreleased.append((lease, tokens_used))
        return
    try:
        await _redis.release(client, lease, tokens_used)
    except shared_redis.ERRORS as exc:
        shared_redis.failed("rate_limit", exc)
        _unreleased.append((lease, tokens_used))


async def _retry_releases(client: Redis) -> None:
    while _unreleased:
        lease, tokens_used = _unreleased.popleft()
        try:
            await _redis.release(client, lease, tokens_used)
        except shared_redis.ERRORS as exc:
            shared_redis.failed("rate_limit", exc)
            _unreleased.appendleft((lease, tokens_used))
            return


def local_reset() -> None:
    """Forget the in-process limiter's state and open leases (tests)."""
    global _last_fail_open_warning, _renewer
    if _renewer is not None and not _renewer.get_loop().is_closed():
        _renewer.get_loop().call_soon_threadsafe(_renewer.cancel)
    _renewer = None
    _local.reset()
    _open.clear()
    _unreleased.clear()
    _last_fail_open_warning = -_FAIL_OPEN_WARNING_SECONDS


async def rate_limit_peek(*, key: KeyContext, tokens: int) -> str | None:
    """Why a request of `tokens` would get a 429 now, or None: the live buckets, untouched.

    Raises the 400 of a request larger than a whole minute of tokens. For quotes.
    """
    if not settings.RATE_LIMIT_ENABLED:
        return None
    limits = Limits.for_key(key)
    if limits.unlimited:
        return None
    check_fits(limits, tokens)
    lease = Lease(request_id="quote", organization_id=key.organization_id, key_id=key.key_id,
                  limits=limits, tokens=tokens, dry=True)
    decision, _ = await _acquire(lease)
    return None if decision.allowed else refusal_message(decision, limits)
