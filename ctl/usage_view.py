"""How `dario-ctl usage` shows the analytics Usage shape (see dario.daemon.recording.analytics).

Pure functions of data and a rich Console. Daemon-supplied strings (aliases, models,
client names, error types) always go in as `Text`, never as markup, and pass through
`printable` first (they may quote a client or an upstream verbatim).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dario.ctl.views import compact_count, human_duration, printable_data

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

SPARKS = "▁▂▃▄▅▆▇█"
UNKNOWN = "—"
WINDOW_WORDS = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input tokens",
    "output-tokens": "output tokens",
}
RECENT_SHOWN = 10


# -- text helpers ----------------------------------------------------------------------


def count(n: float | None) -> str:
    """`950`, `1.2k`, `190k`, `1.2M`."""
    if n is None or not math.isfinite(n):
        return UNKNOWN
    return compact_count(n)


def money(usd: float | None) -> str:
    if usd is None or not math.isfinite(usd):
        return UNKNOWN
    return f"${usd:,.2f}" if abs(usd) >= 1 else f"${usd:.4f}"


def share(fraction: float | None) -> str:
    """`88%`; a non-zero share too small to round to 1% shows as `<1%`, not as nothing."""
    if fraction is None or not math.isfinite(fraction):
        return UNKNOWN
    pct = fraction * 100
    return "<1%" if 0 < pct < 0.5 else f"{pct:.0f}%"


def cache_sentence(totals: Mapping[str, Any]) -> str | None:
    """The prompt cache's effect in words, or None when no prompt tokens were sent."""
    if totals.get("cache_read_share") is None:
        return None
    saved = totals.get("cache_saved_usd")
    tail = "saving unknown (a model has no price)" if saved is None else f"saved {money(saved)}"
    return (f"Prompt cache: {share(totals.get('cache_read_share'))} of prompt tokens read from the cache, "
            f"{tail}")


