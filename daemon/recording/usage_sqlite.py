"""Usage rows in one SQLite file (the default: one dariod, one file in its state folder).

WAL journal so the readers never block the writer; the file is private (0600). The schema version
is SQLite's `user_version`; version 1 is the original table, so files written before versioning
upgrade in place.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from dario.daemon.recording.usage_sql import COLUMNS, SqlDialect, UsageRows, read_usage

BUSY_TIMEOUT_MS = 2000  # bounds every write, including the shielded one at shutdown

DIALECT = SqlDialect(
    table="usage", param="?", total="TOTAL({})", bucket_start="CAST(ts / {p} AS INTEGER) * {p}"
)
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        client TEXT NOT NULL,
        account TEXT,
        model TEXT,
        dialect TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        streaming INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error_type TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_5m INTEGER NOT NULL DEFAULT 0,
        cache_write_1h INTEGER NOT NULL DEFAULT 0,
        cache_read INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL NOT NULL DEFAULT 0,
        ttft_ms REAL,
        failovers INTEGER NOT NULL DEFAULT 0,
        queue_wait_ms REAL NOT NULL DEFAULT 0,
        cost_usd REAL
    );
    CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
    """,
]
_INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class SqliteWriter:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def write(self, values: list[tuple[Any, ...]]) -> None:
        with self.conn:
            self.conn.executemany(_INSERT, values)

    def prune(self, before: float) -> int:
        with self.conn:
            cur = self.conn.execute("DELETE FROM usage WHERE ts < ?", (before,))
        return cur.rowcount

    def close(self) -> None:
        self.conn.close()


class SqliteUsage:
    kind = "sqlite"
    first_retry_s: float | None = None  # a broken file needs the user: retry at the store's reopen interval
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def connect(self) -> SqliteWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn)
            # Fail now, not at the first flush, if the file is damaged beyond its header.
            conn.execute("SELECT COUNT(*) FROM usage WHERE ts > 0 AND id < 0").fetchone()
        except BaseException:
            conn.close()
            raise
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)  # account aliases and client names are nobody else's business
        return SqliteWriter(conn)

    def read(self, *, since: float, now: float, bucket: int, burn_since: float, recent_rows: int) -> UsageRows | None:
        """The Usage view's rows on one snapshot; None when nothing was recorded yet."""
        if not self.path.exists():  # nothing recorded yet; do not create the file from a reader
            return None
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.execute("BEGIN")  # one snapshot for every SELECT, so the numbers agree
            return read_usage(conn.execute, DIALECT, since=since, now=now, bucket=bucket, burn_since=burn_since,
                              recent_rows=recent_rows)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the writer has not created it yet: just empty
                return None
            raise
        finally:
            conn.close()

    def describe_error(self, exc: BaseException) -> str:
        """A message naming the file and what to do about it."""
        path = self.path
        text = str(exc) or type(exc).__name__
        low = text.lower()
        if "locked" in low or "busy" in low:
            fix = "another process holds it locked; make sure only one dariod runs, then restart dariod"
        elif "readonly" in low or "read-only" in low or "permission" in low or "unable to open" in low:
            fix = f"check that {path.parent} and the file are writable by this user, then restart dariod"
        elif "disk" in low and "full" in low:
            fix = "free some disk space; dariod retries on its own"
        elif "newer" in low:
            fix = "upgrade dario, or point this dariod at another file"
        else:
            fix = f"stop dariod, move the file aside (mv '{path}' '{path}.bad'), and start dariod again"
        return f"usage analytics database {path} is unusable ({text}): {fix}. Requests are still served."


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to the newest schema, one version per transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"its schema is version {version}, newer than this dariod knows ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
