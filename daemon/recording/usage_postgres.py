"""Usage rows in PostgreSQL (team mode): every dariod of a team writes to one database, so any
instance's `dario-ctl usage`, /analytics and dashboard show the whole team's usage.

psycopg 3's sync API, always from a worker thread (its async API runs on asyncio, not trio): one
writer connection, held; one short-lived reader connection per Usage query. Every wait is bounded
(connect_timeout, statement_timeout, tcp_user_timeout) so an unreachable server costs the proxy
nothing but a `problem`. Batches go in with COPY (https://www.postgresql.org/docs/current/sql-copy.html).

Migrations are numbered; `dario_schema` holds the version. They run at start in one transaction under
an advisory lock, so instances starting together migrate once. Each row carries the writing instance
(host/pid). Retention is the same rule as SQLite's, pruned by any instance (a DELETE by age is idempotent).
The URL's password never leaves this module in clear: messages show `dburl.shown()`.
"""

from __future__ import annotations

import os
import socket
from types import ModuleType
from typing import Any

from dario.daemon import dburl
from dario.daemon.recording.usage_sql import COLUMNS, SqlDialect, UsageRows, read_usage
from dario.daemon.redact import redact

CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000
TCP_USER_TIMEOUT_MS = 5000  # unacknowledged writes to a vanished server fail within this
FIRST_RETRY_S = 0.5  # then doubling up to the store's reopen interval
MIGRATION_LOCK = 0x6461_7269_6F01  # pg_advisory_xact_lock key: "dario" + 1

TABLE = "dario_usage"
DIALECT = SqlDialect(table=TABLE, param="%s", total="COALESCE(SUM({}), 0)", bucket_start="FLOOR(ts / {p}) * {p}",
                     instances="COUNT(DISTINCT instance)")
MIGRATIONS: list[list[str]] = [
    [  # 1: SQLite's columns, plus which instance wrote the row
        f"""CREATE TABLE {TABLE} (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            client TEXT NOT NULL,
            account TEXT,
            model TEXT,
            dialect TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            streaming INTEGER NOT NULL,
            status INTEGER NOT NULL,
            error_type TEXT,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0,
            cache_write_5m BIGINT NOT NULL DEFAULT 0,
            cache_write_1h BIGINT NOT NULL DEFAULT 0,
            cache_read BIGINT NOT NULL DEFAULT 0,
            latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            ttft_ms DOUBLE PRECISION,
            failovers INTEGER NOT NULL DEFAULT 0,
            queue_wait_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION,
            instance TEXT NOT NULL DEFAULT ''
        )""",
        f"CREATE INDEX {TABLE}_ts ON {TABLE} (ts)",
    ],
]
_COPY = f"COPY {TABLE} ({', '.join(COLUMNS)}, instance) FROM STDIN"


class TeamExtraMissing(Exception):
    """psycopg is not installed."""


def load_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError:
        raise TeamExtraMissing(
            "PostgreSQL analytics need psycopg: pip install 'dario[team]' (or drop --analytics / DARIO_ANALYTICS_URL)"
        ) from None
    return psycopg


def default_instance() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


class PostgresWriter:
    def __init__(self, conn: Any, instance: str) -> None:
        self.conn = conn
        self.instance = instance

    def write(self, values: list[tuple[Any, ...]]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(_COPY) as copy:
            for v in values:
                copy.write_row((*v, self.instance))

    def prune(self, before: float) -> int:
        with self.conn.transaction():
            cur = self.conn.execute(f"DELETE FROM {TABLE} WHERE ts < %s", (before,))
        return int(cur.rowcount)

    def close(self) -> None:
        self.conn.close()


class PostgresUsage:
    kind = "postgresql"
    first_retry_s: float | None = FIRST_RETRY_S

    def __init__(self, url: str, *, instance: str | None = None) -> None:
        self.psycopg = load_psycopg()
        self._url = url
        self._secrets = dburl.passwords(url)
        self.where = dburl.shown(url)
        self.instance = instance or default_instance()
        self.errors: tuple[type[BaseException], ...] = (self.psycopg.Error, OSError)

    def _connect(self) -> Any:
        return self.psycopg.connect(
            self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="dariod",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", tcp_user_timeout=TCP_USER_TIMEOUT_MS,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )

    def connect(self) -> PostgresWriter:
        conn = self._connect()
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return PostgresWriter(conn, self.instance)

    def read(self, *, since: float, now: float, bucket: int, burn_since: float, recent_rows: int) -> UsageRows | None:
        """The Usage view's rows on one snapshot (a read-only repeatable-read transaction)."""
        conn = self._connect()
        try:
            conn.read_only = True
            conn.isolation_level = self.psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                return read_usage(
                    lambda sql, args: conn.execute(sql, args).fetchall(), DIALECT, since=since, now=now,
                    bucket=bucket, burn_since=burn_since, recent_rows=recent_rows,
                )
        except self.psycopg.errors.UndefinedTable:
            return None  # no instance has migrated the database yet: just empty
        finally:
            conn.close()

    def describe_error(self, exc: BaseException) -> str:
        """What went wrong and what to do, with the URL's password hidden."""
        text = redact(" ".join((str(exc) or type(exc).__name__).split()), self._secrets)
        low = text.lower()
        if "password" in low or "authentication" in low:
            fix = "check the user and password (in the URL, PGPASSFILE or PGPASSWORD)"
        elif "newer" in low:
            fix = "upgrade this dariod to the version the other instances run"
        elif "does not exist" in low and "database" in low:
            fix = "create the database (createdb), or fix its name in the URL"
        else:
            fix = "dariod retries on its own; check that PostgreSQL is up and reachable"
        return (
            f"usage analytics database {self.where} is unusable ({text}): {fix}. "
            "Requests are still served; rows wait in memory."
        )


def migrate(conn: Any) -> int:
    """Bring the database to the newest schema; returns the version. Safe to run from several
    instances at once: the advisory lock serialises them and the later ones find nothing to do."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS dario_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM dario_schema").fetchone()
        version = int(row[0] or 0)
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"its schema is version {version}, newer than this dariod knows ({len(MIGRATIONS)})"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("DELETE FROM dario_schema")
            conn.execute("INSERT INTO dario_schema (version) VALUES (%s)", (number,))
        return max(version, len(MIGRATIONS))
