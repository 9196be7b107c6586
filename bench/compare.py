"""What each change bought: bench/profile.py run against several commits, one after another.

    .venv/bin/python bench/compare.py e95537b dfc2ef3 HEAD            # c=16, 12 s each
    .venv/bin/python bench/compare.py --concurrency 1 e95537b HEAD
    .venv/bin/python bench/compare.py --rounds 3 e95537b HEAD    # A B A B A B, medians

Each commit is checked out into a temporary git worktree, given today's
harness (bench/*.py, so every commit is measured the same way) and this
checkout's virtual environment, and profiled with one uvicorn worker. The
table (markdown) goes to stdout and, with --write, to
bench/results/CHANGES.md. With --rounds N every commit is measured N times,
the commits interleaved (A B C A B C ...), and the medians are reported with
the spread of the CPU figure: on a 2-core machine one 12 s run varies by
about a tenth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ["run.py", "profile.py", "loadgen.py", "fake_upstream.py", "manage_steps.py"]


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,  # noqa: S603,S607
                          text=True).stdout.strip()


def measure(ref: str, concurrency: int, duration: float) -> dict[str, object]:
    sha = git("rev-parse", "--short", ref)
    subject = git("log", "-1", "--format=%s", sha)
    tree = Path(tempfile.mkdtemp(prefix=f"novakit-{sha}-"))
    git("worktree", "add", "--detach", str(tree), sha)
    try:
        for name in HARNESS:
            shutil.copy(ROOT / "bench" / name, tree / "bench" / name)
        (tree / ".venv").symlink_to(ROOT / ".venv")
        done = subprocess.run(  # noqa: S603
            [str(ROOT / ".venv" / "bin" / "python"), str(tree / "bench" / "profile.py"),
             "--concurrency", str(concurrency), "--duration", str(duration)],
            cwd=tree, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{sha}: profile failed\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    finally:
        git("worktree", "remove", "--force", str(tree))
    return {"sha": sha, "subject": subject, **result}


def table(runs: list[list[dict[str, object]]], concurrency: int, duration: float) -> str:
    rounds = len(runs[0])
    lines = [
        f"# What each change bought (bench/compare.py, c={concurrency}, {duration:g} s each, "
        f"{rounds} round{'s' if rounds > 1 else ''})", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on this machine: one uvicorn worker, "
        "PostgreSQL + Redis, non-streaming completions against the fake upstream, today's "
        "harness for every commit (bench/profile.py)"
        + (f"; the commits measured in turn, {rounds} times over, medians shown, the CPU "
           "column with its lowest and highest run" if rounds > 1 else
           "; the commits measured once each, in turn")
        + ". CPU is the gateway process's own; PostgreSQL work is from pg_stat_database.", "",
        "| commit | change | req/s | p50 ms | p99 ms | CPU ms/request | commits/request "
        "| rows fetched/request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for measured in runs:
        first = measured[0]

        def median(read, measured=measured) -> float:  # type: ignore[no-untyped-def]
            return statistics.median([float(read(row)) for row in measured])

        cpus = [float(row["cpu_ms_per_request"]) for row in measured]  # type: ignore[arg-type]
        spread = f" ({min(cpus):.2f}-{max(cpus):.2f})" if len(cpus) > 1 else ""
        lines.append(
            f"| `{first['sha']}` | {first['subject']} | "
            f"{median(lambda r: r['req_per_s']):,.0f} | "
            f"{median(lambda r: r['latency_ms']['p50']):.1f} | "
            f"{median(lambda r: r['latency_ms']['p99']):.1f} | "
            f"{statistics.median(cpus):.2f}{spread} | "
            f"{median(lambda r: r['postgres_per_request']['commits']):.2f} | "
            f"{median(lambda r: r['postgres_per_request']['fetched']):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every commit this many times, interleaved; medians")
    parser.add_argument("--write", action="store_true",
                        help="also write bench/results/CHANGES.md")
    args = parser.parse_args()
    runs: list[list[dict[str, object]]] = [[] for _ in args.refs]
    for round_number in range(args.rounds):
        for ref, measured in zip(args.refs, runs, strict=True):
            measured.append(measure(ref, args.concurrency, args.duration))
            print(f"round {round_number + 1}: measured {measured[-1]['sha']} "
                  f"({measured[-1]['cpu_ms_per_request']} ms CPU/request)", file=sys.stderr)
    report = table(runs, args.concurrency, args.duration)
    sys.stdout.write(report)
    if args.write:
        (ROOT / "bench" / "results" / "CHANGES.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
