"""NovaKit's web server: uvicorn workers that each listen on a socket of their own.

    python -m novakit.runtime.serve --host 0.0.0.0 --port 8000 --workers 2

uvicorn's own `--workers` shares one listening socket between its worker
processes: whichever worker is awake when connections arrive accepts them,
and a kept-alive connection (load balancers and SDKs keep them) stays where
it landed. In the benchmark one of two workers ended up holding all 64 of
the load generator's connections (6,273 requests answered by one, 595 by the
other), and two workers served no more than one. Here every worker binds the
address itself with SO_REUSEPORT, and the kernel spreads new connections
over the workers by a hash of each connection's addresses (Linux): 28 and 36
of the 64 in the same run.

Measured (`bench/profile.py --workers 2 --concurrency 64 --duration 10`, the
servers alternating, 3 rounds, medians): 2026-11-26, against uvicorn
`--workers 2`, 621 -> 686 req/s, p99 169 -> 145 ms, CPU 1.67 -> 1.71 ms per
request; 2026-12-02, against gunicorn with uvicorn-worker's UvicornWorker
and `--reuse-port` (one socket shared by the workers all the same), see
novakit/runtime/README.md.

The supervisor (this process) starts the workers and starts a new one when
one dies. On SIGTERM or SIGINT it passes the signal on to each worker and
waits: a worker stops accepting, finishes its open requests and streams
within --timeout-graceful-shutdown, settles what is pending (the lifespan
shutdown, novakit/runtime/lifespan.py) and exits. After a second signal, of either
kind, the workers stop waiting for open requests and skip the lifespan
shutdown (settlements still running are left to the expiry job). A worker whose supervisor
is gone shuts itself down the same way, and stops waiting after the
graceful-shutdown time (60 s when none is set). A worker that cannot start
(bad settings, a failing start-up) stops everything: starting it again
would fail again; so does a port something else already listens on.

A worker whose event loop stops turning (code that blocks it, a deadlock)
still holds its listening socket, so the kernel would go on handing it a
share of new connections that nobody answers. Each worker's loop stamps a
heartbeat every tenth of a second; one silent for --worker-timeout seconds
(30) is killed and replaced. Its requests in flight are lost with it; the
expiry job releases their reservations. Not checked: a worker still
starting (it has not ticked yet) and one shutting down (told to by a
signal, its own or the supervisor's).
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from novakit.env import env_str

logger = logging.getLogger("novakit.runtime.serve")

APP = "novakit.asgi:application"
STARTUP_FAILURE = 3  # a worker that could not start (uvicorn's code for it, too)
# How long a worker whose supervisor was killed lets open requests finish, when
# --timeout-graceful-shutdown does not say.
ORPHAN_GRACE_SECONDS = 60
SHUTTING_DOWN = -1.0  # a worker's heartbeat while it drains (0: not started yet)


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    workers: int
    timeout_keep_alive: int
    timeout_graceful_shutdown: int | None
    limit_concurrency: int | None
    forwarded_allow_ips: str  # empty: no proxy is trusted
    access_log: bool
    log_level: str
    worker_timeout: float
    process: str  # NOVAKIT_PROCESS for the workers: all, or inference


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m novakit.runtime.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout-keep-alive", type=int, default=5)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None)
    parser.add_argument("--limit-concurrency", type=int, default=None)
    parser.add_argument("--forwarded-allow-ips", default=env_str("FORWARDED_ALLOW_IPS", ""),
                        help="comma-separated addresses or networks of the proxies whose "
                             "X-Forwarded-For and -Proto are trusted (default: "
                             "$FORWARDED_ALLOW_IPS, else none)")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--worker-timeout", type=float, default=30.0,
                        help="seconds a worker's event loop may stay unresponsive before the "
                             "worker is killed and replaced")
    parser.add_argument("--process", default=env_str("NOVAKIT_PROCESS", "all"),
                        choices=["all", "inference"],
                        help="what the workers serve: everything, or the inference API only "
                             "(default: $NOVAKIT_PROCESS, else all)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.worker_timeout <= 0:
        parser.error("--worker-timeout must be positive")
    for proxy in filter(None, (item.strip() for item in args.forwarded_allow_ips.split(","))):
        # uvicorn would take a typo for a literal host name that never matches.
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            if proxy != "*":
                parser.error(f"--forwarded-allow-ips / FORWARDED_ALLOW_IPS: {proxy!r} is not "
                             "an address, a network or *")
    return Options(**vars(args))


def _tcp_socket(host: str) -> socket.socket:
    """A TCP socket for `host` (IPv6 when it is written with colons), TIME_WAIT no obstacle."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that other workers may bind too (SO_REUSEPORT)."""
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _serve(options: Options, supervisor: int, heartbeat: ctypes.c_double) -> None:
    """One worker: uvicorn on its own socket. Runs in a process of its own."""
    import uvicorn

    class Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            # uvicorn's main loop calls this every 0.1 s, on the event loop.
            heartbeat.value = time.monotonic()
            return await super().on_tick(counter)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # The main loop (and its ticks) has ended: draining is not hanging.
            heartbeat.value = SHUTTING_DOWN
            await super().shutdown(sockets=sockets)

    # Its own process group: a terminal's Ctrl+C reaches the supervisor only, which
    # passes it on. Reaching both, it would be two signals here, and uvicorn takes a
    # second one as "stop waiting for open requests".
    os.setpgrp()
    try:
        sock = listening_socket(options.host, options.port)
    except OSError as exc:
        print(f"cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    config = uvicorn.Config(
        APP, host=options.host, port=options.port, lifespan="on",
        # No websockets anywhere in NovaKit: not loading uvicorn's implementation keeps
        # ~2.5 MB out of every worker.
        ws="none",
        timeout_keep_alive=options.timeout_keep_alive,
        timeout_graceful_shutdown=options.timeout_graceful_shutdown,
        limit_concurrency=options.limit_concurrency,
        # The client's address is the connection's unless it comes from a proxy named
        # here. uvicorn's own default trusts loopback, and then anything that reaches the
        # port from the same host (a sidecar, a local user, a proxy passing X-Forwarded-For
        # through) chooses the address the sign-in lockout and /metrics go by.
        proxy_headers=bool(options.forwarded_allow_ips),
        forwarded_allow_ips=options.forwarded_allow_ips,
        access_log=options.access_log, log_level=options.log_level,
    )
    threading.Thread(target=_stop_when_orphaned, args=(supervisor, options), daemon=True).start()
    server = Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it has shut down for
        return
    except Exception:
        if server.started:
            raise
        logger.exception("the worker could not start")
        sys.exit(STARTUP_FAILURE)
    if not server.started:  # the application's start-up failed (uvicorn logged why)
        sys.exit(STARTUP_FAILURE)


