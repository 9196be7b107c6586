"""Rate limits: requests and tokens per minute, per API key and per organization,
and concurrent requests per key, all checked and taken in one atomic step.

Each per-minute limit is a GCRA cell (generic cell rate algorithm): a token
bucket kept as a single number, its "theoretical arrival time" (TAT). A limit
of L per minute holds at most L units and refills continuously at L per
minute; a request costing c units (1 request, or its estimated tokens) moves
the TAT on by c x 60 s / L, and fits while the TAT stays within 60 s of now.
So a key allowed 60 requests per minute may send 60 at once, then one a second.

One request, two calls:

1. `rate_limit_acquire`, after authentication and before the credit
   reservation (a refused request reserves nothing): take one request and the
   token estimate (prompt estimate + completion budget) from the key's and the
   organization's cells, and one of the key's concurrency slots; all of them
   or none. Refused: 429 `rate_limited` with `Retry-After`. A request that
   could never fit a tokens-per-minute limit, however long it waited: 400.
2. `rate_limit_release`, from settlement (whatever ended the request: an
   answer, a finished or failed stream, a client that left): free the slot
   and correct the tokens to the actual usage (refund the difference, or
   charge an overrun).

Backends. With `REDIS_URL`: each call is one Lua script over the shared pool
(novakit/redis.py), so every process sees the same counters with no
read-then-write race, and the clock is Redis's own (TIME), so the processes'
clocks do not matter. A slot is a member of a sorted set scored by its expiry, a
short lease (`RATE_LIMIT_CONCURRENCY_LEASE_SECONDS`) that the process holding
it renews every third of a lease while the request runs (`leases_renew`): if
the process dies, its slots lapse within one lease. A refusal for
concurrency says to retry in a second while some holder is alive (any
request may end at any moment), and, when every holder missed its renewal
(their process is gone), when the first of their slots lapses. Without `REDIS_URL`: an in-process
limiter with the same arithmetic (a lock around code that never awaits, so it
is safe for tasks and threads alike) serves a single process.

When Redis is configured but failing, requests are let through (fail open):
a rate limit protects capacity, and refusing everyone, or answering 500,
because the limiter's store is away would be the worse outage.
`fail_open_total` counts those requests and a warning is logged (at most one
every few seconds). Releases that fail are retried after the next successful
call, so a short outage does not leave slots taken until their lease ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from django.conf import settings

from novakit import redis as shared_redis
from novakit.batching import Batch, Batches, resolve
from novakit.errors import ApiError, invalid_request
from novakit.metrics import RATE_LIMIT_REFUSALS

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from accounts.auth import KeyContext

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
# Cell order, shared by both backends and the Lua scripts.
_CELLS = (("key", "requests"), ("key", "tokens"), ("org", "requests"), ("org", "tokens"))
_REFUSALS = {
    1: "requests per minute for this API key",
    2: "tokens per minute for this API key",
    3: "requests per minute for this organization",
    4: "tokens per minute for this organization",
    5: "concurrent requests for this API key",
}
# The `limit` label of novakit_rate_limit_refusals_total.
_REFUSAL_LABELS = {1: "key_rpm", 2: "key_tpm", 3: "org_rpm", 4: "org_tpm", 5: "key_concurrency"}
# Nobody can say when an in-flight request will end; ask for a retry soon.
_CONCURRENCY_RETRY_MS = 1_000
# A renewal may be this late (a busy event loop) before its slot counts as abandoned.
_RENEWAL_SLACK_MS = 1_000


def lease_ms() -> int:
    return settings.RATE_LIMIT_CONCURRENCY_LEASE_SECONDS * 1000


def renewal_interval_ms() -> int:
    """How often a live request's slot is renewed: three times a lease."""
    return lease_ms() // 3


