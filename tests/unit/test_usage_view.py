from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from dario.ctl.usage_view import forecast_sentences, render_usage, sparkline
from dario.ctl.views import human_duration
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable

NOW = 1_700_000_000.0


def entry(window: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "window": window,
        "remaining": 100,
        "limit": 1000,
        "reset": NOW + 38,
        "burn_per_min": 0.0,
        "runs_out_at": None,
        "runs_out_in_s": None,
        "before_reset": False,
    }
    base.update(kw)
    return base


def test_forecast_sentences_wording() -> None:
    usage = {
        "forecast": {
            "work": [
                entry("requests", remaining=900),
                entry(
                    "output-tokens", remaining=2400, reset=NOW + 38, runs_out_at=NOW + 240, before_reset=True
                ),
                entry("tokens", remaining=10, reset=None, runs_out_at=NOW + 30, before_reset=True),
            ],
            "home": [
                entry("requests", remaining=40, limit=50, runs_out_at=NOW + 7200),  # after the reset: fine
                entry("input-tokens", remaining=900, limit=1000),
            ],
            "spent": [
                entry("input-tokens", remaining=0, runs_out_at=NOW, before_reset=True, reset=NOW + 7380)
            ],
            "new": [],
            "quiet": [entry("requests", reset=None)],
        }
    }
    assert forecast_sentences(usage, NOW) == [
        "home: requests fine at current burn (resets in 38 s)",
        "quiet: requests fine at current burn",
        "spent: input tokens are used up, reset in 2 h 3 min",
        "work: tokens run out in 30 s, reset time unknown",
        "work: output tokens run out in 4 min, reset in 38 s",
    ]
    # Read later, the same forecast counts down.
    assert forecast_sentences(usage, NOW + 60)[-1] == "work: output tokens run out in 3 min, reset due now"
    assert forecast_sentences({}, NOW) == []


def test_forecast_countdowns_round_up_and_count_days() -> None:
    # A reset 2 min 30 s away reads "3 min", never sooner than it comes; one 2 days away in days.
    usage = {"forecast": {"work": [entry("requests", reset=NOW + 150)],
                          "home": [entry("tokens", reset=NOW + 2 * 86_400 + 3600)]}}
    assert forecast_sentences(usage, NOW) == [
        "home: tokens fine at current burn (resets in 2 d 1 h)",
        "work: requests fine at current burn (resets in 3 min)",
    ]


def test_duration_and_sparkline() -> None:
    assert [human_duration(s, coarse=True) for s in (0, 0.3, 38, 59.4, 240, 3600, 7380, 86400 + 4 * 3600)] == [
        "0 s",
        "1 s",
        "38 s",
        "59 s",
        "4 min",
        "1 h",
        "2 h 3 min",
        "1 d 4 h",
    ]
    assert sparkline([0, 1, 2, 4, 8], 10) == "▁▁▂▄█"
    assert sparkline([0, 0], 5) == "▁▁"
    assert sparkline([1] * 8 + [0] * 8, 4) == "██▁▁"


def test_render_empty_usage() -> None:
    store = AnalyticsStore(Path("/nonexistent/dario/usage.sqlite3"), prices=PriceTable())
    console = Console(record=True, width=100)
    render_usage(store.query("24h", now=NOW), console)
    text = console.export_text()
    assert "No requests in the last 24h" in text
    console = Console(record=True, width=100)
    render_usage({}, console)  # nothing at all still renders
    assert "Usage" in console.export_text()


def test_render_full_usage(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "u.sqlite3", prices=PriceTable(), flush_interval=3600)
    records = [
        UsageRecord(
            ts=NOW - 3000 + i * 60,
            client="claude-cli",
            account="work" if i % 3 else "[red]home",
            model="claude-sonnet-4-5",
            dialect="anthropic",
            endpoint="messages",
            streaming=True,
            status=200 if i % 7 else 529,
            error_type=None if i % 7 else "overloaded_error",
            input_tokens=1000 * (i % 5),
            output_tokens=200,
            cache_read=50,
            latency_ms=800.0 + i,
            ttft_ms=120.0,
        )
        for i in range(50)
    ]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for r in records:
                store.record(r)
            await store.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    pool = {"work": {"output-tokens": {"limit": 8000, "remaining": 100, "reset": NOW + 600}}}
    usage = store.query("1h", now=NOW, pool_windows=pool)
    console = Console(record=True, width=140)
    render_usage(usage, console)
    text = console.export_text()
    assert "50" in text and "By account" in text and "By model" in text and "By client" in text
    assert "[red]home" in text  # daemon strings are shown as typed, never as markup
    assert "claude-cli" in text and "overloaded_error" in text
    assert any(ch in text for ch in "▂▃▄▅▆▇█")
    assert "work: output tokens run out in" in text
    assert "$" in text


def test_dashboard_is_self_contained_and_has_test_ids() -> None:
    import re

    import dario.daemon

    static = Path(dario.daemon.__file__).parent / "edge" / "static"
    page = (static / "index.html").read_text()
    script = (static / "dashboard.js").read_text()
    style = (static / "dashboard.css").read_text()
    for element_id in ("accounts", "chart", "totals", "recent", "forecast"):
        assert f'id="{element_id}"' in page
    # The daemon's CSP is script-src 'self': an inline script would never run.
    assert '<script src="/static/dashboard.js"></script>' in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/dashboard.js">']
    assert "/analytics?window=" in script and "x-api-key" in script and "dario-api-key" in script
    assert "prefers-color-scheme: dark" in style
    # Nothing from another origin: no CDN scripts, stylesheets or fonts.
    for text in (page, script, style):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert "@import" not in text and "url(" not in text and "https://" not in text
    assert "innerHTML" not in script  # daemon strings go in as text


