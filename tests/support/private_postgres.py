"""A throwaway PostgreSQL cluster of the test's own, so a test may stop and restart it.

The machine's shared PostgreSQL (port 5432) serves everybody's tests and must
never be stopped; this one lives in a temporary folder, listens on a free
loopback port with trust authentication, and is deleted with the folder.

PostgreSQL refuses to run as root, so when the tests run as root the server
binaries run as the `postgres` OS user (through `runuser`). Missing binaries
or a missing user fail loudly: the tests that need this are never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

SEARCHED_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/14/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bin_dir() -> Path:
    configured = os.environ.get("PG_BIN_DIR")
    candidates = [configured] if configured else []
    candidates += list(SEARCHED_BIN_DIRS)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (
                Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "a private PostgreSQL cluster needs the server binaries (initdb, pg_ctl): install "
        "postgresql (apt-get install -y postgresql) or set PG_BIN_DIR; searched "
        f"{', '.join(c for c in candidates if c)}"
    )


def _as_server_user() -> list[str]:
    """The prefix that runs a server binary as a user PostgreSQL accepts (never root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root: PostgreSQL must run as another user, and "
                           "`runuser` (util-linux) is missing")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root: PostgreSQL must run as the `postgres` OS user, "
                           "and there is none (the postgresql package creates it)") from exc
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PrivatePostgres:
    folder: Path
    port: int
    bin_dir: Path
    prefix: list[str]
    database: str = "novakit"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        """A `DATABASE_URL` for NovaKit processes."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}"

    @classmethod
    def create(cls) -> PrivatePostgres:
        """initdb, start, and create the database; the caller must `destroy()` it.

        The folder is a new one directly under the system's temporary folder: short
        (the server's Unix socket lives there, and socket paths are limited to ~100
        bytes) and reachable by the server's user.
        """
        folder = Path(tempfile.mkdtemp(prefix="novakit-pg-"))
        cluster = cls(folder=folder, port=free_port(), bin_dir=_bin_dir(),
                      prefix=_as_server_user())
        if cluster.prefix:
            shutil.chown(folder, user="postgres", group="postgres")
        cluster._run("initdb", "-D", str(cluster.data_dir), "-U", "postgres",
                     "--auth=trust", "--no-sync", "-E", "UTF8")
        cluster.start()
        with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{cluster.database}"')
        return cluster

    def _run(self, binary: str, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, str(self.bin_dir / binary), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        # Small and quick: no fsync (the data is thrown away), few connections.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off "
                   f"-c unix_socket_directories={self.folder} -c max_connections=60")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                  "-w", "-t", "30", "start")
        self.wait_until_accepting()

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session and shuts down cleanly; `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        self.start()

    def wait_until_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres "
                                     "dbname=postgres", connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)
