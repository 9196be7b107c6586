"""The limiter's rules: the limits a request is held to, GCRA cells, decisions and headers.

Shared by both backends (accounts/ratelimit/local.py, redis_backend.py),
which do the same arithmetic: a per-minute limit of L is a cell whose
"theoretical arrival time" (TAT) moves on by cost x 60 s / L per request and
must stay within 60 s of now; a concurrency slot is a lease renewed every
third of `RATE_LIMIT_CONCURRENCY_LEASE_SECONDS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from novakit.errors import invalid_request
from novakit.runtime import redis as shared_redis

if TYPE_CHECKING:
    from accounts.auth import KeyContext

WINDOW_MS = 60_000
# Cell order, shared by both backends and the Lua scripts.
CELLS = (("key", "requests"), ("key", "tokens"), ("org", "requests"), ("org", "tokens"))
REFUSALS = {
    1: "requests per minute for this API key",
    2: "tokens per minute for this API key",
    3: "requests per minute for this organization",
    4: "tokens per minute for this organization",
    5: "concurrent requests for this API key",
}
# The `limit` label of novakit_rate_limit_refusals_total.
REFUSAL_LABELS = {1: "key_rpm", 2: "key_tpm", 3: "org_rpm", 4: "org_tpm", 5: "key_concurrency"}
# Nobody can say when an in-flight request will end; ask for a retry soon.
CONCURRENCY_RETRY_MS = 1_000
# A renewal may be this late (a busy event loop) before its slot counts as abandoned.
_RENEWAL_SLACK_MS = 1_000


def lease_ms() -> int:
    return settings.RATE_LIMIT_CONCURRENCY_LEASE_SECONDS * 1000


def renewal_interval_ms() -> int:
    """How often a live request's slot is renewed: three times a lease."""
    return lease_ms() // 3


def live_floor_ms() -> int:
    """A slot renewed on time expires at least this far ahead; one nearer was abandoned."""
    return max(0, lease_ms() - renewal_interval_ms() - _RENEWAL_SLACK_MS)


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


def window(index: int, limit: int, used_ms: float) -> Window:
    """A cell whose TAT lies `used_ms` ahead of now: what is left and when it is full again."""
    interval = WINDOW_MS / limit
    scope, unit = CELLS[index]
    remaining = max(0, min(limit, math.floor((WINDOW_MS - used_ms) / interval + 1e-9)))
    return Window(scope=scope, unit=unit, limit=limit, remaining=remaining,
                  reset_ms=max(0, math.ceil(used_ms - 1e-9)))


def decision(limits: Limits, refused: int, retry_ms: float, used_ms: list[float | None]
              ) -> Decision:
    windows = tuple(
        window(index, limit, used)
        for index, (limit, used) in enumerate(zip(limits.per_minute(), used_ms, strict=True))
        if limit > 0 and used is not None
    )
    return Decision(allowed=not refused, windows=windows, retry_after_ms=math.ceil(retry_ms),
                    refused_by=refused)


def unmetered(limits: Limits) -> Decision:
    """The answer when the limiter could not be asked: allowed, nothing known to be used."""
    return decision(limits, 0, 0, [0.0] * 4)



def concurrency_wait(expiries: list[float], now: float) -> float:
    """Until a slot may free: soon while a holder is alive, else when the first lapses.
    (The Lua script below says the same.)"""
    if max(expiries) >= now + live_floor_ms():
        return CONCURRENCY_RETRY_MS
    return max(1.0, min(expiries) - now)



def refusal_message(decision: Decision, limits: Limits) -> str:
    what = REFUSALS[decision.refused_by]
    limit = (*limits.per_minute(), limits.key_concurrency)[decision.refused_by - 1]
    seconds = math.ceil(max(1, decision.retry_after_ms) / 1000)
    return f"Rate limit reached for {what} (limit {limit}). Retry after {seconds}s."


def check_fits(limits: Limits, tokens: int) -> None:
    """A request larger than a whole minute's tokens would be refused forever: say so once."""
    for scope, limit in (("API key", limits.key_tpm), ("organization", limits.org_tpm)):
        if 0 < limit < tokens:
            raise invalid_request(
                f"This request may use up to {tokens} tokens (prompt estimate + max_tokens), "
                f"more than this {scope}'s limit of {limit} tokens per minute: "
                "lower max_tokens or shorten the prompt",
                param="max_tokens",
            )

