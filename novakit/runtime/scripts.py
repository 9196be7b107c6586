"""Redis Lua scripts, sent with the calls that wait at the same time in one pipeline.

`evaluate(client, script, keys, args)` is EVALSHA for one call; the calls of
one event loop that are waiting while a pipeline is out go together in the
next one (novakit/runtime/batching.py: one round trip for all of them).
Each call's batch starts after the call was made and Redis runs each script
on its own, in order, so batching changes no result. A Redis that has not
seen a script (new, restarted, flushed) gets it whole (EVAL) for that call.
Used by the rate limiter (accounts/ratelimit/redis_backend.py).

Measured (554feeb; one worker, c=16, PostgreSQL + Redis, 2026-11-26): 105 ->
99 req/s, CPU 8.65 -> 9.11 ms per request, i.e. no gain above that machine's
noise at c=16 with one worker; what it saves is round trips (and Redis
connections) per request when many wait at once: 40 acquisitions at once
share pipelines (tests/ratelimit/test_script_batches.py).

Off switch: `BATCHING=0` (one pipeline per call), as for every batch.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import redis

from novakit.runtime.batching import Batch, Batches, resolve

if TYPE_CHECKING:
    from redis.asyncio import Redis

# One script call: the client, the script, its keys and its arguments.
ScriptCall = tuple["Redis", str, list[str], list[object]]

_sha: dict[str, str] = {}


def sha(script: str) -> str:
    """The name Redis knows `script` by (SHA-1 of its text)."""
    name = _sha.get(script)
    if name is None:
        name = _sha[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324
    return name


async def evaluate(client: Redis, script: str, keys: list[str], args: list[object]) -> object:
    """EVALSHA `script` over `keys` and `args`, in a pipeline with the calls waiting with it."""
    return await script_calls.submit((client, script, keys, args))


async def _run_script_calls(batch: Batch[ScriptCall, object]) -> None:
    by_client: dict[int, tuple[Redis, Batch[ScriptCall, object]]] = {}
    for call in batch:
        (client, *_), _ = call
        by_client.setdefault(id(client), (client, []))[1].append(call)
    for client, calls in by_client.values():
        try:
            async with client.pipeline(transaction=False) as pipe:
                for (_, script, keys, args), _ in calls:
                    pipe.evalsha(sha(script), len(keys), *keys, *args)  # type: ignore[arg-type]
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


script_calls: Batches[ScriptCall, object] = Batches(_run_script_calls, max_size=500)
