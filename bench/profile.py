"""Profile NovaKit's hot path: one gateway worker, one load, CPU and SQL per request.

    .venv/bin/python bench/profile.py                       # c=8, 10 s, non-streaming
    .venv/bin/python bench/profile.py --concurrency 1 --py-spy /tmp/profile.svg

A working tool for the #9 optimisation loop, not part of `make bench`: it sets
up the benchmark's database the same way (bench/run.py), starts ONE uvicorn
worker (so py-spy sees one process), drives it with the harness's load
generator and prints requests/s, gateway CPU ms per request and, from
PostgreSQL's own statistics, transactions and rows touched per request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness


def pg_counters(db_name: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched "
            "FROM pg_stat_database WHERE datname = %s", [db_name]).fetchone()
        conn.execute("SELECT pg_stat_clear_snapshot()")
    names = ("commits", "rollbacks", "inserted", "updated", "fetched")
    return dict(zip(names, row or (0,) * 5, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--mode", default="chat", choices=["chat", "stream"])
    parser.add_argument("--workers", type=int, default=1,
                        help="more than one: novakit.runtime.serve's workers (py-spy cannot "
                             "follow them)")
    parser.add_argument("--server", default="serve", choices=["serve", "gunicorn", "uvicorn"],
                        help="with --workers > 1: the process manager (novakit.runtime.serve, "
                             "gunicorn with uvicorn-worker and --reuse-port, or uvicorn --workers)")
    parser.add_argument("--db-name", default="novakit_profile")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--py-spy", metavar="OUT",
                        help="record a flame graph (.svg) or collapsed stacks (.txt) meanwhile")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the gateway")
    args = parser.parse_args()

    raw_dir = Path(tempfile.mkdtemp(prefix="novakit-profile-"))
    servers: list[harness.Server] = []
    try:
        fake_port = harness.free_port()
        fake = harness.start("fake-upstream", [str(harness.VENV_PYTHON),
                                               str(harness.BENCH / "fake_upstream.py"),
                                               "--port", str(fake_port)], dict(os.environ), raw_dir)
        servers.append(fake)
        fake_url = f"http://{harness.HOST}:{fake_port}/v1"
        harness.wait_until_up(fake, fake_url, timeout=30)
        env, _ = harness.novakit_env(fake_url, args.db_name, args.redis_url)
        env.update(dict(item.split("=", 1) for item in args.env))
        harness.flush_redis(args.redis_url)
        _, secret = harness.recreate_database(args.db_name, env)
        port = harness.free_port()
        if args.workers == 1:  # the worker itself, so py-spy can follow it
            command = [str(harness.ROOT / ".venv" / "bin" / "uvicorn"), "novakit.asgi:application",
                       "--no-access-log", *harness.uvicorn_speedups()]
        elif args.server == "serve":  # the production server, as the benchmark runs it
            command = [str(harness.VENV_PYTHON), "-m", "novakit.runtime.serve",
                       "--workers", str(args.workers)]
        elif args.server == "gunicorn":
            command = [str(harness.ROOT / ".venv" / "bin" / "gunicorn"), "novakit.asgi:application",
                       "--worker-class", "bench.gunicorn_worker.NovaKitLikeWorker", "--reuse-port",
                       "--workers", str(args.workers)]
        else:
            command = [str(harness.ROOT / ".venv" / "bin" / "uvicorn"), "novakit.asgi:application",
                       "--no-access-log", *harness.uvicorn_speedups(),
                       "--workers", str(args.workers)]
        address = (["--bind", f"{harness.HOST}:{port}"] if args.server == "gunicorn" and
                   args.workers > 1 else ["--host", harness.HOST, "--port", str(port)])
        gateway = harness.start("novakit", [*command, *address], env, raw_dir)
        servers.append(gateway)
        url = f"http://{harness.HOST}:{port}/api/v1/chat/completions"
        target = harness.Target(name="novakit", label="NovaKit", url=url, key=secret,
                                server=gateway, notes=[])
        harness.wait_until_up(gateway, f"http://{harness.HOST}:{port}/healthz", timeout=60)
        harness.check_answers(target)
        # Warm up: connections, caches, the tokenizer.
        harness.run_load(target, mode=args.mode, concurrency=args.concurrency, duration=2,
                         expected_chunks=32, raw_dir=raw_dir, tag="warm-up")
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([str(harness.ROOT / ".venv" / "bin" / "py-spy"), "record",  # noqa: S603
                                    "--pid", str(gateway.process.pid), "--output", args.py_spy,
                                    "--duration", str(int(args.duration)), "--rate", "250",
                                    "--gil", "--format", "raw" if args.py_spy.endswith(".txt")
                                    else "flamegraph"], stdout=subprocess.DEVNULL)
        before = pg_counters(args.db_name)
        result = harness.run_load(target, mode=args.mode, concurrency=args.concurrency,
                                  duration=args.duration, expected_chunks=32, raw_dir=raw_dir,
                                  tag="profile")
        after = pg_counters(args.db_name)
        if spy is not None:
            spy.wait(timeout=args.duration + 60)
        time.sleep(2)  # idle again: what a worker keeps after warm-up and load
        memory = harness.memory(gateway)
        idle_rss = [process["rss_mb"] for process in memory["processes"]
                    if "resource_tracker" not in process["cmd"]]
        if len(idle_rss) > 1:  # the first is the supervisor (or gunicorn's arbiter)
            idle_rss = idle_rss[1:]
        ok = result["ok"] or 1
        per_request = {name: round((after[name] - before[name]) / ok, 2) for name in before}
        print(json.dumps({
            "concurrency": args.concurrency, "ok": result["ok"], "errors": result["errors"],
            "req_per_s": result.get("throughput_rps"), "latency_ms": result.get("latency_ms"),
            "ttft_ms": result.get("ttft_ms") if args.mode == "stream" else None,
            "cpu_ms_per_request": result.get("cpu_ms_per_request"),
            "postgres_per_request": per_request,
            "idle_worker_rss_mb": idle_rss,
        }, indent=2))
        errors = harness.server_errors(gateway)
        if errors:
            print("gateway errors:", errors[:3])
    finally:
        for server in reversed(servers):
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