def _live_floor_ms() -> int:
    """A slot renewed on time expires at least this far ahead; one nearer was abandoned."""
    return max(0, lease_ms() - renewal_interval_ms() - _RENEWAL_SLACK_MS)
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


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one request is held to; 0 means no limit."""

    key_rpm: int = 0
    key_tpm: int = 0
    org_rpm: int = 0
    org_tpm: int = 0
    key_concurrency: int = 0

    @classmethod
    def for_key(cls, key: KeyContext) -> Limits:
        # A key's empty field means no limit of its own; an organization's means
        # the platform default (itself 0 = unlimited when so configured).
        org_rpm = key.org_requests_per_minute
        org_tpm = key.org_tokens_per_minute
        return cls(
            key_rpm=key.requests_per_minute or 0,
            key_tpm=key.tokens_per_minute or 0,
            org_rpm=settings.RATE_LIMIT_ORG_RPM_DEFAULT if org_rpm is None else org_rpm,
            org_tpm=settings.RATE_LIMIT_ORG_TPM_DEFAULT if org_tpm is None else org_tpm,
            key_concurrency=key.max_concurrent_requests or 0,
        )

    def per_minute(self) -> tuple[int, int, int, int]:
        return (self.key_rpm, self.key_tpm, self.org_rpm, self.org_tpm)

    @property
    def unlimited(self) -> bool:
        return not any((*self.per_minute(), self.key_concurrency))

    @property
    def needs_release(self) -> bool:
        """Whether anything taken depends on how the request ends."""
        return bool(self.key_tpm or self.org_tpm or self.key_concurrency)


@dataclass(frozen=True, slots=True)
class Window:
    """One per-minute limit as it stands after a decision."""

    scope: str  # "key" or "org"
    unit: str  # "requests" or "tokens"
    limit: int
    remaining: int
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    windows: tuple[Window, ...] = ()
    retry_after_ms: int = 0
    refused_by: int = 0  # a key of _REFUSALS

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers (the tighter of key and organization), and
        `Retry-After` (whole seconds) plus `retry-after-ms` on a refusal."""
        headers: dict[str, str] = {}
        for unit in ("requests", "tokens"):
            windows = [window for window in self.windows if window.unit == unit]
            if not windows:
                continue
            tightest = min(windows, key=lambda window: (window.remaining, -window.reset_ms))
            headers[f"x-ratelimit-limit-{unit}"] = str(tightest.limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(tightest.remaining)
            headers[f"x-ratelimit-reset-{unit}"] = format_duration(tightest.reset_ms)
        if not self.allowed:
            wait_ms = max(1, self.retry_after_ms)
            headers["Retry-After"] = str(math.ceil(wait_ms / 1000))
            headers["retry-after-ms"] = str(wait_ms)
        return headers


@dataclass(frozen=True, slots=True)
class Lease:
    """What a request took, kept until it ends."""

    request_id: str
    organization_id: int
    key_id: int
    limits: Limits
    tokens: int
    # A look only (quotes): decide as `acquire` would, take nothing.
    dry: bool = False

    def cell_names(self) -> tuple[str, str, str, str, str]:
        # One hash tag per organization: a request's keys share a Redis Cluster slot.
        base = shared_redis.key("rl", f"{{o{self.organization_id}}}")
        key = f"{base}:k{self.key_id}"
        return (f"{key}:rpm", f"{key}:tpm", f"{base}:rpm", f"{base}:tpm", f"{key}:slots")


def format_duration(ms: int) -> str:
    """OpenAI's reset format (Go's durations): "0s", "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _window(index: int, limit: int, used_ms: float) -> Window:
    """A cell whose TAT lies `used_ms` ahead of now: what is left and when it is full again."""
    interval = WINDOW_MS / limit
    scope, unit = _CELLS[index]
    remaining = max(0, min(limit, math.floor((WINDOW_MS - used_ms) / interval + 1e-9)))
    return Window(scope=scope, unit=unit, limit=limit, remaining=remaining,
                  reset_ms=max(0, math.ceil(used_ms - 1e-9)))


def _decision(limits: Limits, refused: int, retry_ms: float, used_ms: list[float | None]
              ) -> Decision:
    windows = tuple(
        _window(index, limit, used)
        for index, (limit, used) in enumerate(zip(limits.per_minute(), used_ms, strict=True))
        if limit > 0 and used is not None
    )
    return Decision(allowed=not refused, windows=windows, retry_after_ms=math.ceil(retry_ms),
                    refused_by=refused)


def _unmetered(limits: Limits) -> Decision:
    """The answer when the limiter could not be asked: allowed, nothing known to be used."""
    return _decision(limits, 0, 0, [0.0] * 4)


# --- in-process backend ------------------------------------------------------------------


class LocalLimiter:
    """The single-process limiter: the Lua scripts' arithmetic over dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def reset(self) -> None:
        with self._lock:
            self._tat.clear()
            self._slots.clear()

    @staticmethod
    def _now() -> float:
        return time.monotonic() * 1000

    def acquire(self, lease: Lease) -> Decision:
        names = lease.cell_names()
        limits = lease.limits.per_minute()
        costs = (1, lease.tokens, 1, lease.tokens)
        with self._lock:
            now = self._now()
            self._prune(now)
            refused, retry = 0, 0.0
            current: list[float | None] = [None] * 4
            taken: list[float | None] = [None] * 4
            for index, limit in enumerate(limits):
                if limit <= 0:
                    continue
                tat = max(self._tat.get(names[index], now), now)
                current[index] = tat
                taken[index] = tat + costs[index] * WINDOW_MS / limit
                wait = taken[index] - WINDOW_MS - now  # type: ignore[operator]
                if wait > 0:
                    refused = refused or index + 1
                    retry = max(retry, wait)
            slots = self._slots.setdefault(names[4], {})
            for request_id, expires in list(slots.items()):
                if expires <= now:
                    del slots[request_id]
            if lease.limits.key_concurrency and len(slots) >= lease.limits.key_concurrency:
                refused = refused or 5
                retry = max(retry, _concurrency_wait(list(slots.values()), now))
            levels = current if refused else taken
            if not refused and not lease.dry:
                for index, level in enumerate(levels):
                    if level is not None:
                        self._tat[names[index]] = level
                if lease.limits.key_concurrency:
                    slots[lease.request_id] = now + lease_ms()
            if not slots:
                del self._slots[names[4]]
            used = [None if level is None else level - now for level in levels]
            return _decision(lease.limits, refused, retry, used)

    def release(self, lease: Lease, tokens_used: int) -> None:
        names = lease.cell_names()
        refund = lease.tokens - tokens_used
        with self._lock:
            now = self._now()
            for index in (1, 3):
                limit = lease.limits.per_minute()[index]
                if limit <= 0 or refund == 0:
                    continue
                tat = max(self._tat.get(names[index], now), now)
                level = max(tat - refund * WINDOW_MS / limit, now)
                if level > now:
                    self._tat[names[index]] = level
                else:
                    self._tat.pop(names[index], None)
            slots = self._slots.get(names[4])
            if slots is not None:
                slots.pop(lease.request_id, None)
                if not slots:
                    del self._slots[names[4]]

    def renew(self, leases: list[Lease]) -> None:
        with self._lock:
            expires = self._now() + lease_ms()
            for lease in leases:
                slots = self._slots.get(lease.cell_names()[4])
                if slots is not None and lease.request_id in slots:
                    slots[lease.request_id] = expires

    def _prune(self, now: float) -> None:
        # A full bucket needs no entry; forget them now and then so memory stays bounded.
        if len(self._tat) > 10_000:
            self._tat = {name: tat for name, tat in self._tat.items() if tat > now}


def _concurrency_wait(expiries: list[float], now: float) -> float:
    """Until a slot may free: soon while a holder is alive, else when the first lapses.
    (The Lua script below says the same.)"""
    if max(expiries) >= now + _live_floor_ms():
        return _CONCURRENCY_RETRY_MS
    return max(1.0, min(expiries) - now)


# --- Redis backend -------------------------------------------------------------------------

# KEYS: key rpm, key tpm, org rpm, org tpm (TAT cells), key slots (sorted set).
# ARGV: the four limits, concurrency limit, tokens, request id, lease ms, window ms,
# concurrency retry ms, dry ("1": decide only, write nothing), live floor ms (a slot
# expiring nearer than this missed its renewal: its holder is gone).
# Returns: refused cell (0 = allowed, 5 = concurrency), retry ms, then per cell
# the microseconds its TAT lies ahead of now (-1: no such limit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tokens = tonumber(ARGV[6])
local window = tonumber(ARGV[9])
local take = ARGV[11] ~= '1'
local costs = {1, tokens, 1, tokens}
local current, taken = {}, {}
local refused, retry = 0, 0
for i = 1, 4 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    current[i] = tat
    taken[i] = tat + costs[i] * window / limit
    local wait = taken[i] - window - now
    if wait > 0 then
      if refused == 0 then refused = i end
      if wait > retry then retry = wait end
    end
  end
end
local slots = tonumber(ARGV[5])
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= slots then
    if refused == 0 then refused = 5 end
    local wait = tonumber(ARGV[10])
    local newest = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
    if tonumber(newest[2]) < now + tonumber(ARGV[12]) then
      local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
      wait = math.max(1, tonumber(oldest[2]) - now)
    end
    if retry < wait then retry = wait end
  end
end
local out = {refused, math.ceil(retry)}
for i = 1, 4 do
  local level = current[i]
  if level == nil then
    table.insert(out, -1)
  else
    if refused == 0 then
      level = taken[i]
    end
    if refused == 0 and take then
      redis.call('SET', KEYS[i], string.format('%.4f', level), 'PX', math.ceil(level - now) + 1000)
    end
    table.insert(out, math.floor((level - now) * 1000))
  end
end
if refused == 0 and take and slots > 0 then
  local lease = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[5], now + lease, ARGV[7])
  redis.call('PEXPIRE', KEYS[5], lease)
