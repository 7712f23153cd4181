from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from dario.daemon.recording import analytics
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable

NOW = 1_700_000_000.0


def rec(ts: float = NOW - 60, **kw: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "ts": ts,
        "client": "anthropic-python",
        "account": "work",
        "model": "claude-sonnet-4-5-20250929",
        "dialect": "anthropic",
        "endpoint": "messages",
        "streaming": False,
        "status": 200,
        "error_type": None,
    }
    base.update(kw)
    return UsageRecord(**base)


def make_store(tmp_path: Path, **kw: Any) -> AnalyticsStore:
    kw.setdefault("flush_interval", 3600.0)  # tests flush explicitly; the loop must not race them
    return AnalyticsStore(tmp_path / "state" / "usage.sqlite3", prices=PriceTable(), **kw)


def persist(store: AnalyticsStore, records: list[UsageRecord]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for r in records:
                store.record(r)
            assert await store.flush() == len(records)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_totals_groups_and_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(
        store,
        [
            rec(input_tokens=100, output_tokens=10, client="claude-cli"),
            rec(input_tokens=200, output_tokens=20, cache_write_5m=5, cache_write_1h=7, cache_read=1000),
            rec(status=429, error_type="rate_limit_error", input_tokens=0),
            rec(account="home", model="claude-haiku-4-5", input_tokens=50, output_tokens=5, client="curl"),
            rec(account=None, model=None, status=503, error_type=None, client="curl"),
        ],
    )
    u = store.query("24h", now=NOW)
    assert u["window"] == "24h" and u["since"] == NOW - 86400 and u["until"] == NOW
    assert u["problem"] is None
    t = u["totals"]
    assert t["requests"] == 5
    assert t["errors"] == 2
    assert t["input_tokens"] == 350
    assert t["output_tokens"] == 35
    assert t["cache_write_tokens"] == 12
    assert t["cache_read_tokens"] == 1000

    by_account = {g["key"]: g for g in u["by_account"]}
    assert set(by_account) == {"work", "home", analytics.NONE_KEY}
    assert u["by_account"][0]["key"] == "work"  # most requests first
    assert by_account["work"]["requests"] == 3
    assert by_account["work"]["input_tokens"] == 300
    assert by_account["work"]["errors_by_type"] == {"rate_limit_error": 1}
    assert by_account[analytics.NONE_KEY]["errors_by_type"] == {"http_503": 1}
    assert by_account["home"]["errors"] == 0 and by_account["home"]["errors_by_type"] == {}

    by_client = {g["key"]: g["requests"] for g in u["by_client"]}
    assert by_client == {"claude-cli": 1, "anthropic-python": 2, "curl": 2}
    by_model = {g["key"]: g["output_tokens"] for g in u["by_model"]}
    assert by_model == {"claude-sonnet-4-5-20250929": 30, "claude-haiku-4-5": 5, analytics.NONE_KEY: 0}
    orjson.dumps(u)  # the daemon serves it as is


def test_cost_includes_cache_writes_and_reads(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(
        store,
        [
            rec(
                model="claude-sonnet-4-5",
                input_tokens=1000,
                output_tokens=2000,
                cache_write_5m=10_000,
                cache_write_1h=20_000,
                cache_read=100_000,
            ),
            rec(model="claude-opus-4-5-20251101", input_tokens=1_000_000, ts=NOW - 30),
            rec(model="mystery-model", input_tokens=5_000_000, ts=NOW - 10),
        ],
    )
    u = store.query("1h", now=NOW)
    sonnet = (1000 * 3 + 2000 * 15 + 10_000 * 3.75 + 20_000 * 6 + 100_000 * 0.3) / 1e6
    assert sonnet == pytest.approx(0.2205)
    # A model without a price makes any sum that includes it unknown, never a silent $0.
    assert u["totals"]["cost_usd"] is None
    by_model = {g["key"]: g["cost_usd"] for g in u["by_model"]}
    assert by_model["claude-sonnet-4-5"] == pytest.approx(sonnet)
    assert by_model["claude-opus-4-5-20251101"] == pytest.approx(5.0)
    assert by_model["mystery-model"] is None
    recent = u["recent"]
    assert recent[0]["model"] == "mystery-model" and recent[0]["cost_usd"] is None  # unknown, not free
    points = {p["model"]: p["cost_usd"] for p in u["series"]["points"]}
    assert points["mystery-model"] is None and points["claude-sonnet-4-5"] == pytest.approx(sonnet)


def test_default_alias_targets_without_a_price_cost_unknown_not_zero(tmp_path: Path) -> None:
    from dario.daemon.routing.models import DEFAULT_ALIASES

    store = make_store(tmp_path)
    targets = sorted(set(DEFAULT_ALIASES.values()))
    unpriced = [m for m in targets if PriceTable().rates(m) is None]
    persist(store, [rec(model=m, input_tokens=100, output_tokens=10, ts=NOW - 20 - i)
                    for i, m in enumerate(targets)])
    u = store.query("1h", now=NOW)
    for g in u["by_model"]:
        assert (g["cost_usd"] is None) == (g["key"] in unpriced), g
        assert g["cost_usd"] is None or g["cost_usd"] > 0
    assert (u["totals"]["cost_usd"] is None) == bool(unpriced)


def test_a_request_that_used_no_tokens_costs_nothing_even_without_a_price(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(store, [rec(model="claude-mystery-9", status=404, error_type="not_found_error", input_tokens=0,
                        output_tokens=0), rec(model="claude-sonnet-4-5", input_tokens=1000, ts=NOW - 30)])
    u = store.query("1h", now=NOW)
    assert u["totals"]["cost_usd"] == pytest.approx(0.003)
    assert {g["key"]: g["cost_usd"] for g in u["by_model"]}["claude-mystery-9"] == 0.0


def test_percentiles_use_successful_requests(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    records = [rec(ts=NOW - 100 + i * 0.5, latency_ms=float(i), ttft_ms=float(10 * i)) for i in range(1, 101)]
    records.append(rec(status=500, error_type="api_error", latency_ms=99_999.0, ttft_ms=99_999.0))
    records.append(rec(latency_ms=5.0, ttft_ms=None, account="home"))
    persist(store, records)
    g = {x["key"]: x for x in store.query("1h", now=NOW)["by_account"]}
    assert g["work"]["p50_latency_ms"] == pytest.approx(50.5)
    assert g["work"]["p95_latency_ms"] == pytest.approx(95.05)
    assert g["work"]["p50_ttft_ms"] == pytest.approx(505.0)
    assert g["work"]["p95_ttft_ms"] == pytest.approx(950.5)
    assert g["home"]["p50_latency_ms"] == 5.0 and g["home"]["p95_ttft_ms"] is None


def test_window_bounds_and_series_buckets(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(
        store,
        [
            rec(ts=NOW - 7200, input_tokens=1),  # outside 1h, inside 24h
            rec(ts=NOW - 125, input_tokens=10, output_tokens=1),
            rec(ts=NOW - 121, input_tokens=20, output_tokens=2),
            rec(ts=NOW - 30, input_tokens=40, output_tokens=4, model="claude-haiku-4-5"),
            rec(ts=NOW + 30, input_tokens=1000),  # after `now`: not in this query
        ],
    )
    hour = store.query("1h", now=NOW)
    assert hour["totals"]["requests"] == 3
    assert hour["totals"]["input_tokens"] == 70
    assert hour["series"]["bucket_s"] == 60
    points = hour["series"]["points"]
    assert [(p["t"], p["model"], p["input_tokens"], p["requests"]) for p in points] == [
        ((NOW - 125) // 60 * 60, "claude-sonnet-4-5-20250929", 30, 2),
        ((NOW - 30) // 60 * 60, "claude-haiku-4-5", 40, 1),
    ]
    assert all(p["t"] % 60 == 0 for p in points)
    day = store.query("24h", now=NOW)
    assert day["totals"]["input_tokens"] == 71 and day["series"]["bucket_s"] == 900
    assert store.query("7d", now=NOW)["series"]["bucket_s"] == 3600
    assert [r["ts"] for r in day["recent"]] == [NOW - 30, NOW - 121, NOW - 125, NOW - 7200]


def test_bad_window_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="30d"):
        make_store(tmp_path).query("30d", now=NOW)


def test_query_before_any_database_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    u = store.query(
        "1h", now=NOW, pool_windows={"work": {"requests": {"limit": 50, "remaining": 50, "reset": NOW}}}
    )
    assert u["totals"]["requests"] == 0 and u["recent"] == [] and u["series"]["points"] == []
    assert u["burn"] == {"work": {"input_tpm": 0.0, "output_tpm": 0.0, "tokens_tpm": 0.0, "requests_pm": 0.0}}
    assert u["forecast"]["work"][0]["runs_out_at"] is None
    assert not store.path.exists()
    orjson.dumps(u)


def test_burn_and_forecast_against_scripted_burn(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    # 30 requests over the last 15 minutes: 1000 input + 500 cache-write + 300 output each.
    script = [
        rec(
            ts=NOW - 15 * 60 + 1 + i * 29,
            input_tokens=1000,
            cache_write_5m=500,
            output_tokens=300,
            cache_read=999,
        )
        for i in range(30)
    ]
    script.append(rec(ts=NOW - 20 * 60, input_tokens=10**6, output_tokens=10**6))  # too old for burn
    script.append(rec(ts=NOW - 60, account="other", output_tokens=1500))
    persist(store, script)
    pool: dict[str, dict[str, dict[str, Any]]] = {
        "work": {
            "requests": {"limit": 1000, "remaining": 100, "reset": NOW + 38},
            "tokens": {"limit": 100_000, "remaining": 36_000, "reset": NOW + 3600},
            "input-tokens": {"limit": None, "remaining": None, "reset": None},
            "output-tokens": {"limit": 8000, "remaining": 2400, "reset": NOW + 600},
        },
        "idle": {"output-tokens": {"limit": 8000, "remaining": 8000, "reset": NOW + 60}},
    }
    u = store.query("1h", now=NOW, pool_windows=pool)
    assert u["burn"]["work"] == {
        "input_tpm": pytest.approx(3000.0),  # (1000 + 500) * 30 / 15
        "output_tpm": pytest.approx(600.0),
        "tokens_tpm": pytest.approx(3600.0),
        "requests_pm": pytest.approx(2.0),
    }
    assert u["burn"]["other"]["output_tpm"] == pytest.approx(100.0)
    assert u["burn"]["idle"]["tokens_tpm"] == 0.0

    work = {f["window"]: f for f in u["forecast"]["work"]}
    assert [f["window"] for f in u["forecast"]["work"]] == ["requests", "tokens", "output-tokens"]
    out = work["output-tokens"]
    assert out["burn_per_min"] == pytest.approx(600.0)
    assert out["runs_out_in_s"] == pytest.approx(240.0)  # 2400 / 600 per min = 4 min
    assert out["runs_out_at"] == pytest.approx(NOW + 240.0)
    assert out["before_reset"] is True and out["limit"] == 8000 and out["reset"] == NOW + 600
    assert work["requests"]["runs_out_in_s"] == pytest.approx(3000.0)  # 100 / 2 per min
    assert work["requests"]["before_reset"] is False
    assert work["tokens"]["runs_out_in_s"] == pytest.approx(600.0)
    assert work["tokens"]["before_reset"] is True

    idle = u["forecast"]["idle"][0]
    assert idle["runs_out_at"] is None and idle["runs_out_in_s"] is None and idle["before_reset"] is False
    assert "other" not in u["forecast"]  # no pool windows known for it


def test_retention_prunes_old_rows(tmp_path: Path) -> None:
    store = make_store(tmp_path, retention_days=1.0)
    persist(store, [rec(ts=NOW - 2 * 86400), rec(ts=NOW - 3 * 86400), rec(ts=NOW - 3600), rec(ts=NOW - 60)])
    assert store.query("7d", now=NOW)["totals"]["requests"] == 4

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            deleted = await store.prune(now=NOW)
            nursery.cancel_scope.cancel()
        return deleted

    assert trio.run(main) == 2
    u = store.query("7d", now=NOW)
    assert u["totals"]["requests"] == 2
    assert [r["ts"] for r in u["recent"]] == [NOW - 60, NOW - 3600]


def test_corrupt_database_sets_problem_and_recording_continues(tmp_path: Path) -> None:
    store = make_store(tmp_path, reopen_interval=3600.0)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"this is not a database \x00\xff" * 512)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)  # must not raise
            assert store.problem is not None
            for i in range(5):
                store.record(rec(ts=NOW - i))
            assert await store.flush() == 0
            assert store.pending == 5
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert str(store.path) in (store.problem or "")
    assert "mv " in (store.problem or "")  # says what to do
    u = store.query("1h", now=NOW)
    assert u["problem"] == store.problem and u["totals"]["requests"] == 0
    orjson.dumps(u)

    # Once the user moves the file aside, the next attempt recovers and writes what was kept.
    store.path.rename(store.path.with_suffix(".bad"))
    store.reopen_interval = 0.0

    async def recover() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert store.problem is None and store.pending == 5
            assert await store.flush() == 5
            nursery.cancel_scope.cancel()

    trio.run(recover)
    assert store.problem is None and store.pending == 0
    assert store.query("1h", now=NOW)["totals"]["requests"] == 5


def test_buffer_is_bounded_while_database_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics, "MAX_BUFFER", 50)
    store = make_store(tmp_path)
    for i in range(60):
        store.record(rec(ts=float(i)))
    assert store.pending == 50 and store.dropped == 10
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"\xde\xad" * 4096)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.pending == 50 and store.problem is not None


def test_cancellation_flushes_buffered_rows(tmp_path: Path) -> None:
    store = make_store(tmp_path)  # flush interval of an hour: only the shutdown flush can write them

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for i in range(7):
                store.record(rec(ts=NOW - i, output_tokens=i))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.pending == 0
    fresh = make_store(tmp_path)
    t = fresh.query("1h", now=NOW)["totals"]
    assert t["requests"] == 7 and t["output_tokens"] == 21


def test_periodic_flush_writes_without_being_asked(tmp_path: Path) -> None:
    store = make_store(tmp_path, flush_interval=0.01)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            now = time.time()  # the loop also prunes by wall-clock retention
            for i in range(3):
                store.record(rec(ts=now - i))
            with trio.fail_after(5):
                await store.wait_flushed()  # no explicit flush(): only the loop can wake this
            assert store.rows_written == 3
            assert store.query("1h", now=now)["totals"]["requests"] == 3
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_database_is_wal_private_and_count_tokens_is_not_usage(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(store, [rec(endpoint="count_tokens", input_tokens=12345), rec(input_tokens=7)])
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert store.path.stat().st_mode & 0o777 == 0o600
    t = store.query("1h", now=NOW)["totals"]
    assert t["requests"] == 2 and t["input_tokens"] == 7


def test_malformed_record_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.record(rec(input_tokens="lots"))
            store.record(rec(input_tokens=3))
            assert await store.flush() == 1
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.dropped == 1 and store.problem is None
    assert store.query("1h", now=NOW)["totals"]["input_tokens"] == 3


def test_recent_is_newest_first_and_capped(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(store, [rec(ts=NOW - 1000 + i, streaming=bool(i % 2)) for i in range(60)])
    recent = store.query("1h", now=NOW)["recent"]
    assert len(recent) == 50
    assert recent[0]["ts"] == NOW - 1000 + 59 and recent[-1]["ts"] == NOW - 1000 + 10
    assert recent[0]["streaming"] is True and recent[1]["streaming"] is False
    assert set(recent[0]) >= {"client", "account", "model", "status", "latency_ms", "ttft_ms", "cost_usd"}


def test_cache_read_share_and_saving_per_account_and_client(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(
        store,
        [
            # Sonnet: input $3/M, cache read $0.30/M -> each read token saves $2.70/M.
            rec(account="work", client="claude-cli", model="claude-sonnet-4-5", input_tokens=1000,
                cache_write_5m=2000, cache_write_1h=1000, cache_read=96_000),
            # Haiku 4.5: input $1/M, cache read $0.10/M -> $0.90/M.
            rec(account="home", client="claude-cli", model="claude-haiku-4-5", input_tokens=10_000,
                cache_read=10_000, ts=NOW - 50),
            rec(account="home", client="curl", model="claude-haiku-4-5", input_tokens=500, ts=NOW - 40),
        ],
    )
    u = store.query("1h", now=NOW)
    work_saved = 96_000 * 2.7 / 1e6
    home_saved = 10_000 * 0.9 / 1e6
    by_account = {g["key"]: g for g in u["by_account"]}
    assert by_account["work"]["cache_read_share"] == pytest.approx(0.96)
    assert by_account["work"]["cache_saved_usd"] == pytest.approx(work_saved)
    assert by_account["home"]["cache_read_share"] == pytest.approx(10_000 / 20_500)
    assert by_account["home"]["cache_saved_usd"] == pytest.approx(home_saved)
    by_client = {g["key"]: g for g in u["by_client"]}
    assert by_client["claude-cli"]["cache_read_share"] == pytest.approx(106_000 / 120_000)
    assert by_client["claude-cli"]["cache_saved_usd"] == pytest.approx(work_saved + home_saved)
    # No cache reads: nothing saved, a share of zero (not unknown: the prompt was all uncached).
    assert by_client["curl"]["cache_saved_usd"] == 0.0 and by_client["curl"]["cache_read_share"] == 0.0
    assert u["totals"]["cache_read_share"] == pytest.approx(106_000 / 120_500)
    assert u["totals"]["cache_saved_usd"] == pytest.approx(work_saved + home_saved)
    orjson.dumps(u)


def test_cache_saving_of_an_unpriced_model_is_unknown_not_zero(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    persist(
        store,
        [
            rec(account="work", model="mystery-model", input_tokens=100, cache_read=5000),
            rec(account="home", model="claude-sonnet-4-5", input_tokens=100, cache_read=1000, ts=NOW - 30),
            # An unpriced model that read nothing from the cache saved nothing: known, $0.
            rec(account="lab", model="mystery-model", input_tokens=100, ts=NOW - 20),
            rec(account=None, model=None, status=503, client="curl", ts=NOW - 10),
        ],
    )
    u = store.query("1h", now=NOW)
    by_account = {g["key"]: g for g in u["by_account"]}
    assert by_account["work"]["cache_saved_usd"] is None
    assert by_account["work"]["cache_read_share"] == pytest.approx(5000 / 5100)  # tokens are known
    assert by_account["home"]["cache_saved_usd"] == pytest.approx(1000 * 2.7 / 1e6)
    assert by_account["lab"]["cache_saved_usd"] == 0.0
    assert by_account[analytics.NONE_KEY]["cache_saved_usd"] == 0.0
    assert by_account[analytics.NONE_KEY]["cache_read_share"] is None  # no prompt at all: no share
    assert u["totals"]["cache_saved_usd"] is None
    assert {g["key"]: g for g in u["by_model"]}["mystery-model"]["cache_saved_usd"] is None


def test_cache_saving_follows_a_price_file_override(tmp_path: Path) -> None:
    prices = PriceTable({"claude-sonnet-4": {"input": 3.0, "output": 15.0, "cache_write_5m": 3.75,
                                             "cache_write_1h": 6.0, "cache_read": 1.0}})
    store = AnalyticsStore(tmp_path / "usage.sqlite3", prices=prices, flush_interval=3600.0)
    persist(store, [rec(model="claude-sonnet-4-5", input_tokens=0, cache_read=1_000_000)])
    u = store.query("1h", now=NOW)
    assert u["totals"]["cache_saved_usd"] == pytest.approx(2.0)
    assert u["totals"]["cache_read_share"] == 1.0
