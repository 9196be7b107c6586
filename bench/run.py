"""NovaKit's benchmark: one command measures the direct path, NovaKit and LiteLLM side by side.

    .venv/bin/python bench/run.py            # the full run (make bench)
    .venv/bin/python bench/run.py --quick    # a smoke run under two minutes (make bench-quick)

What it does, in order:
1. starts the fake upstream (bench/fake_upstream.py) on a loopback port;
2. recreates the PostgreSQL database, empties its Redis database, migrates,
   creates an organization with plenty of credits and an API key;
3. starts NovaKit (novakit.runtime.serve, 2 workers of the inference process type) and
   LiteLLM's proxy (2 workers) from its own virtual environment, and checks
   each answers before measuring it;
4. runs every scenario with the targets interleaved (A B C A B C ...),
   repeated, each run a fresh load generator process (bench/loadgen.py),
   reading the gateways' CPU time and memory from /proc around and during
   each run;
5. writes bench/results/REPORT.md (quick: bench/results/quick/REPORT.md),
   a plot next to it, and the raw numbers under bench/results/raw/.

Every number in the report comes from this run. Loopback addresses only;
every load loop is bounded by a duration, a count and a deadline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = BENCH / ".venv-litellm"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "openai/gpt-4o-mini"
HOST = "127.0.0.1"
WORKERS = 2
# uvicorn's supervisor (LiteLLM's proxy runs under it) kills a worker that does
# not answer its health check in 5 s and starts another. A cold LiteLLM worker
# imports for longer than that on a busy 2-core machine, so it was restarted
# forever. (NovaKit's own server, novakit.runtime.serve, replaces workers that exit and,
# after 30 s, ones whose event loop stopped; start-up is not timed.)
WORKER_HEALTHCHECK_S = 120

# The targets of issue #21 (the one-way redesign); printed next to what was measured.
TARGET_ADDED_P50_MS = 2.0
TARGET_ADDED_P99_MS = 5.0
TARGET_RPS_C64 = 800.0
TARGET_VS_LITELLM = 5.0
TARGET_P99_C64_MS = 150.0
TARGET_CPU_MS = 1.2
TARGET_ADDED_TTFT_MS = 5.0  # one stream at a time
TARGET_ADDED_TTFT_MANY_MS = 10.0  # the run's many streams at once (64)
TARGET_ADDED_GAP_MS = 5.0
TARGET_STREAMS_HELD = 1000
TARGET_IDLE_WORKER_MB = 150.0


@dataclass
class Plan:
    name: str
    concurrencies: list[int]
    duration: float
    reps: int
    stream_concurrency: int
    stream_duration: float
    stream_chunks: int
    stream_interval_ms: float
    hold_streams: int
    hold_chunks: int
    hold_interval_ms: float
    hold_ramp_per_second: float
    # How long the hold run waits for every stream to be open; each stream lives
    # longer than this (hold_chunks x hold_interval_ms) so early ones are still open.
    hold_open_timeout: float
    # After a run's window, how long in-flight requests may still take.
    grace: float
    warmup: float
    # Seconds from the harness's start that LiteLLM gets to import and answer.
    litellm_start_budget: float
    # The quick run measures LiteLLM only when asked: its two workers take
    # 80-120 s to import on this 2-core machine, most of the quick budget.
    litellm_by_default: bool
    out_dir: Path


FULL = Plan(
    name="full", concurrencies=[1, 16, 64, 256], duration=8.0, reps=3,
    stream_concurrency=64, stream_duration=8.0, stream_chunks=32, stream_interval_ms=20.0,
    hold_streams=1000, hold_chunks=240, hold_interval_ms=250.0, hold_ramp_per_second=250.0,
    hold_open_timeout=45.0, grace=60.0, warmup=2.0, litellm_start_budget=300.0,
    litellm_by_default=True, out_dir=BENCH / "results",
)
QUICK = Plan(
    name="quick", concurrencies=[1, 64], duration=1.5, reps=2,
    stream_concurrency=16, stream_duration=1.5, stream_chunks=32, stream_interval_ms=20.0,
    hold_streams=100, hold_chunks=50, hold_interval_ms=200.0, hold_ramp_per_second=400.0,
    hold_open_timeout=8.0, grace=15.0, warmup=0.5, litellm_start_budget=300.0,
    litellm_by_default=False, out_dir=BENCH / "results" / "quick",
)


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Server:
    """A process the harness started, in its own process group so it can be stopped whole."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tree(self) -> list[int]:
        return process_tree(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start(name: str, argv: list[str], env: dict[str, str], raw_dir: Path) -> Server:
    log_path = raw_dir / f"{name}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own argv)
        argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Server(name=name, process=process, log_path=log_path)


def process_tree(root: int) -> list[int]:
    """`root` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of the processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = fields[fields.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)
    return total


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return ""


def memory(server: Server) -> dict[str, Any]:
    """Resident memory of the server's processes; workers are the serving children."""
    pids = server.tree()
    processes = [{"pid": pid, "rss_mb": round(rss_kb(pid) / 1024, 1), "cmd": cmdline(pid)}
                 for pid in pids]
    helpers = ("resource_tracker", "semaphore_tracker", "forkserver")
    workers = [p for p in processes[1:] if not any(h in p["cmd"] for h in helpers)]
    return {
        "total_mb": round(sum(p["rss_mb"] for p in processes), 1),
        "worker_max_mb": max((p["rss_mb"] for p in workers), default=None),
        "workers": len(workers),
        "processes": processes,
    }


class MemorySampler:
    """Polls a server's total and per-process resident memory during a run; keeps the peaks."""

    def __init__(self, server: Server | None, interval: float = 0.25) -> None:
        self.server = server
        self.interval = interval
        self.peak_total_mb = 0.0
        self.peak_worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        if self.server is None:
            return
        snapshot = memory(self.server)
        self.peak_total_mb = max(self.peak_total_mb, snapshot["total_mb"])
        self.peak_worker_mb = max(self.peak_worker_mb, snapshot["worker_max_mb"] or 0.0)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


def http(method: str, url: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError("loopback only")
    request = urllib.request.Request(  # noqa: S310 (loopback http only, checked above)
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with _NO_REDIRECTS.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Refuse(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to report, never a place to go (it could leave loopback)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


def wait_until_up(server: Server, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited (code {server.process.returncode}):\n"
                               f"{server.log_tail()}")
        try:
            with socket.create_connection((HOST, int(url.rsplit(":", 1)[1].split("/")[0])),
                                          timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not listen within {timeout:.0f} s:\n"
                       f"{server.log_tail()}")


# --- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    label: str
    url: str
    key: str
    server: Server | None
    notes: list[str] = field(default_factory=list)
    idle: dict[str, Any] | None = None


def check_answers(target: Target) -> None:
    """One real completion and one real stream before any measuring; raise if either is wrong."""
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    status, raw = http("POST", target.url, body, headers, timeout=60)
    if status != 200 or b'"choices"' not in raw:
        raise RuntimeError(f"{target.label} answered HTTP {status}: {raw[:600]!r}")
    status, raw = http("POST", target.url, {**body, "stream": True}, headers, timeout=60)
    if status != 200 or b"[DONE]" not in raw:
        raise RuntimeError(f"{target.label} streamed HTTP {status}: {raw[:600]!r}")


def calibration_ms() -> float:
    """How long this machine takes for a fixed piece of pure-Python work (best of 5 tries).

    The same code measured an hour apart on this shared VM differed by a third
    in every target, the direct path included; runs are comparable only when
    their calibrations are close.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for number in range(1_000_000):
            total += number % 7
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def cool_down(servers: list[Server], limit: float) -> float:
    """Wait (at most `limit` s) until the gateways are idle, so one run's tail is not the next's.

    Idle: all their processes together used under 15 % of one core over half a second.
    """
    started = time.monotonic()
    pids = [pid for server in servers for pid in server.tree()]
    while time.monotonic() - started < limit:
        before = cpu_ticks(pids)
        time.sleep(0.5)
        if (cpu_ticks(pids) - before) / CLK_TCK < 0.5 * 0.15:
            break
    return round(time.monotonic() - started, 2)


def run_load(target: Target, *, mode: str, concurrency: int, duration: float,
             expected_chunks: int, raw_dir: Path, tag: str,
             hold_ramp: float = 0.0, grace: float = 30.0) -> dict[str, Any]:
    """One load generator run against one target, with the gateway's CPU and memory around it."""
    argv = [str(VENV_PYTHON), str(BENCH / "loadgen.py"), "--url", target.url, "--mode", mode,
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--expected-chunks", str(expected_chunks), "--model", MODEL,
            "--grace", str(grace)]
    if target.key:
        argv += ["--key", target.key]
    if hold_ramp:
        argv += ["--ramp-per-second", str(hold_ramp)]
    pids = target.server.tree() if target.server else []
    ticks_before = cpu_ticks(pids)
    held: dict[str, Any] | None = None
    # stderr to a file: a pipe nobody reads until the end could fill and stall the run.
    stderr_path = raw_dir / "loadgen-stderr.log"
    with MemorySampler(target.server) as sampler, stderr_path.open("ab") as stderr_file:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,  # noqa: S603
                                   stderr=stderr_file)
        lines: list[str] = []
        assert process.stdout is not None
        for raw_line in process.stdout:
            line = raw_line.decode().strip()
            if line.startswith('{"event": "held"'):
                held = json.loads(line)
                # Everything is open now: read memory a few times while it stays so.
                samples = []
                for _ in range(4):
                    if target.server is not None:
                        samples.append(memory(target.server))
                    time.sleep(0.25)
                held["memory"] = max(samples, key=lambda m: m["total_mb"]) if samples else None
            elif line:
                lines.append(line)
        try:
            process.wait(timeout=duration + grace + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    ticks_after = cpu_ticks(pids)
    if process.returncode != 0 or not lines:
        stderr = stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"load generator failed ({process.returncode}): {stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["target"] = target.name
    result["tag"] = tag
    if target.server is not None:
        cpu_ms = (ticks_after - ticks_before) * 1000 / CLK_TCK
        result["gateway_cpu_ms"] = cpu_ms
        result["cpu_ms_per_request"] = round(cpu_ms / result["ok"], 3) if result["ok"] else None
        result["rss_peak_total_mb"] = sampler.peak_total_mb
        result["rss_peak_worker_mb"] = sampler.peak_worker_mb
    if held is not None:
        result["held"] = {**held, "peak_open": result.get("peak_open"),
                          "all_open_after_s": result.get("all_open_after_s")}
    elif mode == "hold":
        result["held"] = {"open": 0, "all_open": False, "peak_open": result.get("peak_open", 0),
                          "all_open_after_s": None, "memory": None}
    with (raw_dir / "runs.jsonl").open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    return result


# --- setting up NovaKit and LiteLLM -----------------------------------------------------------


def novakit_env(fake_url: str, db_name: str, redis_url: str) -> tuple[dict[str, str], list[str]]:
    """NovaKit's environment for the run, and the notes the report gives about it."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("UPSTREAM_", "RATE_LIMIT_", "DATABASE_", "REDIS_"))}
    env.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "novakit-bench:",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_HASH_SECRET": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "OPENROUTER_BASE_URL": fake_url,
        "OPENROUTER_API_KEY": "bench",
        "LOG_LEVEL": "WARNING",
        # Production sits behind a TLS-terminating proxy; here it is plain HTTP
        # on loopback, so the redirect to https is off (the middleware still runs).
        "SECURE_SSL_REDIRECT": "0",
        # 1,000 held streams over 2 workers: one worker may get more than the
        # default 512 pooled upstream connections (accept is not balanced).
        "UPSTREAM_MAX_CONNECTIONS": "2000",
    })
    notes = ["`SECURE_SSL_REDIRECT=0` (plain HTTP on loopback; production terminates TLS in "
             "front of NovaKit).",
             "`UPSTREAM_MAX_CONNECTIONS=2000` (default 512 per process): the 1,000-stream run "
             "can put more than 512 streams on one of the two workers."]
    # The per-organization defaults (3,000 requests/min) would throttle a
    # benchmark at hundreds of requests per second. Raise every rate-limit
    # default the settings define, to values never reached, so the limiter
    # still runs its Redis call on every request but never says no.
    source = (ROOT / "novakit" / "settings.py").read_text()
    raised = []
    for name in sorted(set(re.findall(r'"(RATE_LIMIT_\w*?(?:RPM|TPM|CONCURREN\w*?)_DEFAULT)"',
                                      source))):
        env[name] = "1000000000"
        raised.append(name)
    if raised:
        notes.append("Rate limiting stays on (`RATE_LIMIT_ENABLED` unchanged) but its defaults "
                     f"are raised to 1,000,000,000 so it never throttles the run: "
                     f"{', '.join('`' + n + '`' for n in raised)}.")
    return env, notes


def schema_fingerprint() -> str:
    """What a migrated database depends on: every migration and the shipped catalog."""
    digest = hashlib.sha256()
    files = [*sorted(ROOT.glob("*/migrations/*.py")), ROOT / "platform" / "catalog" / "models.json"]
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def recreate_database(db_name: str, env: dict[str, str]) -> tuple[str, str]:
    """Drop and create the benchmark database, migrated, with the org and its key.

    Returns how it was made and the key's secret.

    Migrating from nothing takes 10-30 s here, so a migrated copy is kept as
    `<db_name>_template` and cloned when no migration (nor the catalog) has
    changed since; `migrate` runs either way.
    """
    import psycopg

    template = f"{db_name}_template"
    fingerprint = schema_fingerprint()
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [template],
        ).fetchone()
        reuse = row is not None and row[0] == fingerprint
        if reuse:
            conn.execute(f'CREATE DATABASE "{db_name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{db_name}"')
    commands = [["migrate", "--no-input"]]
    if not reuse:
        # Snapshot the freshly migrated database (before any org exists) as the template.
        commands.append(["__template__", admin, template, db_name, fingerprint])
    commands += [["create_org", "bench", "--credits", "1000000000"],
                 ["create_api_key", "--org", "bench", "--scopes", "chat,models"]]
    secret = manage_commands(env, commands).strip().splitlines()[-1]
    return ("cloned from the migrated template" if reuse else "migrated from scratch"), secret


def autovacuum_is_off(db_name: str) -> bool:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db_name}") as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return row is not None and row[0] == "off"


def vacuum_analyze(db_name: str) -> None:
    """What autovacuum does in production, for a PostgreSQL that runs without it.

    Without it (this machine's PostgreSQL), a table's statistics never
    change, so a prepared statement keeps the plan it got while its tables
    were empty: the reservation statement scanned all of billing_reservation
    (55,000 rows and as many dead ones by the end of a run) for every group.
    With autovacuum on, ANALYZE runs as tables grow and PostgreSQL plans
    prepared statements again after it.
    """
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db_name}",
                         autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def flush_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


def manage_commands(env: dict[str, str], commands: list[list[str]]) -> str:
    """Run management commands in order in one interpreter (bench/manage_steps.py)."""
    done = subprocess.run(  # noqa: S603
        [str(VENV_PYTHON), str(BENCH / "manage_steps.py"), json.dumps(commands)], cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "novakit.settings"},
        capture_output=True, text=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"management commands {commands} failed:\n{done.stdout}\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


def uvicorn_speedups() -> list[str]:
    done = subprocess.run(  # noqa: S603
        [str(VENV_PYTHON), "-c", "import uvloop, httptools"], capture_output=True, check=False,
    )
    return ["--loop", "uvloop", "--http", "httptools"] if done.returncode == 0 else []


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(  # noqa: S603
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def launch_litellm(fake_url: str, raw_dir: Path) -> tuple[Target | None, str]:
    """Start LiteLLM's proxy in master-key mode; (None, why) when it cannot run here.

    It is started first and checked last: it imports for a long time, and the
    harness's own set-up runs meanwhile.
    """
    binary = LITELLM_VENV / "bin" / "litellm"
    install_log = BENCH / "results" / "raw" / "litellm-install.log"
    if not binary.exists():
        why = "LiteLLM is not installed in bench/.venv-litellm"
        if install_log.exists():
            why += ": the install failed with\n\n```\n" + "\n".join(
                install_log.read_text(errors="replace").splitlines()[-15:]) + "\n```"
        return None, why
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = raw_dir / "litellm-config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: {MODEL}\n"
        f"      api_base: {fake_url}\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )
    port = free_port()
    # A clean environment: no DATABASE_URL (that would switch on virtual-key
    # mode, which needs Prisma engines that cannot be downloaded here).
    env = {"PATH": f"{LITELLM_VENV / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"}
    server = start("litellm", [str(binary), "--config", str(config), "--host", HOST,
                               "--port", str(port), "--num_workers", str(WORKERS),
                               "--timeout_worker_healthcheck", str(WORKER_HEALTHCHECK_S)],
                   env, raw_dir)
    target = Target(name="litellm", label=f"LiteLLM {litellm_version()}",
                    url=f"http://{HOST}:{port}/v1/chat/completions", key=master_key,
                    server=server)
    return target, ""


def await_litellm(target: Target, deadline: float) -> str:
    """Wait until LiteLLM answers a completion and a stream; "" if it does, else why not."""
    assert target.server is not None
    server = target.server
    try:
        wait_until_up(server, target.url, timeout=max(1.0, deadline - time.monotonic()))
        while True:
            try:
                check_answers(target)
                return ""
            except (RuntimeError, OSError) as exc:
                if time.monotonic() > deadline or not server.alive():
                    raise RuntimeError(f"{exc}\n{server.log_tail()}") from exc
                time.sleep(1)
    except RuntimeError as exc:
        server.stop()
        return f"LiteLLM did not answer: {exc}"


_EXCEPTION_LINE = re.compile(r"^([\w.]+(?:Error|Exception|Exit)\b.*)$")


def server_errors(server: Server) -> list[tuple[int, str]]:
    """The exceptions a server logged, counted by their last line (most frequent first)."""
    counts: dict[str, int] = {}
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        found = None
        if line.startswith("{") and '"exc_info"' in line:
            try:
                found = json.loads(line)["exc_info"].strip().splitlines()[-1]
            except (ValueError, KeyError, IndexError):
                found = None
        else:
            match = _EXCEPTION_LINE.match(line.strip())
            found = match.group(1) if match else None
        if found:
            counts[found[:300]] = counts.get(found[:300], 0) + 1
    return sorted(((n, line) for line, n in counts.items()), reverse=True)


# --- aggregation and report --------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one scenario for one target; errors pooled."""
    ok = sum(r["ok"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    out: dict[str, Any] = {
        "reps": len(runs),
        "throughput_rps": median([r["throughput_rps"] for r in runs]),
        "p50_ms": median([r["latency_ms"]["p50"] for r in runs]),
        "p99_ms": median([r["latency_ms"]["p99"] for r in runs]),
        "ok": ok,
        "errors": errors,
        "error_rate": round(errors / (ok + errors), 6) if ok + errors else None,
        "cpu_ms_per_request": median([r.get("cpu_ms_per_request") for r in runs]),
        "rss_peak_total_mb": max((r["rss_peak_total_mb"] for r in runs
                                  if r.get("rss_peak_total_mb") is not None), default=None),
        "rss_peak_worker_mb": max((r["rss_peak_worker_mb"] for r in runs
                                   if r.get("rss_peak_worker_mb") is not None), default=None),
        "error_samples": sorted({s for r in runs for s in r["error_samples"]})[:5],
    }
    if "ttft_ms" in runs[0]:
        expected = sum(r["chunks_expected"] for r in runs)
        received = sum(r["chunks_received"] for r in runs)
        out.update({
            "ttft_p50_ms": median([r["ttft_ms"]["p50"] for r in runs]),
            "ttft_p99_ms": median([r["ttft_ms"]["p99"] for r in runs]),
            "gap_p50_ms": median([r["gap_ms"]["p50"] for r in runs]),
            "gap_p99_ms": median([r["gap_ms"]["p99"] for r in runs]),
            "chunk_share": round(received / expected, 6) if expected else None,
            "incomplete_streams": sum(r["incomplete_streams"] for r in runs),
        })
    return out


def fmt(value: float | None, digits: int = 1, suffix: str = "", *, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:{'+' if sign else ''},.{digits}f}{suffix}"


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")


def build_report(ctx: dict[str, Any]) -> str:
    plan: Plan = ctx["plan"]
    results: dict[str, dict[str, dict[str, Any]]] = ctx["results"]
    targets: list[Target] = ctx["targets"]
    head = ctx["headline"]
    direct = results.get("direct", {})
    nk = results.get(head, {})
    lite = results.get("litellm")
    c1_d, c1_n = direct.get("chat_c1"), nk.get("chat_c1")
    c64_d, c64_n = direct.get("chat_c64"), nk.get("chat_c64")
    c64_l = lite.get("chat_c64") if lite else None
    st_d, st_n = direct.get("stream"), nk.get("stream")
    st1_d, st1_n = direct.get("stream_c1"), nk.get("stream_c1")
    hold_n = nk.get("hold")
    head_label = next(t.label for t in targets if t.name == head)

    added_p50 = diff(c1_n and c1_n["p50_ms"], c1_d and c1_d["p50_ms"])
    added_p99 = diff(c1_n and c1_n["p99_ms"], c1_d and c1_d["p99_ms"])
    ratio_p50 = (c1_n["p50_ms"] / c1_d["p50_ms"]) if c1_n and c1_d and c1_d["p50_ms"] else None
    ratio_rps = (c64_n["throughput_rps"] / c64_d["throughput_rps"]
                 if c64_n and c64_d and c64_d["throughput_rps"] else None)
    vs_lite = (c64_n["throughput_rps"] / c64_l["throughput_rps"]
               if c64_n and c64_l and c64_l["throughput_rps"] else None)
    added_ttft = diff(st_n and st_n["ttft_p50_ms"], st_d and st_d["ttft_p50_ms"])
    added_ttft_1 = diff(st1_n and st1_n["ttft_p50_ms"], st1_d and st1_d["ttft_p50_ms"])
    added_gap = diff(st_n and st_n["gap_p99_ms"], st_d and st_d["gap_p99_ms"])

    # Only the load before the run tells of other work: during and after it, the
    # benchmark's own processes keep the load average near the core count.
    busy_before = float(ctx["load_before"].split()[0])
    lines = [f"# NovaKit benchmark ({plan.name} run)", ""]
    lines += [
        f"**Gateway overhead ({head_label} minus direct to the fake upstream):** "
        f"{fmt(added_p50, 2, sign=True)} ms at p50 and {fmt(added_p99, 2, sign=True)} ms at p99 "
        "for one request at "
        f"a time (c=1; {fmt(ratio_p50, 1)}x the direct p50 of "
        f"{fmt(c1_d and c1_d['p50_ms'], 2)} ms); "
        f"at c=64 NovaKit serves {fmt(c64_n and c64_n['throughput_rps'], 0)} req/s, "
        f"{fmt(ratio_rps, 3)}x the direct path's {fmt(c64_d and c64_d['throughput_rps'], 0)} req/s "
        f"(which is also the load generator's ceiling here).",
        f"**Streaming:** {fmt(added_ttft_1, 2, sign=True)} ms time to first token (p50) "
        f"one stream at a time, {fmt(added_ttft, 2, sign=True)} ms with "
        f"{plan.stream_concurrency} at once; "
        f"{fmt(added_gap, 2, sign=True)} ms p99 gap between chunks, "
        f"{fmt(st_n['chunk_share'] * 100 if st_n and st_n['chunk_share'] is not None else None, 2)}"
        " % of chunks delivered.",
        f"**Against LiteLLM (same run, same upstream, same load tool, {WORKERS} workers each):** "
        + (f"NovaKit serves {fmt(vs_lite, 2)}x LiteLLM's throughput at c=64 "
           f"({fmt(c64_n and c64_n['throughput_rps'], 1)} vs "
           f"{fmt(c64_l['throughput_rps'], 1)} req/s); LiteLLM adds "
           f"{fmt(diff(lite['chat_c1']['p50_ms'], c1_d and c1_d['p50_ms']), 2, sign=True)} ms "
           "at p50, c=1."
           if c64_l and lite and lite.get("chat_c1")
           else "LiteLLM was not measured: " + ctx["litellm_error"].split("\n")[0]),
        f"**CPU per request (c=64), the number least affected by a busy machine:** "
        f"{head_label} {fmt(c64_n and c64_n['cpu_ms_per_request'], 2)} ms"
        + (f", LiteLLM {fmt(c64_l['cpu_ms_per_request'], 2)} ms." if c64_l else "."),
    ]
    lines += [
        "",
        f"Measured {ctx['started']} on {ctx['machine']}; load average "
        f"{ctx['load_before']} before and {ctx['load_after']} after the run; a fixed "
        f"pure-Python loop (calibration: read runs against each other only when these are "
        f"close) took {fmt(ctx['calibration_before'], 1)} ms before and "
        f"{fmt(ctx.get('calibration_after'), 1)} ms after. "
        "The load generator, the fake upstream and the gateways share these cores, so read "
        "the numbers as relative to each other (the targets were interleaved), not absolute."
        + (f" **The machine was busy with other work when this run began** (1-minute load "
           f"average {busy_before:.1f} on {os.cpu_count()} cores): every target got a fraction "
           "of the CPU, so latencies are inflated and throughputs deflated for all of them."
           if busy_before > (os.cpu_count() or 2) / 2 else ""),
        "",
        "## Targets",
        "",
        "| target | goal | measured | result |",
        "| --- | --- | --- | --- |",
    ]

    def row(what: str, goal: str, measured: str, ok: bool | None) -> None:
        lines.append(f"| {what} | {goal} | {measured} | {verdict(ok)} |")

    row("added latency c=1, p50", f"<= {TARGET_ADDED_P50_MS:g} ms", fmt(added_p50, 2, " ms"),
        None if added_p50 is None else added_p50 <= TARGET_ADDED_P50_MS)
    row("added latency c=1, p99", f"<= {TARGET_ADDED_P99_MS:g} ms", fmt(added_p99, 2, " ms"),
        None if added_p99 is None else added_p99 <= TARGET_ADDED_P99_MS)
    rps64 = c64_n and c64_n["throughput_rps"]
    row("throughput c=64", f">= {TARGET_RPS_C64:g} req/s", fmt(rps64, 0, " req/s"),
        None if rps64 is None else rps64 >= TARGET_RPS_C64)
    row("throughput c=64 vs LiteLLM (same run)", f">= {TARGET_VS_LITELLM:g}x",
        fmt(vs_lite, 2, "x") if vs_lite is not None else "LiteLLM not measured",
        None if vs_lite is None else vs_lite >= TARGET_VS_LITELLM)
    p99_64 = c64_n and c64_n["p99_ms"]
    row("p99 latency c=64", f"< {TARGET_P99_C64_MS:g} ms", fmt(p99_64, 1, " ms"),
        None if p99_64 is None else p99_64 < TARGET_P99_C64_MS)
    cpu = c64_n and c64_n["cpu_ms_per_request"]
    row("gateway CPU per request (c=64)", f"<= {TARGET_CPU_MS:g} ms", fmt(cpu, 2, " ms"),
        None if cpu is None else cpu <= TARGET_CPU_MS)
    row("streaming: added TTFT p50, one stream at a time", f"<= {TARGET_ADDED_TTFT_MS:g} ms",
        fmt(added_ttft_1, 2, " ms"),
        None if added_ttft_1 is None else added_ttft_1 <= TARGET_ADDED_TTFT_MS)
    row(f"streaming: added TTFT p50, {plan.stream_concurrency} streams at once",
        f"<= {TARGET_ADDED_TTFT_MANY_MS:g} ms", fmt(added_ttft, 2, " ms"),
        None if added_ttft is None else added_ttft <= TARGET_ADDED_TTFT_MANY_MS)
    gap_text = fmt(added_gap, 2, " ms")
    if added_gap is not None and added_gap < 0 and st_n and st_d:
        # A gateway that serves fewer streams at once than the direct path has
        # its gaps measured under less load; say so next to the number.
        gap_text += (f" (negative: measured under unequal load, {fmt(st_n['throughput_rps'], 1)} "
                     f"streams/s through NovaKit vs {fmt(st_d['throughput_rps'], 1)} direct; "
                     "compare the gap columns below)")
    row("streaming: added gap between chunks p99", f"<= {TARGET_ADDED_GAP_MS:g} ms",
        gap_text, None if added_gap is None else added_gap <= TARGET_ADDED_GAP_MS)
    share = st_n and st_n["chunk_share"]
    row("streaming: chunks delivered", "100 %",
        fmt(share * 100 if share is not None else None, 3, " %"),
        None if share is None else share >= 1.0 and st_n["errors"] == 0)
    if hold_n:
        held = hold_n["held"]
        full_count = plan.hold_streams >= TARGET_STREAMS_HELD
        held_ok = held["all_open"] and hold_n["errors"] == 0 and hold_n["chunk_share"] == 1.0
        row("concurrent streams held open",
            f"{TARGET_STREAMS_HELD:,}" + ("" if full_count else
                                          f" (this quick run tries {plan.hold_streams})"),
            f"{held['peak_open']:,} open at once of {plan.hold_streams:,}, "
            f"{hold_n['errors']} errors, {fmt(hold_n['chunk_share'] * 100, 2)} % chunks",
            (held_ok and full_count) if full_count else None)
    else:
        row("concurrent streams held open", f"{TARGET_STREAMS_HELD:,}", "not measured", None)
    head_target = next(t for t in targets if t.name == head)
    idle_worker = head_target.idle and head_target.idle["worker_max_mb"]
    row("resident memory per idle worker", f"<= {TARGET_IDLE_WORKER_MB:g} MB",
        fmt(idle_worker, 1, " MB"),
        None if idle_worker is None else idle_worker <= TARGET_IDLE_WORKER_MB)
    lines.append("")

    # --- non-streaming table ---
    lines += ["## Non-streaming", "",
              f"Closed loop: N workers each send the next request when the last one is answered, "
              f"for {plan.duration:g} s per run; {plan.reps} runs per cell, interleaved across "
              "targets; the median of the runs is shown (errors are pooled). req/s is answers "
              "divided by the run's time, the drain of requests in flight at the end of the "
              "window included. CPU is the "
              "gateway's own processes (server and workers, `/proc/<pid>/stat` utime+stime) "
              "divided by the requests answered; memory is the peak resident set "
              "(VmRSS) of all its processes during the run.", "",
              "| target | c | req/s | p50 ms | p99 ms | errors | CPU ms/req | RSS peak MB |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for target in targets:
        for c in plan.concurrencies:
            cell = results.get(target.name, {}).get(f"chat_c{c}")
            if not cell:
                continue
            lines.append(
                f"| {target.label} | {c} | {fmt(cell['throughput_rps'], 0)} | "
                f"{fmt(cell['p50_ms'], 2)} | {fmt(cell['p99_ms'], 2)} | "
                f"{cell['errors']} / {cell['ok'] + cell['errors']} | "
                f"{fmt(cell['cpu_ms_per_request'], 2)} | {fmt(cell['rss_peak_total_mb'], 0)} |")
    lines.append("")
    lines += ["Added latency over direct (p50 / p99, ms):", ""]
    lines += ["| target | " + " | ".join(f"c={c}" for c in plan.concurrencies) + " |",
              "| --- |" + " ---: |" * len(plan.concurrencies)]
    for target in targets:
        if target.name == "direct":
            continue
        cells = []
        for c in plan.concurrencies:
            d = direct.get(f"chat_c{c}")
            t = results.get(target.name, {}).get(f"chat_c{c}")
            cells.append(f"{fmt(diff(t and t['p50_ms'], d and d['p50_ms']), 2)} / "
                         f"{fmt(diff(t and t['p99_ms'], d and d['p99_ms']), 2)}")
        lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
    lines.append("")

    # --- streaming table ---
    lines += ["## Streaming", "",
              f"One stream at a time, then {plan.stream_concurrency} concurrent streams; closed "
              f"loop for {plan.stream_duration:g} s per run, {plan.reps} runs; each stream is "
              f"{plan.stream_chunks} chunks {plan.stream_interval_ms:g} ms apart from the fake "
              "upstream, usage in a final chunk. TTFT is the time to the first chunk with "
              "content; gaps are between consecutive content chunks of one stream. With many "
              "streams of the same length in a closed loop, they start in bursts: each new "
              "stream's first token waits for the gateway's work on the others of its burst.", "",
              "| target | streams at once | streams/s | TTFT p50 ms | TTFT p99 ms | gap p50 ms | "
              "gap p99 ms | chunks delivered | errors | CPU ms/stream |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    streams_at_once = {"stream_c1": 1, "stream": plan.stream_concurrency}
    for target in targets:
        for cell_name, at_once in streams_at_once.items():
            cell = results.get(target.name, {}).get(cell_name)
            if not cell:
                continue
            share = cell["chunk_share"]
            lines.append(
                f"| {target.label} | {at_once} | {fmt(cell['throughput_rps'], 1)} | "
                f"{fmt(cell['ttft_p50_ms'], 2)} | "
                f"{fmt(cell['ttft_p99_ms'], 2)} | {fmt(cell['gap_p50_ms'], 2)} | "
                f"{fmt(cell['gap_p99_ms'], 2)} | "
                f"{fmt(share * 100 if share is not None else None, 2)} % "
                f"| {cell['errors']} / {cell['ok'] + cell['errors']} | "
                f"{fmt(cell['cpu_ms_per_request'], 2)} |")
    lines.append("")

    lines += ["## Many open streams", "",
              f"{plan.hold_streams:,} streams opened together (ramped at "
              f"{plan.hold_ramp_per_second:g} per second), each {plan.hold_chunks} chunks "
              f"{plan.hold_interval_ms:g} ms apart, so all are open at once for a while. Memory is "
              "read while all of them are open; per stream = (that minus idle) / streams.", "",
              "| target | open at once | all open after | errors | chunks delivered | "
              "RSS idle MB | RSS all open MB | per open stream KB |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for target in targets:
        cell = results.get(target.name, {}).get("hold")
        if not cell:
            continue
        held = cell["held"]
        mem_open = held.get("memory") and held["memory"]["total_mb"]
        before = cell.get("idle_total_mb")
        per_stream = ((mem_open - before) * 1024 / held["open"]
                      if mem_open is not None and before is not None and held["open"] else None)
        lines.append(
            f"| {target.label} | {held['peak_open']:,} / {plan.hold_streams:,} | "
            f"{fmt(held.get('all_open_after_s'), 1, ' s') if held['all_open'] else 'never'} | "
            f"{cell['errors']} | {fmt(cell['chunk_share'] * 100, 2)} % | {fmt(before, 0)} | "
            f"{fmt(mem_open, 0)} | {fmt(per_stream, 0)} |")
    lines.append("")

    lines += ["## Memory at rest", "",
              "Resident memory after start-up and a warm-up, before any measured load.", "",
              "| target | processes | largest worker MB | all processes MB |",
              "| --- | ---: | ---: | ---: |"]
    for target in targets:
        if target.idle:
            lines.append(f"| {target.label} | {len(target.idle['processes'])} "
                         f"({target.idle['workers']} workers) | "
                         f"{fmt(target.idle['worker_max_mb'], 1)} | "
                         f"{fmt(target.idle['total_mb'], 1)} |")
    lines.append("")

    if ctx.get("plot"):
        lines += ["## Plot", "",
                  f"![latency and throughput against concurrency]({ctx['plot']})", ""]

    lines += ["## How it was measured", ""]
    lines += [f"- **Load tool:** `bench/loadgen.py`, a Python asyncio closed-loop generator on one "
              f"aiohttp client (uvloop), one process per run. Its ceiling on this machine, "
              f"measured against the fake upstream directly: **{ctx['ceiling']}**. "
              "A target close to that number is limited by the tool and the shared cores, "
              "not by itself."]
    lines += ["- **Fake upstream:** `bench/fake_upstream.py`, its own aiohttp process (uvloop); "
              "answers are serialised once, not per request. Knobs used: time to first byte 0 ms, "
              "non-streamed answer 256 bytes with usage; streams as described above."]
    lines += ["- **Targets:** " + "; ".join(f"{t.label}: {'; '.join(t.notes)}" for t in targets)]
    lines += ["- **NovaKit settings for the run:** " + " ".join(ctx["novakit_notes"])]
    if ctx.get("vacuumed"):
        lines += ["- **Database upkeep:** this machine's PostgreSQL runs with autovacuum off, "
                  "so before each NovaKit run the harness runs `VACUUM (ANALYZE)` on its "
                  "database, as autovacuum would in production. Without it, prepared "
                  "statements keep the plans they got while the tables were empty (a full "
                  "scan of the reservations for every group) and the tables fill with dead "
                  "rows: the later runs measure the neglect, not the gateway."]
    lines += ["- **Order:** for every scenario, runs go A B C ... A B C ... (interleaved), so a "
              "burst of noise from other work on the machine hits every target, not one; "
              f"a {plan.warmup:g} s warm-up per target comes before the first scenario."]
    if ctx.get("litellm_error"):
        lines += ["- **LiteLLM:** not measured. " + ctx["litellm_error"]]
    lines += ["- **LiteLLM mode:** the proxy runs offline in master-key mode "
              "(`LITELLM_LOCAL_MODEL_COST_MAP=True`, one master key, no database). Its "
              "virtual-key mode needs a database through Prisma, whose query-engine binaries are "
              "downloaded at first start; this machine cannot download them, so LiteLLM runs "
              "without per-key auth, budgets, rate limits or spend records, while NovaKit does "
              "all of these (key auth, rate limits, credit reservation and settlement in "
              "PostgreSQL, Redis, usage records): LiteLLM does less work per request here."]
    problems = [(t.label, name, cell) for t in targets
                for name, cell in results.get(t.name, {}).items() if cell.get("errors")]
    if problems:
        lines += ["", "## Errors seen", ""]
        for label, name, cell in problems:
            lines.append(f"- {label}, {name}: {cell['errors']} errors; samples:")
            lines += [f"    - `{s.replace('`', chr(39))}`" for s in cell["error_samples"]]
    logged = [(t.label, t.server.log_path.name, server_errors(t.server))
              for t in targets if t.server is not None]
    if any(errors for _, _, errors in logged):
        lines += ["", "## Exceptions in the gateways' logs", ""]
        for label, log_name, errors in logged:
            if errors:
                lines.append(f"- {label} (`bench/results/raw/{plan.name}/{log_name}`):")
                lines += [f"    - {n} x `{line.replace('`', chr(39))}`" for n, line in errors[:5]]
    lines += ["", f"Raw numbers: `bench/results/raw/{plan.name}-runs.jsonl` (every run) and "
              f"`bench/results/raw/{plan.name}-summary.json`. Run time: {ctx['elapsed']}.", ""]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], targets: list[Target], plan: Plan,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    for target in targets:
        xs, rps, p50, p99 = [], [], [], []
        for c in plan.concurrencies:
            cell = results.get(target.name, {}).get(f"chat_c{c}")
            if cell and cell["p50_ms"] is not None:
                xs.append(c)
                rps.append(cell["throughput_rps"])
                p50.append(cell["p50_ms"])
                p99.append(cell["p99_ms"])
        if not xs:
            continue
        (line,) = ax_rps.plot(xs, rps, marker="o", label=target.label)
        ax_lat.plot(xs, p50, marker="o", color=line.get_color(), label=f"{target.label} p50")
        ax_lat.plot(xs, p99, marker="x", linestyle="--", color=line.get_color(),
                    label=f"{target.label} p99")
    for axis in (ax_rps, ax_lat):
        axis.set_xscale("log", base=2)
        axis.set_xticks(plan.concurrencies, [str(c) for c in plan.concurrencies])
        axis.set_xlabel("concurrent clients")
        axis.grid(True, alpha=0.3)
    ax_rps.set_ylabel("requests per second")
    ax_rps.set_title("Throughput (non-streaming)")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency, ms (log)")
    ax_lat.set_title("Latency p50 (solid) and p99 (dashed)")
    ax_rps.legend(fontsize=8)
    ax_lat.legend(fontsize=7, ncol=2)
    fig.suptitle(f"NovaKit benchmark ({plan.name}), medians of {plan.reps} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="NovaKit benchmark")
    parser.add_argument("--quick", action="store_true", help="the small run (under two minutes)")
    parser.add_argument("--db-name", default=os.environ.get("BENCH_DB_NAME", "novakit_bench"))
    parser.add_argument("--redis-url",
                        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--litellm", action=argparse.BooleanOptionalAction, default=None,
                        help="measure LiteLLM too (default: yes for the full run, no for --quick)")
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", args.db_name):
        parser.error("--db-name must be a plain lower-case identifier")
    plan = QUICK if args.quick else FULL
    with_litellm = plan.litellm_by_default if args.litellm is None else args.litellm
    began = time.monotonic()
    raw_dir = BENCH / "results" / "raw" / plan.name
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.mkdir(parents=True)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    # 1,000 streams through a gateway need ~3,000 sockets across the processes.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard > 0 else soft, hard))
    ctx: dict[str, Any] = {
        "plan": plan, "litellm_error": "",
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"{platform.system()} {platform.release()}",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "calibration_before": calibration_ms(),
    }
    servers: list[Server] = []
    try:
        # 1. the fake upstream
        fake_port = free_port()
        fake = start("fake-upstream", [str(VENV_PYTHON), str(BENCH / "fake_upstream.py"),
                                       "--port", str(fake_port), "--chunks",
                                       str(plan.stream_chunks), "--chunk-interval-ms",
                                       str(plan.stream_interval_ms)], dict(os.environ), raw_dir)
        servers.append(fake)
        fake_url = f"http://{HOST}:{fake_port}/v1"
        wait_until_up(fake, fake_url, timeout=30)
        log(f"fake upstream on {fake_url}")
        litellm: Target | None = None
        if not with_litellm:
            ctx["litellm_error"] = (
                "left out of this run" + (
                    " (the quick run leaves it out unless asked with `--litellm`: its two "
                    "workers take 80-120 s to import on this machine)." if args.litellm is None
                    else " on request (`--no-litellm`)."))
        else:
            litellm, ctx["litellm_error"] = launch_litellm(fake_url, raw_dir)
            if litellm is not None and litellm.server is not None:
                servers.append(litellm.server)

        # 2. NovaKit's database, Redis, org and key
        env, novakit_notes = novakit_env(fake_url, args.db_name, args.redis_url)
        flush_redis(args.redis_url)
        how, secret = recreate_database(args.db_name, env)
        log(f"database {args.db_name} {how}; org 'bench' and its key created")
        novakit_notes.insert(0, f"PostgreSQL database `{args.db_name}` (recreated), Redis "
                                f"`{args.redis_url}` (emptied), `DEBUG=0`, `{WORKERS}` "
                                "workers, org `bench` with 1,000,000,000 credits, one key with "
                                "scopes chat,models.")
        ctx["novakit_notes"] = novakit_notes

        # 3. the targets
        speedups = uvicorn_speedups()
        targets: list[Target] = [Target(name="direct", label="direct (fake upstream)",
                                        url=f"{fake_url}/chat/completions", key="", server=None,
                                        notes=["no gateway: the physical limit"])]
        port = free_port()
        server = start("novakit", [
            str(VENV_PYTHON), "-m", "novakit.runtime.serve", "--workers", str(WORKERS),
            "--process", "inference",
            "--host", HOST, "--port", str(port), "--log-level", "warning",
        ], env, raw_dir)
        servers.append(server)
        targets.append(Target(name="novakit", label="NovaKit",
                              url=f"http://{HOST}:{port}/api/v1/chat/completions",
                              key=secret, server=server,
                              notes=[f"`python -m novakit.runtime.serve --workers {WORKERS} "
                                     "--process inference` (its production server and process "
                                     "type for the inference API, platform/serve; the portal "
                                     "and management API run in another): uvicorn workers, each "
                                     "listening on its own SO_REUSEPORT socket; "
                                     f"{' '.join(speedups) or '(default loop)'} (uvicorn's "
                                     "automatic choice when installed)"]))
        ctx["headline"] = "novakit"
        for target in targets:
            if target.server is not None:
                wait_until_up(target.server, target.url, timeout=60)
            check_answers(target)
        if litellm is not None:
            why = await_litellm(litellm, began + plan.litellm_start_budget)
            if why:
                ctx["litellm_error"] = (
                    f"it was given {plan.litellm_start_budget:.0f} s from the harness's start to "
                    f"import and answer ({plan.name} run). {why}")
                log(f"LiteLLM not measured: {why.splitlines()[0]}")
            else:
                litellm.notes.append(f"`litellm --num_workers {WORKERS} "
                                     f"--timeout_worker_healthcheck {WORKER_HEALTHCHECK_S}`, "
                                     "master-key mode, "
                                     "model routed to the same fake upstream; answered "
                                     f"{time.monotonic() - began:.0f} s after the harness began")
                targets.append(litellm)
        log("targets answer: " + ", ".join(t.label for t in targets))

        # warm-up, then memory at rest
        gateways = [t.server for t in targets if t.server is not None]
        for target in targets:
            run_load(target, mode="chat", concurrency=8, duration=plan.warmup,
                     expected_chunks=plan.stream_chunks, raw_dir=raw_dir, tag="warmup",
                     grace=plan.grace)
        cool_down(gateways, limit=10)
        for target in targets:
            if target.server is not None:
                target.idle = memory(target.server)

        # 4. the scenarios, interleaved
        by_cell: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
        ctx["vacuumed"] = autovacuum_is_off(args.db_name)
        scenarios = [(f"chat_c{c}", "chat", c, plan.duration) for c in plan.concurrencies]
        # One stream at a time: what the gateway adds to the first token by itself; then
        # many at once, where the streams also queue for the gateway's CPU.
        scenarios.append(("stream_c1", "stream", 1, plan.stream_duration))
        scenarios.append(("stream", "stream", plan.stream_concurrency, plan.stream_duration))
        for cell, mode, concurrency, duration in scenarios:
            for rep in range(plan.reps):
                for target in targets:
                    if target.name == "novakit" and ctx["vacuumed"]:
                        vacuum_analyze(args.db_name)
                    waited = cool_down(gateways, limit=plan.grace / 2)
                    result = run_load(target, mode=mode, concurrency=concurrency,
                                      duration=duration, expected_chunks=plan.stream_chunks,
                                      raw_dir=raw_dir, tag=f"{cell}#{rep + 1}",
                                      grace=plan.grace)
                    result["cool_down_s"] = waited
                    by_cell[target.name].setdefault(cell, []).append(result)
                    log(f"{cell} run {rep + 1}/{plan.reps} {target.label}: "
                        f"{result['throughput_rps']} req/s, p50 {result['latency_ms']['p50']} ms, "
                        f"p99 {result['latency_ms']['p99']} ms, errors {result['errors']}")

        # the many-open-streams run: gateways only (the direct path holds no state)
        status, body = http("POST", f"http://{HOST}:{fake_port}/control",
                            {"chunks": plan.hold_chunks,
                             "chunk_interval_ms": plan.hold_interval_ms})
        if status != 200:
            raise RuntimeError(f"fake upstream refused the hold knobs: {body!r}")
        idle_before_hold: dict[str, float] = {}
        for target in targets:
            if target.server is None:
                continue
            cool_down(gateways, limit=plan.grace / 2)
            idle_before_hold[target.name] = memory(target.server)["total_mb"]
            result = run_load(target, mode="hold", concurrency=plan.hold_streams,
                              duration=plan.hold_open_timeout,
                              expected_chunks=plan.hold_chunks, raw_dir=raw_dir, tag="hold",
                              hold_ramp=plan.hold_ramp_per_second,
                              grace=plan.hold_chunks * plan.hold_interval_ms / 1000 + plan.grace)
            result["idle_total_mb"] = idle_before_hold[target.name]
            by_cell[target.name]["hold"] = [result]
            log(f"hold {target.label}: {result['held']['peak_open']} open at once, "
                f"errors {result['errors']}")

        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name, cells in by_cell.items():
            results[name] = {}
            for cell, runs in cells.items():
                results[name][cell] = aggregate(runs)
                if cell == "hold":
                    results[name][cell]["held"] = runs[0]["held"]
                    results[name][cell]["idle_total_mb"] = runs[0]["idle_total_mb"]
        ceiling_cells = [(c, results["direct"].get(f"chat_c{c}")) for c in plan.concurrencies]
        best_c, best = max(((c, cell) for c, cell in ceiling_cells if cell),
                           key=lambda item: item[1]["throughput_rps"] or 0)
        ctx["ceiling"] = (f"{fmt(best['throughput_rps'], 0)} req/s at c={best_c} "
                          f"(p99 {fmt(best['p99_ms'], 1)} ms)")
        for target in targets:
            if target.server is not None and not target.server.alive():
                target.notes.append(f"exited during the run: {target.server.log_tail(10)}")
        ctx.update(results=results, targets=targets, load_after=" ".join(
            f"{x:.2f}" for x in os.getloadavg()))
        cool_down(gateways, limit=plan.grace / 2)
        ctx["calibration_after"] = calibration_ms()
        plot_path = plan.out_dir / "bench.png"
        plot(results, targets, plan, plot_path)
        ctx["plot"] = plot_path.name
        ctx["elapsed"] = f"{time.monotonic() - began:.0f} s"
        report = build_report(ctx)
        (plan.out_dir / "REPORT.md").write_text(report)
        summary = {"plan": plan.name, "results": results,
                   "idle": {t.name: t.idle for t in targets},
                   "litellm_error": ctx["litellm_error"]}
        (BENCH / "results" / "raw" / f"{plan.name}-summary.json").write_text(
            json.dumps(summary, indent=1))
        shutil.copy(raw_dir / "runs.jsonl", BENCH / "results" / "raw" / f"{plan.name}-runs.jsonl")
        log(f"wrote {plan.out_dir / 'REPORT.md'} and {plot_path} in {ctx['elapsed']}")
        print("\n".join(report.splitlines()[:6]))
        return 0
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