def millis(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return UNKNOWN
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def sparkline(values: Sequence[float], width: int) -> str:
    """One character per column; values are summed into `width` columns when there are more."""
    if not values or width <= 0:
        return ""
    if len(values) > width:
        per = len(values) / width
        values = [sum(values[math.floor(i * per) : math.floor((i + 1) * per)]) for i in range(width)]
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    # Any non-zero value gets at least the lowest bar; the peak gets the full block.
    return "".join(SPARKS[max(0, math.ceil(v / top * len(SPARKS)) - 1)] for v in values)


def account_series(usage: Mapping[str, Any]) -> dict[str, list[float]]:
    """Tokens (input + output) per series bucket, per account, covering the whole window."""
    series = usage.get("series") or {}
    bucket = float(series.get("bucket_s") or 60)
    since, until = usage.get("since"), usage.get("until")
    points = series.get("points") or []
    if since is None or until is None:
        if not points:
            return {}
        since = min(p["t"] for p in points)
        until = max(p["t"] for p in points)
    start = math.floor(float(since) / bucket) * bucket
    n = max(1, int((float(until) - start) // bucket) + 1)
    out: dict[str, list[float]] = {}
    for p in points:
        i = int((float(p.get("t", start)) - start) // bucket)
        if 0 <= i < n:
            row = out.setdefault(str(p.get("account")), [0.0] * n)
            row[i] += float(p.get("input_tokens") or 0) + float(p.get("output_tokens") or 0)
    return dict(sorted(out.items()))


def _fraction(entry: Mapping[str, Any]) -> float:
    limit, remaining = entry.get("limit"), entry.get("remaining")
    if not limit or remaining is None:
        return math.inf
    return float(remaining) / float(limit)


# Anthropic's limits refill continuously (a token bucket; see the API docs' "Rate limits"): with
# no reset time known, a run-out this far ahead is an extrapolation, not a warning.
UNKNOWN_RESET_HORIZON = 3600.0


def _runs_out_before_reset(entry: Mapping[str, Any], now: float) -> bool:
    runs_out_at = entry.get("runs_out_at")
    if runs_out_at is None or not entry.get("before_reset"):
        return False
    return entry.get("reset") is not None or float(runs_out_at) - now <= UNKNOWN_RESET_HORIZON


def _window_words(entry: Mapping[str, Any]) -> str:
    """"requests", or "requests (declared limit)" / "(estimated limit)" for a limit dario keeps itself."""
    what = WINDOW_WORDS.get(entry["window"], str(entry["window"]))
    source = entry.get("source")
    return f"{what} ({source} limit)" if source in ("declared", "estimated") else what


def forecast_sentences(usage: Mapping[str, Any], now: float) -> list[str]:
    """The forecast in plain words, one line per window that runs out before its reset;
    for an account where none does, one line saying so for its tightest window."""
    lines: list[str] = []
    forecast = usage.get("forecast") or {}
    for alias in sorted(forecast):
        entries = [e for e in forecast[alias] or [] if e.get("remaining") is not None]
        if not entries:
            continue
        running_out = [e for e in entries if _runs_out_before_reset(e, now)]
        for e in sorted(running_out, key=lambda e: float(e["runs_out_at"])):
            what = _window_words(e)
            left = float(e["runs_out_at"]) - now
            if float(e["remaining"]) <= 0:
                head = f"{alias}: {what} are used up"
            elif left < 1:
                head = f"{alias}: {what} run out now"
            else:
                head = f"{alias}: {what} run out in {human_duration(left, coarse=True)}"
            reset = e.get("reset")
            if reset is None:
                tail = "reset time unknown"
            elif float(reset) - now < 1:
                tail = "reset due now"
            else:
                tail = f"reset in {human_duration(float(reset) - now, coarse=True)}"
            lines.append(f"{head}, {tail}")
        if running_out:
            continue
        tightest = min(entries, key=_fraction)  # min() keeps the first on ties: the daemon's window order
        what = _window_words(tightest)
        line = f"{alias}: {what} fine at current burn"
        reset = tightest.get("reset")
        if reset is not None:
            left = float(reset) - now
            line += " (resets now)" if left < 1 else f" (resets in {human_duration(left, coarse=True)})"
        lines.append(line)
    return lines


# -- rendering -------------------------------------------------------------------------


# Columns a narrow terminal drops, least important first, rather than cutting a name or a figure.
# The cache share and saving outlast the raw cache token counts: they are what a user acts on.
GROUP_DROP = ("ttft p95", "ttft p50", "cache w", "cache r", "p95", "err", "p50", "in", "saved", "cached")
RECENT_DROP = ("latency", "client", "in", "ago")


def _fitted_table(console: Console, columns: Sequence[tuple[str, JustifyMethod]],
                  rows: Sequence[Sequence[Any]], drop: Sequence[str], title: str | None = None) -> Any:
    """A table of the columns that fit the console, dropping those named in `drop` in order."""
    from rich.measure import Measurement
    from rich.table import Table

    kept = list(range(len(columns)))
    unbounded = console.options.update_width(100_000)
    table = None
    for name in (None, *drop):
        if name is not None:
            kept = [i for i in kept if columns[i][0] != name]
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
        for i in kept:
            table.add_column(columns[i][0], justify=columns[i][1], no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in kept))
        # Measured unbounded: within the console's width rich would report the squeezed width.
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            break
    return table


def _group_table(console: Console, title: str, rows: Sequence[Mapping[str, Any]], key_header: str) -> Any:
    from rich.text import Text

    columns: list[tuple[str, JustifyMethod]] = [(key_header, "left")]
    for header in ("req", "err", "in", "out", "cache w", "cache r", "cost", "cached", "saved", "p50", "p95",
                   "ttft p50", "ttft p95"):
        columns.append((header, "right"))
    cells = []
    for r in rows:
        errors = int(r.get("errors") or 0)
        err = Text(count(errors), style="red" if errors else "dim")
        cells.append((
            Text(str(r.get("key"))),
            count(r.get("requests")),
            err,
            count(r.get("input_tokens")),
            count(r.get("output_tokens")),
            count(r.get("cache_write_tokens")),
            count(r.get("cache_read_tokens")),
            money(r.get("cost_usd")),
            share(r.get("cache_read_share")),
            money(r.get("cache_saved_usd")),
            millis(r.get("p50_latency_ms")),
            millis(r.get("p95_latency_ms")),
            millis(r.get("p50_ttft_ms")),
            millis(r.get("p95_ttft_ms")),
        ))
    return _fitted_table(console, columns, cells, GROUP_DROP, title)


def render_usage(usage: Mapping[str, Any], console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    usage = printable_data(usage)
    window = str(usage.get("window") or "?")
    now = float(usage.get("until") or 0.0)
    heading = Text(f"Usage, last {window}", style="bold")
    instances = int(usage.get("instances") or 0)
    if instances > 1:  # team mode: several dariod instances wrote to one database
        heading.append(f" · {instances} dariod instances", style="")
    console.print(heading)
    if usage.get("problem"):
        console.print(Text(str(usage["problem"]), style="yellow"))

    totals = usage.get("totals") or {}
    t = Table(show_edge=False, pad_edge=False, header_style="bold")
    for header in ("requests", "errors", "input", "output", "cache write", "cache read", "cost"):
        t.add_column(header, justify="right")
    errors = int(totals.get("errors") or 0)
    t.add_row(
        count(totals.get("requests", 0)),
        Text(count(errors), style="red" if errors else ""),
        count(totals.get("input_tokens", 0)),
        count(totals.get("output_tokens", 0)),
        count(totals.get("cache_write_tokens", 0)),
        count(totals.get("cache_read_tokens", 0)),
        money(totals.get("cost_usd", 0.0)),
    )
    console.print(t)
    cache_line = cache_sentence(totals)
    if cache_line is not None and (totals.get("cache_read_tokens") or totals.get("cache_write_tokens")):
        console.print(Text(cache_line))

    if not totals.get("requests"):
        console.print(Text(f"No requests in the last {window}.", style="dim"))
    else:
        for name, title, header in (
            ("by_account", "By account", "account"),
            ("by_model", "By model", "model"),
            ("by_client", "By client", "client"),
        ):
            rows = usage.get(name) or []
            if rows:
                console.print()
                console.print(_group_table(console, title, rows, header))
        error_lines = [
            f"{r.get('key')}: " + ", ".join(f"{k} ×{v}" for k, v in sorted(r["errors_by_type"].items()))
            for r in usage.get("by_account") or []
            if r.get("errors_by_type")
        ]
        if error_lines:
            console.print()
            console.print(Text("Errors", style="bold"))
            for line in error_lines:
                console.print(Text("  " + line, style="red"))

    per_account = account_series(usage)
    if per_account and any(any(v) for v in per_account.values()):
        console.print()
        console.print(Text("Tokens over time", style="bold"))
        label_w = min(24, max(len(a) for a in per_account))
        width = max(10, min(96, console.width - label_w - 14))
        for alias, values in per_account.items():
            row = Text(alias[:label_w].ljust(label_w) + "  ")
            row.append(sparkline(values, width), style="cyan")
            row.append(f"  {count(sum(values))}", style="dim")
            console.print(row, overflow="crop", no_wrap=True)

    sentences = forecast_sentences(usage, now)
    if sentences:
        console.print()
        console.print(Text("Forecast (burn over the last 15 min)", style="bold"))
        for s in sentences:
            console.print(Text("  " + s, style="yellow" if " run out " in s or "used up" in s else ""))

    recent = list(usage.get("recent") or [])[:RECENT_SHOWN]
    if recent:
        console.print()
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("ago", "right"),
            ("client", "left"),
            ("account", "left"),
            ("model", "left"),
            ("status", "right"),
            ("in", "right"),
            ("out", "right"),
            ("latency", "right"),
            ("cost", "right"),
        )
        cells = []
        for r in recent:
            status = int(r.get("status") or 0)
            bad = status >= 400 or r.get("error_type")
            cells.append((
                human_duration(now - float(r.get("ts") or now), coarse=True),
                Text(str(r.get("client") or UNKNOWN)),
                Text(str(r.get("account") or UNKNOWN)),
                Text(str(r.get("model") or UNKNOWN)),
                Text(str(r.get("error_type") or status), style="red" if bad else "green"),
                count(r.get("input_tokens")),
                count(r.get("output_tokens")),
                millis(r.get("latency_ms")),
                money(r.get("cost_usd")),
            ))
        r_table = _fitted_table(console, columns, cells, RECENT_DROP, "Recent")
        console.print(r_table)