def test_forecast_is_quiet_about_a_far_run_out_with_no_reset_time() -> None:
    far = 90 * 86_400 + 13 * 3600
    usage = {"forecast": {"work": [
        entry("tokens", remaining=79_000_000, limit=80_000_000, reset=None, runs_out_at=NOW + far,
              runs_out_in_s=far, before_reset=True),
    ]}}
    assert forecast_sentences(usage, NOW) == ["work: tokens fine at current burn"]
    console = Console(record=True, width=80, color_system="truecolor", force_terminal=True)
    render_usage({**usage, "until": NOW}, console)
    assert "run out" not in console.export_text()
    assert "\x1b[33m" not in console.export_text(styles=True)  # nothing in amber


def test_usage_tables_fit_80_columns_without_cutting(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "u.sqlite3", prices=PriceTable(), flush_interval=3600)
    records = [
        UsageRecord(
            ts=NOW - 3000 + i * 60, client="claude-cli", account="personal-account" if i % 3 else "work-team-alpha",
            model="claude-sonnet-4-5-20250929", dialect="anthropic", endpoint="messages", streaming=True,
            status=200 if i % 7 else 529, error_type=None if i % 7 else "overloaded_error",
            input_tokens=100_000 * (i % 5), output_tokens=20_000, cache_read=50_000, cache_write_5m=2000,
            latency_ms=12_800.0 + i, ttft_ms=1200.0,
        )
        for i in range(50)
    ]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for r in records:
                store.record(r)
            await store.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    console = Console(record=True, width=80)
    render_usage(store.query("1h", now=NOW), console)
    text = console.export_text()
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines())
    for name in ("personal-account", "work-team-alpha", "claude-sonnet-4-5-20250929", "$46.12", "$30.74"):
        assert name in text, name


def _cache_usage(tmp_path: Path) -> dict[str, Any]:
    store = AnalyticsStore(tmp_path / "u.sqlite3", prices=PriceTable(), flush_interval=3600)
    base: dict[str, Any] = {"dialect": "anthropic", "endpoint": "messages", "streaming": True, "status": 200,
                            "error_type": None, "output_tokens": 2000, "latency_ms": 900.0, "ttft_ms": 300.0}
    records = [
        # Sonnet saves $2.70 per million cache-read tokens: 9.6M reads -> $25.92.
        UsageRecord(ts=NOW - 600, client="claude-cli", account="personal-account",
                    model="claude-sonnet-4-5-20250929", input_tokens=300_000, cache_write_5m=100_000,
                    cache_read=9_600_000, **base),
        UsageRecord(ts=NOW - 500, client="opencode-agent", account="work-team-alpha", model="mystery-model",
                    input_tokens=1000, cache_read=3000, **base),
    ]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for r in records:
                store.record(r)
            await store.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return store.query("1h", now=NOW)


def test_usage_shows_cache_share_and_saving_per_account_and_client_in_80_columns(tmp_path: Path) -> None:
    console = Console(record=True, width=80)
    render_usage(_cache_usage(tmp_path), console)
    text = console.export_text()
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    lines = text.splitlines()

    def row(title: str, key: str) -> list[str]:
        start = lines.index(next(line for line in lines if line.startswith(title)))
        header = [c.strip() for c in lines[start + 1].split("┃")]
        cells = [c.strip() for c in next(line for line in lines[start:] if line.startswith(key)).split("│")]
        return [dict(zip(header, cells, strict=True))[name] for name in ("cached", "saved")]

    assert row("By account", "personal-account") == ["96%", "$25.92"]
    assert row("By account", "work-team-alpha") == ["75%", "—"]  # no price: unknown, not $0
    assert row("By client", "claude-cli") == ["96%", "$25.92"]
    assert row("By client", "opencode-agent") == ["75%", "—"]
    assert "Prompt cache: 96% of prompt tokens read from the cache, saving unknown" in text


def test_usage_cache_sentence_and_share_formatting() -> None:
    from dario.ctl.usage_view import cache_sentence, share

    assert share(None) == "—" and share(0.0) == "0%" and share(0.001) == "<1%" and share(0.875) == "88%"
    assert cache_sentence({"cache_read_share": None}) is None
    assert cache_sentence({"cache_read_share": 0.5, "cache_saved_usd": 12.5}) == (
        "Prompt cache: 50% of prompt tokens read from the cache, saved $12.50"
    )


def test_usage_heading_names_the_instances_only_in_a_team() -> None:
    store = AnalyticsStore(Path("/nonexistent/dario/usage.sqlite3"), prices=PriceTable())
    usage = store.query("1h", now=NOW)
    for instances, shown in ((0, False), (1, False), (3, True)):
        console = Console(record=True, width=100)
        render_usage({**usage, "instances": instances}, console)
        assert ("3 dariod instances" in console.export_text()) is shown
