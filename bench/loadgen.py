"""The benchmark's load generator: closed-loop asyncio workers on one aiohttp client.

Each run is its own process so that the harness's bookkeeping never competes
with it for the event loop. It prints one JSON object (the run's summary) as
its last line; the `hold` mode also prints `{"event": "held", ...}` once every
stream is open at the same time, so the harness can read memory then.

Modes:
  chat    N workers each send a non-streaming request, wait for the whole
          answer, send the next, until the duration is over.
  stream  the same with `stream: true`: time to first content chunk, the gaps
          between content chunks, the share of expected chunks delivered.
  hold    open N streams at once (ramped), report when all are open together,
          then read them to the end.

Every loop is bounded: by the duration for starting requests, and by a hard
deadline after which whatever is still running is cancelled. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

try:
    import orjson

    loads = orjson.loads
except ImportError:  # the harness runs this with NovaKit's venv, which has orjson
    loads = json.loads

ERROR_SAMPLES = 5


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (0 < q <= 100); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    """Percentiles of seconds, in milliseconds."""
    return {
        "n": len(values),
        "p50": _ms(percentile(values, 50)),
        "p90": _ms(percentile(values, 90)),
        "p99": _ms(percentile(values, 99)),
        "max": _ms(max(values) if values else None),
        "mean": _ms(sum(values) / len(values) if values else None),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    ok_in_window: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks_expected: int = 0
    chunks_received: int = 0
    incomplete_streams: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, detail: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        sample = f"{kind}: {detail[:400]}"
        if len(self.error_samples) < ERROR_SAMPLES and sample not in self.error_samples:
            self.error_samples.append(sample)


class Client:
    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.url = args.url
        self.session = session
        self.headers = {"Content-Type": "application/json"}
        if args.key:
            self.headers["Authorization"] = f"Bearer {args.key}"
        body: dict[str, Any] = {
            "model": args.model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": args.max_tokens,
        }
        self.chat_body = json.dumps(body).encode()
        self.stream_body = json.dumps({**body, "stream": True}).encode()
        self.expected_chunks = args.expected_chunks

    async def chat(self, tally: Tally) -> bool:
        started = time.perf_counter()
        try:
            async with self.session.post(self.url, data=self.chat_body,
                                         headers=self.headers,
                                         allow_redirects=False) as response:
                raw = await response.read()
                if response.status != 200:
                    tally.error(f"http_{response.status}", raw.decode("utf-8", "replace"))
                    return False
                if b'"choices"' not in raw:
                    tally.error("bad_body", raw.decode("utf-8", "replace"))
                    return False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            tally.error(type(exc).__name__, str(exc))
            return False
        tally.latencies.append(time.perf_counter() - started)
        tally.ok += 1
        return True

    async def stream(self, tally: Tally, on_first: Any = None) -> bool:
        started = time.perf_counter()
        last: float | None = None
        received = 0
        tally.chunks_expected += self.expected_chunks
        try:
            async with self.session.post(self.url, data=self.stream_body,
                                         headers=self.headers,
                                         allow_redirects=False) as response:
                if response.status != 200:
                    raw = await response.read()
                    tally.error(f"http_{response.status}", raw.decode("utf-8", "replace"))
                    return False
                done = False
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = loads(data)
                    if "error" in event:
                        tally.error("stream_error_event", data.decode("utf-8", "replace"))
                        return False
                    choices = event.get("choices") or []
                    if not choices or not (choices[0].get("delta") or {}).get("content"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        tally.ttfts.append(now - started)
                        if on_first is not None:
                            on_first()
                    else:
                        tally.gaps.append(now - last)
                    last = now
                    received += 1
                if not done:
                    tally.error("no_done", f"stream ended after {received} chunks without [DONE]")
                    return False
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            tally.error(type(exc).__name__, str(exc))
            return False
        finally:
            tally.chunks_received += received
        if received < self.expected_chunks:
            tally.incomplete_streams += 1
        tally.latencies.append(time.perf_counter() - started)
        tally.ok += 1
        return True


async def closed_loop(client: Client, args: argparse.Namespace, tally: Tally) -> float:
    """N workers, each starting a new request as soon as its last one ended, for the duration."""
    start = time.perf_counter()
    window_end = start + args.duration
    call = client.stream if args.mode == "stream" else client.chat
    last_answer = start

    async def timed() -> bool:
        nonlocal last_answer
        ok = await call(tally)
        last_answer = time.perf_counter()
        return ok

    async def worker() -> None:
        # Bounded: stops starting requests at the end of the window, and by count.
        for _ in range(args.max_requests):
            if time.perf_counter() >= window_end:
                return
            if await timed() and time.perf_counter() <= window_end:
                tally.ok_in_window += 1

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace)
    for task in pending:
        task.cancel()
    # Each busy worker has one request in flight that got no answer in time.
    for _ in pending:
        tally.error("no_answer_by_deadline",
                    f"still waiting {args.grace:g} s after the {args.duration:g} s window")
    return (last_answer if not pending else time.perf_counter()) - start


async def hold(client: Client, args: argparse.Namespace, tally: Tally) -> dict[str, Any]:
    """Open N streams, ramped, and note the moment all of them are open together."""
    open_now = 0
    peak = 0
    all_open = asyncio.Event()
    start = time.perf_counter()

    def opened() -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        if open_now >= args.concurrency:
            all_open.set()

    async def one() -> None:
        nonlocal open_now
        first_seen = False

        def first() -> None:
            nonlocal first_seen
            first_seen = True
            opened()

        try:
            await client.stream(tally, on_first=first)
        finally:
            if first_seen:
                open_now -= 1

    tasks = []
    pause = 1 / args.ramp_per_second if args.ramp_per_second > 0 else 0
    for _ in range(args.concurrency):
        tasks.append(asyncio.create_task(one()))
        if pause:
            await asyncio.sleep(pause)
    held_at = None
    try:
        await asyncio.wait_for(all_open.wait(), timeout=args.duration)
        held_at = time.perf_counter() - start
    except TimeoutError:
        pass
    print(json.dumps({"event": "held", "open": open_now, "all_open": held_at is not None,
                      "after_s": round(time.perf_counter() - start, 3)}), flush=True)
    # The harness reads memory now; the streams keep going until they end.
    _, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace)
    for task in pending:
        task.cancel()
    for _ in pending:
        tally.error("no_answer_by_deadline", "stream still open at the deadline")
    return {"peak_open": peak, "all_open": held_at is not None,
            "all_open_after_s": None if held_at is None else round(held_at, 3)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit("the load generator sends traffic to loopback addresses only")
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=args.duration + args.grace, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    extra: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(args, session)
        if args.mode == "hold":
            extra = await hold(client, args, tally)
            elapsed = None
        else:
            elapsed = await closed_loop(client, args, tally)
    attempted = tally.ok + tally.errors
    result: dict[str, Any] = {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "elapsed_s": None if elapsed is None else round(elapsed, 3),
        "ok": tally.ok,
        "errors": tally.errors,
        "error_rate": round(tally.errors / attempted, 6) if attempted else None,
        "error_kinds": tally.error_kinds,
        "error_samples": tally.error_samples,
        # Answers per second over the whole run, its drain included: a window
        # shorter than a slow target's latency would otherwise count nothing.
        "throughput_rps": round(tally.ok / elapsed, 2) if elapsed else None,
        "ok_in_window": tally.ok_in_window,
        "latency_ms": summary_ms(tally.latencies),
        **extra,
    }
    if args.mode in ("stream", "hold"):
        result.update({
            "ttft_ms": summary_ms(tally.ttfts),
            "gap_ms": summary_ms(tally.gaps),
            "chunks_expected": tally.chunks_expected,
            "chunks_received": tally.chunks_received,
            "chunk_share": round(tally.chunks_received / tally.chunks_expected, 6)
            if tally.chunks_expected else None,
            "incomplete_streams": tally.incomplete_streams,
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--key", default="", help="bearer token, if the target needs one")
    parser.add_argument("--model", default="openai/gpt-4o-mini")
    parser.add_argument("--mode", choices=["chat", "stream", "hold"], default="chat")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds to start requests for (hold: to wait for all to open)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds after the duration before in-flight requests are cancelled")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="per worker, a bound besides the duration")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--expected-chunks", type=int, default=32)
    parser.add_argument("--ramp-per-second", type=float, default=500.0)
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 5000 or not 0 < args.duration <= 600:
        parser.error("concurrency must be 1..5000 and duration 0..600 s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
