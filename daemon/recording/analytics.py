"""Usage analytics: every proxied request as one row; burn rate and time-to-exhaustion.

The request path only appends to an in-memory buffer (`record`); a trio task (`run`)
writes the buffer in batches from a worker thread. A broken or unreachable database never
affects the proxy: the store reports it in `problem` and keeps a bounded buffer meanwhile
(MAX_BUFFER rows; the oldest beyond it are dropped and counted in `dropped`).

Where rows go is a `UsageBackend`: one SQLite file (usage_sqlite, the default) or a team's
PostgreSQL (usage_postgres). The backends hold the SQL and its migrations; this module holds
what does not depend on them: buffering, batching, retries, and the shape of the Usage view.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from dario.daemon.recording.prices import PriceTable
from dario.daemon.recording.usage_sql import COLUMNS, GROUPS, UsageRows
from dario.daemon.recording.usage_sqlite import SqliteUsage
from dario.daemon.redact import redact

WINDOWS: dict[str, tuple[float, int]] = {  # window -> (span seconds, series bucket seconds)
    "1h": (3600.0, 60),
    "24h": (86400.0, 900),
    "7d": (7 * 86400.0, 3600),
}
BURN_SPAN_S = 900.0  # burn rate is always measured over the last 15 minutes
RECENT_ROWS = 50
MAX_BUFFER = 100_000  # rows held in memory while the database is unavailable
PRUNE_INTERVAL_S = 3600.0
MAX_BATCH = 10_000  # rows per write transaction (a backlog after an outage goes in several)
SHUTDOWN_FLUSH_S = 5.0
NONE_KEY = "(none)"  # group key for rows without an account/model (e.g. refused before routing)
WINDOW_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


@dataclass(slots=True)
class UsageRecord:
    ts: float
    client: str
    account: str | None
    model: str | None
    dialect: str  # "anthropic" | "openai"
    endpoint: str  # "messages" | "count_tokens" | "chat"
    streaming: bool
    status: int
    error_type: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    failovers: int = 0
    queue_wait_ms: float = 0.0
    # The serving account's kind, for its prices (prices.json per-kind sections). Read when the
    # cost is computed, not stored as a column: `metadata={"column": False}`.
    account_kind: str | None = field(default=None, metadata={"column": False})


_COLUMNS = list(COLUMNS)  # the record's fields, then its cost (a unit test holds them equal)


class UsageWriter(Protocol):
    """One open connection of a backend; every method blocks (called from a worker thread)."""

    def write(self, values: list[tuple[Any, ...]]) -> None: ...  # one transaction
    def prune(self, before: float) -> int: ...
    def close(self) -> None: ...


class UsageBackend(Protocol):
    """Where usage rows are kept. `connect` and `read` block (called from a worker thread)."""

    kind: str  # "sqlite" | "postgresql"
    where: str  # the file, or the URL with its password hidden
    first_retry_s: float | None  # first reconnect delay, doubling to reopen_interval; None: reopen_interval
    errors: tuple[type[BaseException], ...]  # what a read may raise for an unusable database

    def connect(self) -> UsageWriter: ...  # opens and migrates
    def read(self, *, since: float, now: float, bucket: int, burn_since: float,
             recent_rows: int) -> UsageRows | None: ...  # None: nothing recorded yet
    def describe_error(self, exc: BaseException) -> str: ...


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class AnalyticsStore:
    """Usage rows: buffered from the request path, written in batches, read as the Usage view.

    `backend` is where they go; a `Path` means that SQLite file (the single-instance default).
    """

    def __init__(
        self,
        backend: UsageBackend | Path,
        *,
        prices: PriceTable,
        retention_days: float = 30.0,
        flush_interval: float = 0.5,
        reopen_interval: float = 30.0,
    ) -> None:
        self.backend: UsageBackend = SqliteUsage(backend) if isinstance(backend, Path) else backend
        self.path: Path | None = backend if isinstance(backend, Path) else None  # the SQLite file, if one
        self.prices = prices
        self.retention_days = retention_days
        self.flush_interval = flush_interval
        self.reopen_interval = reopen_interval
        self.problem: str | None = None
        self.dropped = 0  # rows lost because the buffer was full while the database was unusable
        self.rows_written = 0
        self._buf: collections.deque[UsageRecord] = collections.deque()
        self._conn: UsageWriter | None = None
        self._lock = trio.Lock()  # one writer at a time: periodic flush vs. explicit flush()
        self._last_open_attempt = -math.inf
        self._retry_delay = self.backend.first_retry_s
        self._last_prune = -math.inf
        self._flush_waiters: list[trio.Event] = []

    # ---- request path -------------------------------------------------------------

    def record(self, rec: UsageRecord) -> None:
        try:
            if len(self._buf) >= MAX_BUFFER:
                self._buf.popleft()  # keep the newest: they matter most for burn and forecast
                self.dropped += 1
            self._buf.append(rec)
        except Exception:  # pragma: no cover - a deque append cannot realistically fail
            pass

    @property
    def pending(self) -> int:
        return len(self._buf)

    def health(self) -> dict[str, Any]:
        """What /health and `dario-ctl status` show: where rows go, and whether they get there."""
        return {
            "store": self.backend.kind,
            "where": self.backend.where,
            "ok": self.problem is None,
            "pending": len(self._buf),
            "written": self.rows_written,
            "dropped": self.dropped,
            "problem": self.problem,
        }

    # ---- writer -------------------------------------------------------------------

    def _row_values(self, r: UsageRecord) -> tuple[Any, ...]:
        tokens = (
            int(r.input_tokens), int(r.output_tokens), int(r.cache_write_5m), int(r.cache_write_1h),
            int(r.cache_read),
        )  # fmt: skip
        if r.endpoint == "count_tokens":
            # Counting tokens consumes none; the count is not usage.
            tokens = (0, 0, 0, 0, 0)
        model = None if r.model is None else str(r.model)
        # Nothing consumed costs nothing, whatever the model (a refusal of an unpriced model is still free).
        cost = 0.0 if not any(tokens) else self.prices.cost(model, *tokens, kind=r.account_kind) if model else None
        return (
            float(r.ts), str(r.client), None if r.account is None else str(r.account), model, str(r.dialect),
            str(r.endpoint), int(bool(r.streaming)), int(r.status),
            None if r.error_type is None else redact(str(r.error_type)), *tokens, float(r.latency_ms),
            None if r.ttft_ms is None else float(r.ttft_ms), int(r.failovers), float(r.queue_wait_ms), cost,
        )  # fmt: skip

    def _write_sync(self, conn: UsageWriter, rows: list[UsageRecord]) -> int:
        """Insert rows in one transaction; returns how many were malformed and skipped."""
        values = []
        bad = 0
        for r in rows:
            try:
                values.append(self._row_values(r))
            except (TypeError, ValueError, AttributeError):
                bad += 1  # one malformed record must not block the batch forever
        conn.write(values)
        return bad

    async def _ensure_open(self, *, force: bool = False) -> UsageWriter | None:
        if self._conn is not None:
            return self._conn
        now = trio.current_time()
        delay = self.reopen_interval if self._retry_delay is None else min(self._retry_delay, self.reopen_interval)
        if not force and now - self._last_open_attempt < delay:
            return None
        self._last_open_attempt = now
        try:
            self._conn = await trio.to_thread.run_sync(self.backend.connect)
        except Exception as exc:
            self.problem = self.backend.describe_error(exc)
            if self._retry_delay is not None:
                self._retry_delay = min(self._retry_delay * 2, self.reopen_interval)
            return None
        self.problem = None
        self._retry_delay = self.backend.first_retry_s
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await trio.to_thread.run_sync(conn.close)
            except trio.Cancelled:
                # Shutdown deadline hit before the thread started: close here rather than leak it.
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            except Exception:
                pass

    async def flush(self, *, force_open: bool = False) -> int:
        """Write buffered rows now; returns how many were written (0 if the database is unusable).

        The daemon may call it before a query so the newest requests show up at once.
        """
        async with self._lock:
            conn = await self._ensure_open(force=force_open)
            if conn is None or not self._buf:
                return 0
            written = 0
            while self._buf:  # in batches, oldest first, each its own transaction
                rows = [self._buf.popleft() for _ in range(min(MAX_BATCH, len(self._buf)))]
                try:
                    bad = await trio.to_thread.run_sync(self._write_sync, conn, rows)
                except BaseException as exc:
                    # Put them back (oldest first) within the bound; newer rows may have arrived meanwhile.
                    # Also on Cancelled: that can only come before the worker thread started.
                    room = MAX_BUFFER - len(self._buf)
                    keep = rows[-room:] if room > 0 else []
                    self.dropped += len(rows) - len(keep)
                    self._buf.extendleft(reversed(keep))
                    if not isinstance(exc, Exception):
                        raise
                    self.problem = self.backend.describe_error(exc)
                    await self._close()  # reopened after the retry delay
                    return written
                self.dropped += bad
                self.rows_written += len(rows) - bad
                written += len(rows) - bad
            self.problem = None
            waiters, self._flush_waiters = self._flush_waiters, []
            for event in waiters:
                event.set()
            return written

    async def wait_flushed(self) -> None:
        """Return after the next flush that writes rows (for callers that need to read their writes)."""
        event = trio.Event()
        self._flush_waiters.append(event)
        await event.wait()

    async def prune(self, *, now: float | None = None) -> int:
        """Delete rows older than the retention period; returns how many."""
        async with self._lock:
            conn = await self._ensure_open()
            if conn is None:
                return 0
            try:
                before = (time.time() if now is None else now) - self.retention_days * 86400.0
                return await trio.to_thread.run_sync(conn.prune, before)
            except Exception as exc:
                self.problem = self.backend.describe_error(exc)
                await self._close()
                return 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._ensure_open(force=True)
            task_status.started()
            while True:
                await trio.sleep(self.flush_interval)
                await self.flush()
                if trio.current_time() - self._last_prune >= PRUNE_INTERVAL_S:
                    self._last_prune = trio.current_time()
                    await self.prune()
        finally:
            # Shielded so cancellation cannot lose the tail; bounded so shutdown cannot hang
            # (the worker thread itself is bounded by SQLite's busy timeout, PostgreSQL's timeouts).
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_FLUSH_S):
                try:
                    await self.flush(force_open=True)
                finally:
                    await self._close()

    # ---- reader -------------------------------------------------------------------

    def query(
        self,
        window: str,
        *,
        now: float | None = None,
        pool_windows: dict[str, dict[str, dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")
        span, bucket = WINDOWS[window]
        now = time.time() if now is None else now
        since = now - span
        out: dict[str, Any] = {
            "window": window,
            "since": since,
            "until": now,
            "problem": self.problem,
            "totals": _counters(None),
            "by_account": [],
            "by_model": [],
            "by_client": [],
            "series": {"bucket_s": bucket, "points": []},
            "burn": {},
            "forecast": {},
            "recent": [],
            "instances": 0,  # dariod instances that wrote rows in the window (several in team mode)
        }
        burn_rows: list[tuple[Any, ...]] = []
        try:
            rows = self.backend.read(since=since, now=now, bucket=bucket, burn_since=now - BURN_SPAN_S,
                                     recent_rows=RECENT_ROWS)
            if rows is not None:
                self._shape(out, rows)
                burn_rows = rows.burn
        except self.backend.errors as exc:
            out["problem"] = self.problem or self.backend.describe_error(exc)
        out["burn"] = _burn(burn_rows, pool_windows)
        out["forecast"] = _forecast(out["burn"], pool_windows or {}, now)
        return out

    def _shape(self, out: dict[str, Any], rows: UsageRows) -> None:
        out["totals"] = _counters(rows.totals)
        out["totals"]["cache_saved_usd"] = self._cache_saved(rows.cache_reads).get(None, 0.0)
        out["instances"] = rows.instances
        for name, _column in GROUPS:
            g_rows = rows.groups[name]
            groups: dict[str, dict[str, Any]] = {}
            for r in g_rows.sums:
                key = NONE_KEY if r[0] is None else r[0]
                groups[key] = {"key": key, **_counters(r[1:]), "errors_by_type": {}}
            for key, etype, n in g_rows.errors:
                groups[NONE_KEY if key is None else key]["errors_by_type"][etype] = int(n)
            saved = self._cache_saved(g_rows.cache_reads)
            for key, g in groups.items():
                g["cache_saved_usd"] = saved.get(None if key == NONE_KEY else key, 0.0)
            # Latency of failed requests says little (a refusal is instant); percentiles use successes.
            lat: dict[str, list[float]] = collections.defaultdict(list)
            ttft: dict[str, list[float]] = collections.defaultdict(list)
            for key, latency, first in g_rows.latencies:
                k = NONE_KEY if key is None else key
                lat[k].append(latency)
                if first is not None:
                    ttft[k].append(first)
            for key, g in groups.items():
                lv, tv = sorted(lat.get(key, ())), sorted(ttft.get(key, ()))
                g["p50_latency_ms"] = _percentile(lv, 0.50)
                g["p95_latency_ms"] = _percentile(lv, 0.95)
                g["p50_ttft_ms"] = _percentile(tv, 0.50)
                g["p95_ttft_ms"] = _percentile(tv, 0.95)
            out[name] = sorted(groups.values(), key=lambda g: (-g["requests"], g["key"]))

        # Ordered here, not by the database: NULLs first, then by code point, whatever the server's collation.
        series = sorted(rows.series, key=lambda r: (float(r[0]), r[1] is not None, r[1] or "", r[2] is not None,
                                                    r[2] or ""))
        out["series"]["points"] = [
            {
                "t": float(t),
                "account": NONE_KEY if account is None else account,
                "model": NONE_KEY if model is None else model,
                "input_tokens": int(i),
                "output_tokens": int(o),
                "requests": int(n),
                "cost_usd": None if c is None else round(float(c), 6),
            }
            for t, account, model, i, o, n, c in series
        ]
        recent = []
        for r in rows.recent:
            d = dict(zip(_COLUMNS, r, strict=True))
            d["streaming"] = bool(d["streaming"])
            recent.append(d)
        out["recent"] = recent

    def _cache_saved(self, rows: Any) -> dict[Any, float | None]:
        """Money the cache reads saved, per group: each read token at the model's input rate less
        its cache-read rate (Anthropic's prompt-caching pricing). Today's price table prices every
        row, like a cost re-estimate; a model without a price makes its group's saving unknown."""
        saved: dict[Any, float | None] = {}
        for key, model, reads in rows:
            rates = self.prices.rates(str(model)) if model else None
            so_far = saved.get(key, 0.0)
            if rates is None or so_far is None:
                saved[key] = None
            else:
                per_token = (rates["input"] - rates["cache_read"]) / 1_000_000
                saved[key] = round(so_far + float(reads) * per_token, 6)
        return saved


def _cache_read_share(inp: float, cache_write: float, cache_read: float) -> float | None:
    """Share of the prompt served from the cache: cache reads over all input (uncached, written, read)."""
    prompt = inp + cache_write + cache_read
    return None if prompt <= 0 else round(cache_read / prompt, 6)


def _counters(row: tuple[Any, ...] | None) -> dict[str, Any]:
    if row is None:
        row = (0, 0, 0, 0, 0, 0, 0.0)
    requests, errors, inp, outp, cw, cr, cost = row
    return {
        "requests": int(requests),
        "errors": int(errors),
        "input_tokens": int(inp),
        "output_tokens": int(outp),
        "cache_write_tokens": int(cw),
        "cache_read_tokens": int(cr),
        "cost_usd": None if cost is None else round(float(cost), 6),
        "cache_read_share": _cache_read_share(float(inp), float(cw), float(cr)),
        "cache_saved_usd": 0.0,  # filled in by the query from per-model cache reads
    }


def _burn(
    rows: list[tuple[Any, ...]], pool_windows: dict[str, dict[str, dict[str, Any]]] | None
) -> dict[str, dict[str, float]]:
    """Per-minute rates over the last 15 minutes, per account.

    input_tpm counts cache writes: Anthropic's input-token limit counts them, not cache reads.
    """
    minutes = BURN_SPAN_S / 60.0
    burn = {
        alias: {"input_tpm": 0.0, "output_tpm": 0.0, "tokens_tpm": 0.0, "requests_pm": 0.0}
        for alias in (pool_windows or {})
    }
    for alias, raw_inp, raw_outp, raw_n in rows:
        inp, outp, n = float(raw_inp), float(raw_outp), float(raw_n)
        burn[alias] = {
            "input_tpm": inp / minutes,
            "output_tpm": outp / minutes,
            "tokens_tpm": (inp + outp) / minutes,
            "requests_pm": n / minutes,
        }
    return burn


_BURN_KEY = {
    "requests": "requests_pm",
    "tokens": "tokens_tpm",
    "input-tokens": "input_tpm",
    "output-tokens": "output_tpm",
}


def _forecast(
    burn: dict[str, dict[str, float]], pool_windows: dict[str, dict[str, dict[str, Any]]], now: float
) -> dict[str, list[dict[str, Any]]]:
    forecast: dict[str, list[dict[str, Any]]] = {}
    for alias, windows in pool_windows.items():
        rates = burn.get(alias, {})
        entries = []
        names = [w for w in WINDOW_KINDS if w in windows] + sorted(set(windows) - set(WINDOW_KINDS))
        for name in names:
            w = windows[name] or {}
            remaining = w.get("remaining")
            if remaining is None or name not in _BURN_KEY:
                continue  # unknown headroom, or a window we cannot match to a burn rate
            per_min = float(rates.get(_BURN_KEY[name], 0.0))
            reset = w.get("reset")
            runs_out_in_s = max(0.0, remaining / per_min * 60.0) if per_min > 0 else None
            runs_out_at = None if runs_out_in_s is None else now + runs_out_in_s
            if runs_out_at is None:
                before_reset = False
            elif reset is None:
                before_reset = True  # no reset known: it runs out, full stop
            else:
                before_reset = runs_out_at < reset
            entries.append(
                {
                    "window": name,
                    "remaining": remaining,
                    "limit": w.get("limit"),
                    "reset": reset,
                    "burn_per_min": per_min,
                    "runs_out_at": runs_out_at,
                    "runs_out_in_s": runs_out_in_s,
                    "before_reset": before_reset,
                    # "declared" or "estimated" for a limit dario keeps itself (no rate-limit headers).
                    "source": w.get("source", "headers"),
                }
            )
        forecast[alias] = entries
    return forecast
