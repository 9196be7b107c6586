"""The shared limiter: one Lua script per call, over Redis, for every process and one clock.

Each call's script runs atomically in Redis (no read-then-write race between
processes) and reads Redis's own clock (TIME), so the processes' clocks do
not matter. Calls waiting together share a pipeline (novakit/runtime/scripts.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accounts.ratelimit.rules import (
    CONCURRENCY_RETRY_MS,
    WINDOW_MS,
    Decision,
    Lease,
    decision,
    lease_ms,
    live_floor_ms,
)
from novakit.runtime.scripts import evaluate

if TYPE_CHECKING:
    from redis.asyncio import Redis

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



class RedisLimiter:
    """The shared limiter: one script per call, all processes, one clock."""

    async def acquire(self, client: Redis, lease: Lease) -> Decision:
        names = lease.cell_names()
        limits = lease.limits
        raw = await evaluate(client, _ACQUIRE, list(names), [
            *limits.per_minute(), limits.key_concurrency, lease.tokens, lease.request_id,
            lease_ms(), WINDOW_MS, CONCURRENCY_RETRY_MS, "1" if lease.dry else "0",
            live_floor_ms(),
        ])
        values = [int(value) for value in raw]  # type: ignore[attr-defined]
        used: list[float | None] = [None if micros < 0 else micros / 1000 for micros in values[2:6]]
        return decision(limits, values[0], values[1], used)

    async def renew(self, client: Redis, lease: Lease) -> None:
        await evaluate(client, _RENEW, [lease.cell_names()[4]], [lease_ms(), lease.request_id])

    async def release(self, client: Redis, lease: Lease, tokens_used: int) -> None:
        names = lease.cell_names()
        await evaluate(client, _RELEASE, [names[1], names[3], names[4]], [
            lease.limits.key_tpm, lease.limits.org_tpm, lease.tokens - tokens_used,
            lease.request_id, WINDOW_MS,
        ])

