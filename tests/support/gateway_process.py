"""A real gateway (`uvicorn novakit.asgi:application`) in a process of its own, and
`manage.py` commands run the same way, for tests that kill, restart or starve them.

(tests/ratelimit/conftest.py's `gateway_processes` fixture starts gateways on the
test database; this starts one on whatever environment it is given.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v1"

    def wait_until_healthy(self, timeout: float = 60) -> None:
        """Wait until /healthz answers (it touches no database); stop and raise if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def gateway_spawn(*, env: dict[str, str], log: Path, workers: int | None = None,
                  serve_args: tuple[str, ...] = ()) -> GatewayProcess:
    """Start a gateway process; `wait_until_healthy()` before sending it requests.

    Plain uvicorn, one process; with `workers`, the production server
    (novakit/runtime/serve.py): gunicorn and that many worker processes, given
    `serve_args` too.
    """
    port = free_port()
    if workers is None:
        command = [str(ROOT / ".venv/bin/uvicorn"), "novakit.asgi:application"]
    else:
        command = [str(ROOT / ".venv/bin/python"), "-m", "novakit.runtime.serve",
                   "--workers", str(workers), *serve_args]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    return GatewayProcess(process=process, port=port, log=log)


def gateway_start(*, env: dict[str, str], log: Path, timeout: float = 60) -> GatewayProcess:
    """Start a gateway and wait until /healthz answers; raise with its log if it does not."""
    gateway = gateway_spawn(env=env, log=log)
    gateway.wait_until_healthy(timeout)
    return gateway


def manage(*args: str, env: dict[str, str]) -> str:
    """Run `manage.py ARGS` in its own process; return its output, raise with it on failure."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout


def workers_of(gateway: GatewayProcess) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == gateway.process.pid and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return sorted(found)


def sockets_per_worker(gateway: GatewayProcess, workers: list[int], state: str) -> dict[int, int]:
    """How many sockets on the gateway's port in `state` each worker holds (from /proc):
    "01" established connections, "0A" listening sockets."""
    inodes: dict[str, int] = {}
    for pid in workers:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the worker exited meanwhile
            continue
        for fd in descriptors:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[len("socket:["):-1]] = pid
    held = dict.fromkeys(workers, 0)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == gateway.port and fields[3] == state and fields[9] in inodes:
            held[inodes[fields[9]]] += 1
    return held
