"""The PostgreSQL usage backend against a real, throwaway PostgreSQL (tests/pgserver.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from dario.daemon import dburl
from dario.daemon.recording import analytics
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable
from dario.daemon.recording.usage_postgres import MIGRATIONS, PostgresUsage
from tests.pgserver import PASSWORD, PgServer, pg_server  # noqa: F401 (fixture)
from tests.unit.test_analytics import NOW, rec

_db_numbers = itertools.count(1)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:  # noqa: F811
    """A fresh, empty database for one test."""
    import psycopg

    name = f"t{next(_db_numbers)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.url.rsplit("/", 1)[0] + "/" + name


def pg_store(url: str, *, instance: str = "host-a/1", **kw: Any) -> AnalyticsStore:
    kw.setdefault("flush_interval", 3600.0)
    kw.setdefault("prices", PriceTable())
    return AnalyticsStore(PostgresUsage(url, instance=instance), **kw)


def persist(store: AnalyticsStore, records: list[UsageRecord]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert store.problem is None, store.problem
            for r in records:
                store.record(r)
            assert await store.flush() == len(records)
            nursery.cancel_scope.cancel()

    trio.run(main)


def scalar(url: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]


def varied_records() -> list[UsageRecord]:
    """Rows that exercise every figure: errors, NULL keys, unpriced models, cache, streams, windows."""
    out = [
        rec(input_tokens=100, output_tokens=10, client="claude-cli", latency_ms=120.5, ttft_ms=40.0),
        rec(input_tokens=200, output_tokens=20, cache_write_5m=5, cache_write_1h=7, cache_read=1000, streaming=True,
            latency_ms=300.0, ttft_ms=90.25),
        rec(status=429, error_type="rate_limit_error", latency_ms=2.0),
        rec(status=500, error_type=None, account="home"),
        rec(account="home", model="claude-haiku-4-5", input_tokens=50, output_tokens=5, client="curl",
            cache_read=400),
        rec(account=None, model=None, status=404, error_type="not_found_error", dialect="openai", endpoint="chat"),
        rec(model="made-up-model", input_tokens=10, output_tokens=1, cache_read=5),
        rec(endpoint="count_tokens", input_tokens=999),
        rec(ts=NOW - 5 * 3600, account="Zeta", input_tokens=7, output_tokens=3, client="Émile"),
        rec(ts=NOW - 3 * 86400, account="zeta", input_tokens=70, output_tokens=30, failovers=2, queue_wait_ms=12.5),
    ]
    out += [rec(ts=NOW - 60 * i, input_tokens=1000 + i, cache_write_5m=500, output_tokens=300, latency_ms=float(i))
            for i in range(1, 20)]
    return out


def test_queries_equal_sqlites_for_the_same_rows(tmp_path: Path, pg_url: str) -> None:
    records = varied_records()
    sqlite_store = AnalyticsStore(tmp_path / "usage.sqlite3", prices=PriceTable(), flush_interval=3600.0)
    postgres_store = pg_store(pg_url)
    persist(sqlite_store, records)
    persist(postgres_store, records)
    pool: dict[str, dict[str, dict[str, Any]]] = {
        "work": {"tokens": {"limit": 100_000, "remaining": 36_000, "reset": NOW + 3600},
                 "requests": {"limit": 50, "remaining": 5, "reset": NOW + 30}},
        "idle": {"output-tokens": {"limit": 8000, "remaining": 8000, "reset": NOW + 60}},
    }
    for window in ("1h", "24h", "7d"):
        lite = sqlite_store.query(window, now=NOW, pool_windows=pool)
        team = postgres_store.query(window, now=NOW, pool_windows=pool)
        assert team["problem"] is None and team["totals"]["requests"] > 0
        assert orjson.loads(orjson.dumps(team)) == orjson.loads(orjson.dumps(lite)), window
    assert postgres_store.query("7d", now=NOW)["totals"]["requests"] == len(records)


def test_migration_from_empty_is_versioned_and_safe_when_instances_start_together(pg_url: str) -> None:
    script = (
        "import sys, psycopg\n"
        "from dario.daemon.recording.usage_postgres import migrate\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c: print(migrate(c))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(3)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert [out.strip() for out, _ in results] == [str(len(MIGRATIONS))] * 3
    assert scalar(pg_url, "SELECT COUNT(*) FROM dario_schema") == 1
    assert scalar(pg_url, "SELECT version FROM dario_schema") == len(MIGRATIONS)
    # Re-running (a restart) changes nothing and keeps the rows.
    persist(pg_store(pg_url), [rec()])
    persist(pg_store(pg_url), [rec()])
    assert scalar(pg_url, "SELECT COUNT(*) FROM dario_usage") == 2
    assert scalar(pg_url, "SELECT COUNT(*) FROM dario_schema") == 1


def test_a_newer_schema_is_refused_with_a_problem_not_a_crash(pg_url: str) -> None:
    persist(pg_store(pg_url), [rec()])
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE dario_schema SET version = 99")
    store = pg_store(pg_url)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.record(rec())
            assert await store.flush() == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.problem is not None and "newer" in store.problem and "upgrade" in store.problem


def test_batches_from_two_instances_and_the_team_view(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analytics, "MAX_BATCH", 7)  # 25 rows go in 4 transactions
    a, b = pg_store(pg_url, instance="host-a/1"), pg_store(pg_url, instance="host-b/2")
    persist(a, [rec(ts=NOW - i, output_tokens=1) for i in range(25)])
    persist(b, [rec(ts=NOW - i, account="home", output_tokens=2) for i in range(5)])
    assert a.rows_written == 25 and a.pending == 0 and a.dropped == 0
    for store in (a, b):
        u = store.query("1h", now=NOW)
        assert u["totals"]["requests"] == 30 and u["totals"]["output_tokens"] == 35
        assert u["instances"] == 2
        assert {g["key"]: g["requests"] for g in u["by_account"]} == {"work": 25, "home": 5}
    assert scalar(pg_url, "SELECT COUNT(DISTINCT instance) FROM dario_usage") == 2


def test_retention_is_the_same_rule_and_any_instance_may_prune(pg_url: str) -> None:
    a = pg_store(pg_url, retention_days=1.0)
    persist(a, [rec(ts=NOW - 2 * 86400), rec(ts=NOW - 3 * 86400), rec(ts=NOW - 3600), rec(ts=NOW - 60)])
    b = pg_store(pg_url, instance="host-b/2", retention_days=1.0)

    async def prune_twice() -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            first = await a.prune(now=NOW)
            second = await b.prune(now=NOW)  # idempotent: nothing left to delete
            nursery.cancel_scope.cancel()
            return first, second

    assert trio.run(prune_twice) == (2, 0)
    assert [r["ts"] for r in a.query("7d", now=NOW)["recent"]] == [NOW - 60, NOW - 3600]


def test_unreachable_database_keeps_rows_and_never_shows_the_password(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(analytics, "MAX_BUFFER", 10)
    wrong = pg_server.url.replace(PASSWORD, PASSWORD + "-wrong")
    closed = f"postgresql://dario:{PASSWORD}@127.0.0.1:1/postgres"
    for url in (wrong, closed):
        store = pg_store(url)

        async def main(store: AnalyticsStore = store) -> None:
            with trio.fail_after(30):
                await drive(store)

        async def drive(store: AnalyticsStore) -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)  # must not raise
                for i in range(12):
                    store.record(rec(ts=NOW - i))
                assert await store.flush() == 0
                nursery.cancel_scope.cancel()

        trio.run(main)
        assert store.pending == 10 and store.dropped == 2
        u = store.query("1h", now=NOW)
        health = store.health()
        shown = orjson.dumps({"usage": u, "health": health, "problem": store.problem}).decode()
        assert store.problem and u["problem"] and u["totals"]["requests"] == 0
        assert PASSWORD not in shown and "dario:***@127.0.0.1" in shown
        assert health["store"] == "postgresql" and health["ok"] is False and health["dropped"] == 2


def test_url_password_is_hidden_in_every_spelling() -> None:
    url = "postgresql://me:p%40ss@db.example:5432/usage?sslmode=require&password=other"
    assert dburl.shown(url) == "postgresql://me:***@db.example:5432/usage?sslmode=require&password=***"
    assert set(dburl.passwords(url)) >= {"p%40ss", "p@ss", "other"}
    assert dburl.shown("postgres://me@db/usage") == "postgres://me@db/usage"
    assert dburl.shown("postgresql:///usage?host=/run/postgresql") == "postgresql:///usage?host=/run/postgresql"


def test_password_may_come_from_pgpassfile(pg_server: PgServer, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:*:dario:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = f"postgresql://dario@127.0.0.1:{pg_server.port}/postgres"
    store = pg_store(url, instance="passfile/1")
    persist(store, [rec(ts=NOW - 1, client="pgpass-client")])
    assert store.health()["where"] == url  # nothing to hide
    assert {g["key"] for g in store.query("1h", now=NOW)["by_client"]} >= {"pgpass-client"}


def test_settings_take_a_postgres_url_and_refuse_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    from dario.daemon.settings import SettingsError, from_args

    url = f"postgresql://team:{PASSWORD}@db.example/usage"
    assert from_args([]).analytics_url is None
    assert from_args(["--analytics", url]).analytics_url == url
    assert PASSWORD not in repr(from_args(["--analytics", url]))
    monkeypatch.setenv("DARIO_ANALYTICS_URL", "postgres://team@db.example/usage")
    settings = from_args([])
    assert settings.analytics_url == "postgres://team@db.example/usage" and settings.analytics
    assert from_args(["--no-analytics"]).analytics is False
    with pytest.raises(SettingsError) as refused:
        from_args(["--analytics", f"mysql://team:{PASSWORD}@db.example/usage"])
    assert "postgresql://" in str(refused.value) and PASSWORD not in str(refused.value)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from dario.daemon.settings import SettingsError, from_args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(SettingsError, match=r"pip install 'dario\[team\]'"):
        from_args(["--analytics", "postgresql://team@db.example/usage"])


def test_sqlite_file_from_before_versioning_upgrades_in_place(tmp_path: Path) -> None:
    import sqlite3

    from dario.daemon.recording.usage_sqlite import MIGRATIONS as SQLITE_MIGRATIONS

    path = tmp_path / "usage.sqlite3"
    with sqlite3.connect(path) as conn:  # what dario wrote before the schema had a version
        conn.executescript(SQLITE_MIGRATIONS[0])
        conn.execute("INSERT INTO usage (ts, client, dialect, endpoint, streaming, status) "
                     "VALUES (?, 'old', 'anthropic', 'messages', 0, 200)", (NOW - 5,))
    conn.close()
    store = AnalyticsStore(path, prices=PriceTable(), flush_interval=3600.0)
    persist(store, [rec()])
    assert store.query("1h", now=NOW)["totals"]["requests"] == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    conn.close()


def test_stored_columns_are_the_record_fields_then_the_cost() -> None:
    import dataclasses

    from dario.daemon.recording.usage_sql import COLUMNS

    assert list(COLUMNS) == [f.name for f in dataclasses.fields(UsageRecord) if f.metadata.get("column", True)] \
        + ["cost_usd"]
