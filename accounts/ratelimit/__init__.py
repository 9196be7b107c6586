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
(novakit/runtime/redis.py), so every process sees the same counters with no
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

The package, by job: rules.py (the limits, cells, decisions and headers),
local.py (the in-process backend), redis_backend.py (the Lua scripts and
the shared backend), leases.py (the entry points and the leases they keep).
"""

from accounts.ratelimit.leases import (
    fail_open_total,
    leases_renew,
    local_reset,
    rate_limit_acquire,
    rate_limit_peek,
    rate_limit_release,
)
from accounts.ratelimit.local import LocalLimiter
from accounts.ratelimit.redis_backend import RedisLimiter
from accounts.ratelimit.rules import (
    Decision,
    Lease,
    Limits,
    Window,
    format_duration,
    lease_ms,
    refusal_message,
    renewal_interval_ms,
)

__all__ = [
    "Decision",
    "Lease",
    "Limits",
    "LocalLimiter",
    "RedisLimiter",
    "Window",
    "fail_open_total",
    "format_duration",
    "lease_ms",
    "leases_renew",
    "local_reset",
    "rate_limit_acquire",
    "rate_limit_peek",
    "rate_limit_release",
    "refusal_message",
    "renewal_interval_ms",
]