end
return out
"""

# KEYS: key tpm, org tpm, key slots. ARGV: key tpm limit, org tpm limit,
# tokens to give back (negative: to take), request id, window ms.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local refund = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 and refund ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    local level = tat - refund * window / limit
    if level > now then
      redis.call('SET', KEYS[i], string.format('%.4f', level), 'PX', math.ceil(level - now) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
redis.call('ZREM', KEYS[3], ARGV[4])
return 1
"""

# KEYS: a key's slots. ARGV: lease ms, the request id holding a slot there.
# Pushes the slot's expiry one lease on, if the slot is still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[1])
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
"""

# Redis names scripts by SHA-1.
_SHA = {script: hashlib.sha1(script.encode()).hexdigest()  # noqa: S324
        for script in (_ACQUIRE, _RELEASE, _RENEW)}


# One script call: the client, the script, its keys and its arguments.
ScriptCall = tuple["Redis", str, list[str], list[object]]


async def _evaluate(client: Redis, script: str, keys: list[str], args: list[object]) -> object:
    """EVALSHA, sent with the calls waiting at the same time in one pipeline (one round trip).

    Each call's batch starts after the call was made (novakit/batching.py) and
    Redis runs each script on its own, in order, so batching changes no result.
    """
    return await _script_calls.submit((client, script, keys, args))


async def _run_script_calls(batch: Batch[ScriptCall, object]) -> None:
    by_client: dict[int, tuple[Redis, Batch[ScriptCall, object]]] = {}
    for call in batch:
        (client, *_), _ = call
        by_client.setdefault(id(client), (client, []))[1].append(call)
    for client, calls in by_client.values():
        try:
            async with client.pipeline(transaction=False) as pipe:
                for (_, script, keys, args), _ in calls:
                    pipe.evalsha(_SHA[script], len(keys), *keys, *args)  # type: ignore[arg-type]
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: no call in it has an answer
            for _, future in calls:
                resolve(future, exc)
            continue
        for ((_, script, keys, args), future), result in zip(calls, results, strict=True):
            if isinstance(result, redis.exceptions.NoScriptError):
                # A Redis that has not seen the script (new or restarted): send it whole.
                try:
                    result = await client.eval(script, len(keys), *keys, *args)  # type: ignore[arg-type]
                except Exception as exc:
                    result = exc
            resolve(future, result)


_script_calls: Batches[ScriptCall, object] = Batches(_run_script_calls, max_size=500)


class RedisLimiter:
    """The shared limiter: one script per call, all processes, one clock."""

    async def acquire(self, client: Redis, lease: Lease) -> Decision:
        names = lease.cell_names()
        limits = lease.limits
        raw = await _evaluate(client, _ACQUIRE, list(names), [
            *limits.per_minute(), limits.key_concurrency, lease.tokens, lease.request_id,
            lease_ms(), WINDOW_MS, _CONCURRENCY_RETRY_MS, "1" if lease.dry else "0",
            _live_floor_ms(),
        ])
        values = [int(value) for value in raw]  # type: ignore[attr-defined]
        used: list[float | None] = [None if micros < 0 else micros / 1000 for micros in values[2:6]]
        return _decision(limits, values[0], values[1], used)

    async def renew(self, client: Redis, lease: Lease) -> None:
        await _evaluate(client, _RENEW, [lease.cell_names()[4]], [lease_ms(), lease.request_id])

    async def release(self, client: Redis, lease: Lease, tokens_used: int) -> None:
        names = lease.cell_names()
        await _evaluate(client, _RELEASE, [names[1], names[3], names[4]], [
            lease.limits.key_tpm, lease.limits.org_tpm, lease.tokens - tokens_used,
            lease.request_id, WINDOW_MS,
        ])


# --- the request path's entry points ----------------------------------------------------------

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
    RATE_LIMIT_REFUSALS.labels(_REFUSAL_LABELS[decision.refused_by]).inc()
    return ApiError("rate_limited", refusal_message(decision, limits),
                    headers=decision.headers())


def refusal_message(decision: Decision, limits: Limits) -> str:
    what = _REFUSALS[decision.refused_by]
    limit = (*limits.per_minute(), limits.key_concurrency)[decision.refused_by - 1]
    seconds = math.ceil(max(1, decision.retry_after_ms) / 1000)
    return f"Rate limit reached for {what} (limit {limit}). Retry after {seconds}s."


def _check_fits(limits: Limits, tokens: int) -> None:
    """A request larger than a whole minute's tokens would be refused forever: say so once."""
    for scope, limit in (("API key", limits.key_tpm), ("organization", limits.org_tpm)):
        if 0 < limit < tokens:
            raise invalid_request(
                f"This request may use up to {tokens} tokens (prompt estimate + max_tokens), "
                f"more than this {scope}'s limit of {limit} tokens per minute: "
                "lower max_tokens or shorten the prompt",
                param="max_tokens",
            )


def _fail_open(limits: Limits) -> Decision:
    global _last_fail_open_warning
    fail_open_total.inc()
    now = time.monotonic()
    if now - _last_fail_open_warning >= _FAIL_OPEN_WARNING_SECONDS:
        _last_fail_open_warning = now
        logger.warning("rate limits are not enforced: Redis is unavailable, failing open "
                       "(%d request(s) let through unchecked so far)", fail_open_total.value)
    return _unmetered(limits)


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
    _check_fits(limits, tokens)
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


def _spawn(coroutine: object) -> asyncio.Task[None]:
    task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
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
    _check_fits(limits, tokens)
    lease = Lease(request_id="quote", organization_id=key.organization_id, key_id=key.key_id,
                  limits=limits, tokens=tokens, dry=True)
    decision, _ = await _acquire(lease)
    return None if decision.allowed else refusal_message(decision, limits)