def _stop_when_orphaned(supervisor: int, options: Options) -> None:
    """Shut down as if told to once the supervisor is gone (killed: nobody else will)."""
    while os.getppid() == supervisor:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
    time.sleep(options.timeout_graceful_shutdown or ORPHAN_GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGINT)  # then stop waiting for open requests


@dataclass(frozen=True)
class Worker:
    process: BaseProcess
    # When its event loop last turned (time.monotonic(); 0 until it runs), in memory
    # shared with it. Without a lock: a worker killed while holding one would leave
    # the supervisor waiting for it forever; an aligned double is written and read whole.
    heartbeat: ctypes.c_double


class Supervisor:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        # Signals as they arrive. The handler only appends: the main loop acts on them
        # (setting a threading.Event from a handler can deadlock with its waiter).
        self.received: list[int] = []
        self.failed = False

    def start_worker(self) -> Worker:
        heartbeat = self.context.Value("d", 0.0, lock=False)
        process = self.context.Process(target=_serve, args=(self.options, os.getpid(), heartbeat),
                                       name="novakit-web")
        process.start()
        logger.info("started worker %s", process.pid)
        return Worker(process, heartbeat)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process.pid is not None and worker.process.exitcode is None:
                os.kill(worker.process.pid, signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        if not port_is_free(self.options.host, self.options.port):
            logger.error("%s:%s is taken: another server (or its workers) listens there",
                         self.options.host, self.options.port)
            return 1
        self.workers = [self.start_worker() for _ in range(self.options.workers)]
        while not self.received and not self.failed:
            time.sleep(0.2)
            self.kill_the_unresponsive()
            self.replace_the_dead()
        self.signal_workers(self.received[0] if self.received else signal.SIGTERM)
        forced = False
        while any(worker.process.is_alive() for worker in self.workers):
            if len(self.received) > 1 and not forced:
                # A second signal: the workers stop waiting for open requests. uvicorn
                # takes that from a SIGINT after the first signal, not from a SIGTERM.
                self.signal_workers(signal.SIGINT)
                forced = True
            time.sleep(0.1)
        logger.info("all workers stopped")
        return 1 if self.failed else 0

    def kill_the_unresponsive(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            last, process = worker.heartbeat.value, worker.process
            if last > 0 and now - last > self.options.worker_timeout and process.is_alive():
                logger.error("worker %s has not run its event loop for %.0f s; killing it",
                             process.pid, now - last)
                process.kill()
                process.join(timeout=5)

    def replace_the_dead(self) -> None:
        for index, worker in enumerate(self.workers):
            process = worker.process
            if process.is_alive() or self.received:
                continue
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker %s could not start; stopping", process.pid)
                self.failed = True
                return
            logger.warning("worker %s exited (%s); starting another", process.pid,
                           process.exitcode)
            self.workers[index] = self.start_worker()


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on (host, port). Binding without SO_REUSEPORT fails if
    anything does, even another server's SO_REUSEPORT workers, which the workers'
    own binds would otherwise join, splitting the traffic with them."""
    with _tcp_socket(host) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    os.environ["NOVAKIT_PROCESS"] = options.process  # read by the workers' settings
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s "
                        "%(name)s [supervisor %(process)d] %(message)s")
    return Supervisor(options).run()


if __name__ == "__main__":
    raise SystemExit(main())
