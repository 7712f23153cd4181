"""The reads behind the Usage view, written once for both backends (SQLite, PostgreSQL).

Each backend names its dialect (placeholder, table, how to sum, how to bucket time) and runs these
queries on one snapshot; `analytics.AnalyticsStore` shapes the rows into the Usage view. Figures
must not depend on the backend: sums of no rows are 0, NULL keys are grouped like any other key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The stored columns, in order (the same in both backends; PostgreSQL adds the writing instance).
COLUMNS = (
    "ts", "client", "account", "model", "dialect", "endpoint", "streaming", "status", "error_type",
    "input_tokens", "output_tokens", "cache_write_5m", "cache_write_1h", "cache_read", "latency_ms",
    "ttft_ms", "failovers", "queue_wait_ms", "cost_usd",
)  # fmt: skip
GROUPS = (("by_account", "account"), ("by_model", "model"), ("by_client", "client"))

IS_ERROR = "(status >= 400 OR error_type IS NOT NULL)"

Row = tuple[Any, ...]
Execute = Callable[[str, Sequence[Any]], Iterable[Row]]


@dataclass(frozen=True, slots=True)
class SqlDialect:
    table: str
    param: str  # "?" (sqlite3) or "%s" (psycopg)
    total: str  # a sum that is 0 over no rows, with {} for the expression
    bucket_start: str  # the start of ts's series bucket, with {p} for the bucket-size placeholder
    instances: str | None = None  # how many writers a set of rows has, if rows say which instance wrote them

    def sum(self, expr: str) -> str:
        return self.total.format(expr)


@dataclass(slots=True)
class GroupRows:
    sums: list[Row]  # key, requests, errors, input, output, cache writes, cache reads, cost
    errors: list[Row]  # key, error type, count
    cache_reads: list[Row]  # key, model, cache-read tokens
    latencies: list[Row]  # key, latency_ms, ttft_ms (successful requests only)


@dataclass(slots=True)
class UsageRows:
    totals: Row
    cache_reads: list[Row]  # None, model, cache-read tokens
    groups: dict[str, GroupRows] = field(default_factory=dict)
    series: list[Row] = field(default_factory=list)  # t, account, model, input, output, requests, cost
    recent: list[Row] = field(default_factory=list)  # COLUMNS
    burn: list[Row] = field(default_factory=list)  # account, input (with cache writes), output, requests
    instances: int = 0  # how many dariod instances wrote rows in the window


def cost_sum(d: SqlDialect) -> str:
    # A sum of costs is only known when every row's cost is: a model without a price makes the group's
    # cost unknown (null, shown as "—"), never a silent $0.
    return f"CASE WHEN COUNT(cost_usd) < COUNT(*) THEN NULL ELSE {d.sum('cost_usd')} END"


def sums(d: SqlDialect) -> str:
    return (
        f"COUNT(*), {d.sum(f'CASE WHEN {IS_ERROR} THEN 1 ELSE 0 END')}, {d.sum('input_tokens')}, "
        f"{d.sum('output_tokens')}, {d.sum('cache_write_5m + cache_write_1h')}, {d.sum('cache_read')}, {cost_sum(d)}"
    )


def read_usage(
    execute: Execute, d: SqlDialect, *, since: float, now: float, bucket: int, burn_since: float, recent_rows: int,
) -> UsageRows:
    """Run every read of the Usage view; `execute` runs one statement inside the caller's snapshot."""
    p, t = d.param, d.table
    where = f"ts >= {p} AND ts <= {p}"
    args = (since, now)
    all_sums = sums(d)
    totals = next(iter(execute(f"SELECT {all_sums} FROM {t} WHERE {where}", args)))
    reads = f"SELECT NULL, model, {d.sum('cache_read')} FROM {t} WHERE {where} AND cache_read > 0 GROUP BY model"
    rows = UsageRows(totals=totals, cache_reads=list(execute(reads, args)))
    for name, column in GROUPS:
        rows.groups[name] = GroupRows(
            sums=list(execute(f"SELECT {column}, {all_sums} FROM {t} WHERE {where} GROUP BY {column}", args)),
            errors=list(execute(
                f"SELECT {column}, COALESCE(error_type, 'http_' || status), COUNT(*) FROM {t} "
                f"WHERE {where} AND {IS_ERROR} GROUP BY 1, 2", args,
            )),
            cache_reads=list(execute(
                f"SELECT {column}, model, {d.sum('cache_read')} FROM {t} "
                f"WHERE {where} AND cache_read > 0 GROUP BY 1, 2", args,
            )),
            latencies=list(execute(
                f"SELECT {column}, latency_ms, ttft_ms FROM {t} WHERE {where} AND NOT {IS_ERROR}", args,
            )),
        )
    series = (
        f"SELECT {d.bucket_start.format(p=p)} AS t, account, model, {d.sum('input_tokens')}, "
        f"{d.sum('output_tokens')}, COUNT(*), {cost_sum(d)} FROM {t} WHERE {where} GROUP BY 1, account, model"
    )
    rows.series = list(execute(series, (bucket, bucket, *args)))
    recent = f"SELECT {', '.join(COLUMNS)} FROM {t} WHERE ts <= {p} ORDER BY ts DESC, id DESC LIMIT {p}"
    rows.recent = list(execute(recent, (now, recent_rows)))
    burn = (
        f"SELECT account, {d.sum('input_tokens + cache_write_5m + cache_write_1h')}, {d.sum('output_tokens')}, "
        f"COUNT(*) FROM {t} WHERE ts > {p} AND ts <= {p} AND account IS NOT NULL GROUP BY account"
    )
    rows.burn = list(execute(burn, (burn_since, now)))
    if d.instances is not None:
        rows.instances = int(next(iter(execute(f"SELECT {d.instances} FROM {t} WHERE {where}", args)))[0])
    else:
        rows.instances = 1 if int(totals[0]) else 0  # one file, one writer
    return rows
