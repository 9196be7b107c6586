"""NovaKit's web server: gunicorn, running uvicorn workers (novakit/runtime/worker.py).

    python -m novakit.runtime.serve --host 0.0.0.0 --port 8000 --workers 2 [--process inference]

gunicorn is the process manager: it starts the workers, replaces one that
dies, kills and replaces one whose event loop has not turned for
--worker-timeout seconds (30; the worker's loop tells gunicorn it is alive),
and a worker that cannot start stops the server ("Worker failed to boot.").
With `reuse_port` every worker binds the address itself with SO_REUSEPORT,
so the kernel spreads new connections over the workers by a hash of their
addresses (Linux): with one socket shared by all workers (uvicorn's own
`--workers`), one of two workers held all 64 of the benchmark's kept-alive
connections (6,273 requests answered by one, 595 by the other) and two
workers served no more than one.

On SIGTERM the workers stop accepting, let open requests and streams finish
within --timeout-graceful-shutdown, settle what is pending (the lifespan
shutdown, novakit/runtime/lifespan.py) and exit; SIGINT or SIGQUIT then (or
instead) stops waiting for open requests (gunicorn's quick shutdown). A
worker whose server is gone shuts itself down the same way. A port
something else listens on is refused before anything starts.

Measured (`bench/profile.py --workers 2 --concurrency 64 --duration 10`,
alternating, 3 rounds, medians): 2026-11-26, this file's supervisor of the
time against uvicorn `--workers 2`: 621 -> 686 req/s, p99 169 -> 145 ms.
2026-12-02, that supervisor (275 lines: a socket per worker, heartbeats,
restarts) against gunicorn 27 + uvicorn-worker with `--reuse-port` and the
same uvicorn settings: 413 (276-416) against 477 (380-507) req/s, p99 308
(303-426) against 320 (267-337) ms, CPU 2.14 (1.88-2.67) against 2.06
(1.76-2.16) ms per request; connections spread 36/28 over two workers with
one stopped while they arrived, for both. So gunicorn, and the supervisor
is gone. Off switch: run `uvicorn novakit.asgi:application` (one process).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import socket
from dataclasses import asdict, dataclass

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from novakit.env import env_str

logger = logging.getLogger("novakit.runtime.serve")

WORKER_CLASS = "novakit.runtime.worker.NovaKitWorker"
# How long a worker lets open requests finish when --timeout-graceful-shutdown does not say.
DEFAULT_GRACE_SECONDS = 60
# The lifespan shutdown waits up to 30 s for pending settlements after the open requests
# (novakit/runtime/lifespan.py): gunicorn's own deadline leaves room for both.
SETTLEMENT_GRACE_SECONDS = 35


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

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Options:
        return cls(**json.loads(os.environ["NOVAKIT_SERVE_OPTIONS"]))


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


class _Arbiter(Arbiter):
    """gunicorn's arbiter, halting once when several workers fail to boot together.

    gunicorn 27 halts on the first worker's boot error and, while stopping,
    reaps the other workers; a second boot error found there is raised again
    from inside the halt, escapes it, and the server exited 1 with a traceback
    instead of 3 ("Worker failed to boot"), the rest of the halt undone
    (tests/platform/test_serve.py). Once halting, that news is already known.
    """

    halting = False

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason=reason, exit_status=exit_status)

    def reap_workers(self) -> None:
        try:
            super().reap_workers()
        except HaltServer:
            if not self.halting:
                raise
            self.reap_workers()  # the worker that raised is reaped; on with the rest


class Server(BaseApplication):
    """gunicorn with NovaKit's options, the ASGI application loaded in each worker."""

    def __init__(self, options: Options) -> None:
        self.options = options
        super().__init__(prog="python -m novakit.runtime.serve")

    def load_config(self) -> None:
        options = self.options
        grace = options.timeout_graceful_shutdown or DEFAULT_GRACE_SECONDS
        host = f"[{options.host}]" if ":" in options.host else options.host
        for name, value in {
            "bind": [f"{host}:{options.port}"],
            "workers": options.workers,
            "worker_class": WORKER_CLASS,
            "reuse_port": True,  # a listening socket per worker (the kernel spreads connections)
            "timeout": math.ceil(options.worker_timeout),
            "graceful_timeout": grace + SETTLEMENT_GRACE_SECONDS,
            "keepalive": options.timeout_keep_alive,
            "forwarded_allow_ips": options.forwarded_allow_ips or "",
            "accesslog": "-" if options.access_log else None,
            "loglevel": options.log_level,
            "proc_name": f"novakit-{options.process}",
        }.items():
            self.cfg.set(name, value)

    def load(self) -> object:
        from novakit.asgi import application

        return application

    def run(self) -> None:
        _Arbiter(self).run()


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    logging.basicConfig(level=options.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not port_is_free(options.host, options.port):
        logger.error("%s:%s is taken: another server (or its workers) listens there",
                     options.host, options.port)
        return 1
    # Read by the workers (forked from this process): their settings and uvicorn's.
    os.environ["NOVAKIT_PROCESS"] = options.process
    os.environ["NOVAKIT_SERVE_OPTIONS"] = options.to_env()
    Server(options).run()  # exits the process with gunicorn's status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
