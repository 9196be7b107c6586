"""The production server (novakit/runtime/serve.py, gunicorn with NovaKit's uvicorn workers):
workers on sockets of their own, replaced when they die or hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.platform.test_graceful_shutdown import (  # noqa: F401 (a fixture)
    slow_stream,
    upstream_in_env,
)
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import (
    ROOT,
    GatewayProcess,
    gateway_spawn,
    sockets_per_worker,
    workers_of,
)

CONNECTIONS = 64


def health_check_on(connection: socket.socket) -> bytes:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return connection.recv(4096)


def wait_for_workers(gateway: GatewayProcess, count: int, timeout: float = 60) -> list[int]:
    """The workers, once `count` of them listen (each starts on its own, in its own time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = workers_of(gateway)
        listening = sockets_per_worker(gateway, workers, "0A")
        if len(workers) == count and all(listening.values()):
            return workers
        time.sleep(0.1)
    raise AssertionError(f"{count} listening workers expected, found {workers_of(gateway)}")


def replacement_of(gateway: GatewayProcess, gone: int, *, beside: int) -> int:
    """The worker started in place of `gone`, once `gone` has left (the other one stays)."""
    deadline = time.monotonic() + 60
    while gone in workers_of(gateway):
        assert time.monotonic() < deadline, workers_of(gateway)
        time.sleep(0.1)
    return next(pid for pid in wait_for_workers(gateway, 2) if pid != beside)


def test_connections_reach_every_worker_even_one_busy_when_they_arrive(
    gateway_processes,  # noqa: F811
):
    """Connections are kept alive (by load balancers, by SDKs): whichever worker accepts
    one serves it for as long as it lasts. With one socket shared by all workers, a
    worker busy when a burst of connections arrived (here: stopped for the moment)
    got none of them, and the other kept them all."""
    [gateway] = gateway_processes(1, workers=2)
    workers = wait_for_workers(gateway, 2)

    os.kill(workers[0], signal.SIGSTOP)
    try:
        connections = [socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
                       for _ in range(CONNECTIONS)]
        time.sleep(0.5)  # time enough for the other worker to take them all, if it could
    finally:
        os.kill(workers[0], signal.SIGCONT)
    try:
        deadline = time.monotonic() + 30
        held = sockets_per_worker(gateway, workers, "01")
        while sum(held.values()) < CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.05)  # the stopped worker accepts its share once it runs again
            held = sockets_per_worker(gateway, workers, "01")
        answers = [health_check_on(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()

    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert sum(held.values()) == CONNECTIONS
    # The kernel spreads connections by a hash of their addresses: fewer than 13 of
    # 64 on one of two workers has a chance of about one in a million.
    assert min(held.values()) >= 13, held


def test_a_worker_that_dies_is_replaced_and_the_others_keep_serving(
    gateway_processes,  # noqa: F811
):
    [gateway] = gateway_processes(1, workers=2)
    first, second = wait_for_workers(gateway, 2)

    os.kill(first, signal.SIGKILL)
    replacement = replacement_of(gateway, first, beside=second)
    answers = [httpx.get(f"{gateway.url}/healthz").status_code for _ in range(20)]

    assert replacement != first
    assert second in workers_of(gateway)
    assert answers == [200] * 20


def test_sigterm_stops_the_workers_and_then_the_server(gateway_processes):  # noqa: F811
    [gateway] = gateway_processes(1, workers=2)
    workers = wait_for_workers(gateway, 2)

    gateway.process.send_signal(signal.SIGTERM)

    assert gateway.process.wait(60) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path):
    log = tmp_path / "serve.log"
    env = {**os.environ, "DB_THREADS": "many"}  # the settings refuse to load
    gateway = gateway_spawn(env=env, log=log, workers=2)

    assert gateway.process.wait(120) == 3  # gunicorn's "worker failed to boot": not restarted
    assert "Worker failed to boot" in log.read_text()


def test_workers_that_fail_to_start_at_once_stop_the_server_with_the_boot_error(tmp_path: Path):
    """gunicorn halts on the first worker's boot error and, while stopping, reaps the others:
    a second boot error found there is raised again, from inside the halt, and uncaught the
    server exited 1. Here every worker has failed before the server looks at any of them."""
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.settings_that_fail_together",
           "FAIL_TOGETHER_DIR": str(arrived), "FAIL_TOGETHER_WORKERS": "2"}
    log = tmp_path / "serve.log"
    gateway = gateway_spawn(env=env, log=log, workers=2)
    server = gateway.process.pid
    _wait_until(lambda: len(list(arrived.iterdir())) == 2, timeout=60)
    os.kill(server, signal.SIGSTOP)  # the workers go on to fail; the server sees none yet
    try:
        workers = [int(path.name) for path in arrived.iterdir()]
        _wait_until(lambda: all(_exited(pid) for pid in workers), timeout=60)
    finally:
        os.kill(server, signal.SIGCONT)

    assert gateway.process.wait(120) == 3
    assert "HaltServer" not in log.read_text()  # no traceback of the server's own


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _exited(pid: int) -> bool:
    """Whether `pid` has exited (a zombie its parent has not reaped yet counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_a_port_something_already_listens_on_is_refused(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", "novakit.runtime.serve", "--port", str(port),
             "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    assert process.returncode == 1
    assert "is taken" in process.stderr


def test_a_worker_whose_event_loop_stops_is_killed_and_replaced(gateway_processes):  # noqa: F811
    """Stopped, a worker still holds its socket and the kernel still hands it connections
    that nobody answers; gunicorn hears nothing from it and replaces it."""
    [gateway] = gateway_processes(1, workers=2, serve_args=("--worker-timeout", "5"))
    stuck, other = wait_for_workers(gateway, 2)
    time.sleep(6)  # longer than the timeout: a worker that runs is not touched

    assert workers_of(gateway) == [stuck, other]
    os.kill(stuck, signal.SIGSTOP)
    replacement = replacement_of(gateway, stuck, beside=other)
    answers = [httpx.get(f"{gateway.url}/healthz").status_code for _ in range(20)]

    assert replacement != stuck and other in workers_of(gateway)
    assert answers == [200] * 20
    assert "WORKER TIMEOUT" in gateway.log.read_text()


def test_a_worker_draining_its_streams_is_not_taken_for_a_stopped_one(
    tenant, upstream_in_env, gateway_processes,  # noqa: F811
):
    """Told to stop (here by a signal of its own), a worker's loop no longer ticks while
    it lets open streams finish; that is a shutdown, not a hang, however long it takes."""
    [gateway] = gateway_processes(1, workers=1, serve_args=("--worker-timeout", "1"))
    [worker] = wait_for_workers(gateway, 1)

    with httpx.Client(timeout=30) as client, slow_stream(client, gateway, tenant, 0.25) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        os.kill(worker, signal.SIGTERM)
        started = time.monotonic()
        rest = [line for line in lines if line.startswith("data:")]
        drained_for = time.monotonic() - started

    assert drained_for > 2  # well past the worker timeout
    assert rest[-1] == "data: [DONE]"
    replacement = wait_for_workers(gateway, 1)  # it exited; gunicorn started another
    assert replacement != [worker]
    assert "WORKER TIMEOUT" not in gateway.log.read_text()
