"""Run a Procfile's processes the way a Procfile runner (honcho, foreman) does.

Each line `name: command` is one process type; an instance runs `exec command` through
`/bin/sh -c` (so the file's `${PORT:-8000}` defaults expand, and then the program itself
is the process, receives the signals and reports its exit status) from the repository
root, with the environment it is given plus `PORT`. Every instance gets its own
process group, so a stop reaches whatever it started, and its own log file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(\S.*)$")


def procfile_read(path: Path) -> dict[str, str]:
    """The process types of a Procfile, in order: {name: command line}."""
    commands: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _LINE.match(line)
        if not found:
            raise ValueError(f"{path}:{number}: not a `name: command` line: {line!r}")
        name, command = found.groups()
        if name in commands:
            raise ValueError(f"{path}:{number}: process type {name!r} is defined twice")
        commands[name] = command
    return commands


@dataclass
class ProcfileProcess:
    """One running instance of a process type, e.g. `web.2`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass  # already gone, with everything it started


def procfile_start(*, name: str, command: str, number: int, cwd: Path, env: dict[str, str],
                   log_dir: Path) -> ProcfileProcess:
    """Start instance `number` (from 1) of one process type."""
    label = f"{name}.{number}"
    log = log_dir / f"{label}.log"
    with log.open("wb") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return ProcfileProcess(name=label, process=process, log=log)


def procfile_stop(processes: list[ProcfileProcess], *, timeout: float = 15.0) -> dict[str, int]:
    """SIGTERM every process group at once, wait up to `timeout` for all, SIGKILL the rest.

    Returns each instance's exit status; a process that had to be killed is -SIGKILL.
    """
    for running in processes:
        if running.running():
            running.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    statuses: dict[str, int] = {}
    for running in processes:
        try:
            statuses[running.name] = running.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            running.signal_group(signal.SIGKILL)
            running.process.wait(5)
            statuses[running.name] = -signal.SIGKILL
        # Anything it started and left behind goes too.
        running.signal_group(signal.SIGKILL)
    return statuses
