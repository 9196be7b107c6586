"""What each change bought: bench/profile.py run against several commits, one after another.

    .venv/bin/python bench/compare.py e95537b dfc2ef3 HEAD            # c=16, 12 s each
    .venv/bin/python bench/compare.py --concurrency 1 e95537b HEAD

Each commit is checked out into a temporary git worktree, given today's
harness (bench/*.py, so every commit is measured the same way) and this
checkout's virtual environment, and profiled with one uvicorn worker. The
table (markdown) goes to stdout and, with --write, to
bench/results/CHANGES.md. Run it on a quiet machine: the commits are measured
in turn, not interleaved, so a busy neighbour skews one more than another.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def table(rows: list[dict[str, object]], concurrency: int, duration: float) -> str:
    lines = [
        f"# What each change bought (bench/compare.py, c={concurrency}, {duration:g} s each)", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, one after another on this machine: "
        "one uvicorn worker, PostgreSQL + Redis, non-streaming completions against the fake "
        "upstream, today's harness for every commit (bench/profile.py). CPU is the gateway "
        "process's own; PostgreSQL work is from pg_stat_database.", "",
        "| commit | change | req/s | p50 ms | CPU ms/request | commits/request "
        "| rows fetched/request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        postgres = row["postgres_per_request"]
        latency = row["latency_ms"]
        lines.append(
            f"| `{row['sha']}` | {row['subject']} | {row['req_per_s']:,.0f} | "
            f"{latency['p50']:.1f} | {row['cpu_ms_per_request']:.2f} | "  # type: ignore[index]
            f"{postgres['commits']:.2f} | {postgres['fetched']:.1f} |")  # type: ignore[index]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--write", action="store_true",
                        help="also write bench/results/CHANGES.md")
    args = parser.parse_args()
    rows = []
    for ref in args.refs:
        rows.append(measure(ref, args.concurrency, args.duration))
        print(f"measured {rows[-1]['sha']}", file=sys.stderr)
    report = table(rows, args.concurrency, args.duration)
    sys.stdout.write(report)
    if args.write:
        (ROOT / "bench" / "results" / "CHANGES.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
