"""A throwaway PostgreSQL for tests: `initdb` into a temp folder, `postgres` on a loopback port.

PostgreSQL refuses to run as root; as root (CI) the server runs as the `postgres` user the Debian
package creates, with its folder chowned to it. Tests skip with the reason when no binaries exist.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PASSWORD = "pg-test-Secret-7f3a9"  # a password the tests look for in every output


def _bin(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def skip_reason() -> str | None:
    if _bin("initdb") is None or _bin("postgres") is None:
        return "PostgreSQL server binaries (initdb, postgres) are not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'dario[team]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster; `stop()` and `start()` may be called again (outage tests)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dario-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "postgres.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            # setpriv execs postgres itself (no process in between), so stop()'s signal reaches it.
            self._as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            shutil.chown(self.dir, "postgres")
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres")
        subprocess.run(
            [*self._as_postgres, str(_bin("initdb")), "-D", str(self.data), "-U", "dario", "--pwfile", str(pwfile),
             "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C"],
            check=True, capture_output=True,
        )
        pwfile.unlink()

    @property
    def url(self) -> str:
        return f"postgresql://dario:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*self._as_postgres, str(_bin("postgres")), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:  # ready when it accepts a connection (no event to wait on across processes)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                import psycopg

                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start:\n{self.log.read_text(errors='replace')}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected at once, like a crashed or restarted server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
