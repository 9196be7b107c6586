"""The in-process limiter: the Redis scripts' arithmetic over dictionaries, for one process.

Used without `REDIS_URL`, and for what a request took while Redis was away.
A lock around code that never awaits makes it safe for tasks and threads alike.
"""

from __future__ import annotations

import threading
import time

from accounts.ratelimit.rules import (
    WINDOW_MS,
    Decision,
    Lease,
    concurrency_wait,
    decision,
    lease_ms,
)


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
                retry = max(retry, concurrency_wait(list(slots.values()), now))
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
            return decision(lease.limits, refused, retry, used)

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

