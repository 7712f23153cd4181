"""PostgreSQL usage writes: COPY against executemany, per batch size (a throwaway PostgreSQL).

Run alone: ``python -m tests.bench.bench_pgwrite [--quick]`` prints JSON: for each batch size, the
median milliseconds per batch and rows per second of both ways (one transaction per batch, as the
analytics writer does). The backend uses COPY; this is why.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import orjson

from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable
from dario.daemon.recording.usage_postgres import TABLE, PostgresUsage, PostgresWriter
from dario.daemon.recording.usage_sql import COLUMNS
from tests.pgserver import PgServer, skip_reason

_INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}, instance) VALUES ({', '.join(['%s'] * (len(COLUMNS) + 1))})"


def values(n: int) -> list[tuple[Any, ...]]:
    store = AnalyticsStore(PostgresUsage("postgresql://unused@127.0.0.1:1/x"), prices=PriceTable())
    rec = UsageRecord(ts=time.time(), client="claude-cli", account="work", model="claude-sonnet-4-5",
                      dialect="anthropic", endpoint="messages", streaming=True, status=200, error_type=None,
                      input_tokens=1200, output_tokens=300, cache_read=40_000, latency_ms=812.5, ttft_ms=301.0)
    return [store._row_values(rec)] * n


def executemany(writer: PostgresWriter, rows: list[tuple[Any, ...]]) -> None:
    with writer.conn.transaction(), writer.conn.cursor() as cur:
        cur.executemany(_INSERT, [(*v, writer.instance) for v in rows])


def main() -> None:
    reason = skip_reason()
    if reason:
        sys.exit(f"bench_pgwrite: {reason}")
    quick = "--quick" in sys.argv
    runs = 3 if quick else 7
    server = PgServer()
    try:
        server.start()
        writer = PostgresUsage(server.url, instance="bench/1").connect()
        out: dict[str, Any] = {}
        for size in (10, 100, 1000, 10_000):
            rows = values(size)
            for name, write in (("copy", writer.write), ("executemany", lambda r: executemany(writer, r))):
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    write(rows)
                    times.append(time.perf_counter() - t0)
                ms = statistics.median(times) * 1000
                out[f"{name}_{size}"] = {"ms_per_batch": round(ms, 3), "rows_per_s": round(size / ms * 1000)}
        writer.close()
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    finally:
        server.close()


if __name__ == "__main__":
    main()
