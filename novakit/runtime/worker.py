"""The gunicorn worker (novakit/runtime/serve.py): uvicorn-worker's, with NovaKit's settings.

What it adds to `uvicorn_worker.UvicornWorker`:
- uvicorn's options from the command line (keep-alive, graceful shutdown, the
  proxies whose X-Forwarded-For is trusted, the concurrency limit), the
  lifespan always on (pending settlements are waited for at shutdown), no
  websockets, no access log unless asked;
- it keeps telling gunicorn it is alive while it drains: uvicorn's main
  loop (which tells gunicorn) has ended then, and a draining worker is not a
  hung one, however long its open streams take;
- a worker whose gunicorn is gone (killed) shuts itself down the same way,
  and stops waiting for open requests after the graceful-shutdown time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from novakit.runtime.serve import DEFAULT_GRACE_SECONDS, Options


class NovaKitWorker(UvicornWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        options = Options.from_env()
        self.grace = options.timeout_graceful_shutdown or DEFAULT_GRACE_SECONDS
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "lifespan": "on",
            "ws": "none",  # no websockets anywhere in NovaKit (~2.5 MB less per worker)
            "access_log": options.access_log,
            "timeout_graceful_shutdown": options.timeout_graceful_shutdown,
            "limit_concurrency": options.limit_concurrency,
            # The client's address is the connection's unless it comes from a proxy named
            # here; gunicorn's and uvicorn's defaults trust loopback, and then anything that
            # reaches the port from the same host chooses the address the sign-in lockout and
            # /metrics go by.
            "proxy_headers": bool(options.forwarded_allow_ips),
            "forwarded_allow_ips": options.forwarded_allow_ips,
        }
        super().__init__(*args, **kwargs)
        self._orphaned = False

    async def _serve(self) -> None:
        worker = self
        self.config.app = self.wsgi

        class DrainingServer(Server):
            async def shutdown(self, sockets: Any = None) -> None:
                # The main loop has ended: keep telling gunicorn this worker is alive.
                threading.Thread(target=worker._alive_while_draining, daemon=True).start()
                await super().shutdown(sockets=sockets)

        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            raise SystemExit(self.WORKER_BOOT_ERROR)

    WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: stops the server

    def _alive_while_draining(self) -> None:
        while True:
            self.notify()
            time.sleep(min(1.0, max(self.timeout / 2, 0.1)))

    async def callback_notify(self) -> None:
        if self.ppid != os.getppid() and not self._orphaned:
            # gunicorn was killed: nobody else will stop this worker.
            self._orphaned = True
            self.log.warning("gunicorn is gone; worker %s shutting down", self.pid)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
            threading.Timer(self.grace, os.kill, (os.getpid(), signal.SIGINT)).start()
        self.notify()
