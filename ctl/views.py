"""How `dario-ctl` shows the control API's answers: pure functions of data and a rich Console.

rich is imported inside the render functions, so the small text helpers below stay cheap to
import (the tray can reuse them without paying for rich's console machinery).
Daemon-supplied strings (aliases, reasons, names) always go in as `Text`, never as markup:
an alias like "[red]x" must print as typed. They also pass through `printable` first, since
they may quote an upstream or a client verbatim.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from dario.daemon.control.api import AccountView, ClientKeyView, RefreshResult, Status, WindowView

from dario.daemon.commands import command


def login_hint() -> str:
    return f"No accounts yet. Add one with: {command('dario-ctl')} login"


def keys_hint() -> str:
    return f"No client keys. Create one with: {command('dario-ctl')} keys create NAME"


UNKNOWN = "—"

STATUS_STYLES: dict[str, str] = {
    "ok": "green",
    "cooling": "yellow",  # amber: it comes back on its own
    "exhausted": "red",
    "needs_login": "bold red",
    "disabled": "dim",
    "waiting_for_keyring": "yellow",  # comes back by itself once the keyring is unlocked
}
HEALTH_STYLES: dict[str, str] = {
    "ok": "green", "degraded": "yellow", "exhausted": "red", "empty": "red",
    "needs_login": "red", "waiting_for_keyring": "yellow",
}
# Short labels keep the windows column narrow enough for an 80-column terminal.
WINDOW_LABELS: dict[str, str] = {
    "requests": "req",
    "tokens": "tok",
    "input-tokens": "in",
    "output-tokens": "out",
}


# -- text helpers ----------------------------------------------------------------------

# C0 controls, DEL and C1 controls (ECMA-48 §5.3; 0x9b is a one-byte CSI to many terminals):
# in text from outside (an upstream's error, a client's model id) they could move the
# cursor, rewrite the screen or retitle the window. Line breaks and tabs become spaces.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_BREAKS = re.compile("[\t\n\v\f\r]")
_T = TypeVar("_T")


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """`value` as text that cannot drive a terminal: control characters removed."""
    text = _CONTROLS.sub("", str(value))
    if keep_newlines:
        return re.sub("[\t\v\f\r]", " ", text)
    return _BREAKS.sub(" ", text)


def kind_label(account: AccountView) -> str:
    """The kind, and where a Bedrock or Vertex account points: "bedrock us-east-1", "vertex proj/us-east5"."""
    kind = printable(account.get("kind", ""))
    region, project = account.get("region"), account.get("project")
    if project and region:
        return f"{kind} {printable(project)}/{printable(region)}"
    if region:
        return f"{kind} {printable(region)}"
    return kind


def printable_data(data: _T) -> _T:
    """A copy of decoded JSON with every string (keys too) passed through `printable`."""
    result: Any
    if isinstance(data, str):
        result = printable(data)
    elif isinstance(data, Mapping):
        result = {printable(k): printable_data(v) for k, v in data.items()}
    elif isinstance(data, list | tuple):
        result = [printable_data(v) for v in data]
    else:
        return data
    return result



def human_duration(seconds: float, *, coarse: bool = False) -> str:
    """How long, in its two most significant units: `38 s`, `5 min 3 s`, `3 h 12 min`, `2 d 4 h`.

    The one duration format of dario-ctl, its usage view and the tray. Counted in whole seconds,
    and a time still ahead never reads as `0 s`. `coarse` drops the seconds once there is a
    minute or more and rounds up to the minute (`5 min 3 s` -> `6 min`): for a forecast, or a
    tray menu refreshed now and then, seconds are false precision, and rounding up keeps a
    countdown from promising a reset before it comes.
    """
    if not math.isfinite(seconds):
        return UNKNOWN
    s = max(1, round(seconds)) if seconds > 0 else 0  # a time already past reads as 0 s; callers say "ago"
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if coarse:
        m, s = m + (s > 0), 0
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def relative_time(epoch: float, now: float) -> str:
    """`in 38 s`, `5 min ago`, or `now` (within a second either way)."""
    delta = epoch - now
    if abs(delta) < 1:
        return "now"
    return f"in {human_duration(delta)}" if delta > 0 else f"{human_duration(-delta)} ago"


def compact_count(n: float | None) -> str:
    """`950`, `1.2k`, `190k`, `1.2M`; `?` when unknown."""
    if n is None or not math.isfinite(n):
        return "?"
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    units = ("", "k", "M", "G", "T")
    i = 0
    # 999.5 rather than 1000, so 999_700 reads "1M" rather than "1000k".
    while value >= 999.5 and i < len(units) - 1:
        value /= 1000
        i += 1
    if i == 0:
        return f"{sign}{round(value)}"
    text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    return sign + text.removesuffix(".0") + units[i]


def headroom_bar(fraction: float | None, width: int = 10) -> str:
    """`████████░░ 83%`, or `—` when the daemon has not seen the account's limits yet."""
    if fraction is None or not math.isfinite(fraction):
        return UNKNOWN
    f = min(1.0, max(0.0, fraction))
    filled = round(f * width)
    return "█" * filled + "░" * (width - filled) + f" {round(f * 100)}%"


def window_text(name: str, w: WindowView, *, marked: bool = True) -> str | None:
    """`req 49/50`, `req 2/3 (declared)`, `req 1/~2 (estimated)`; None when nothing is known.

    `marked=False` leaves out the `(declared)`/`(estimated)` word (the caller says it once).
    """
    limit, remaining = w.get("limit"), w.get("remaining")
    if limit is None and remaining is None:
        return None
    source = w.get("source", "headers")
    approx = "~" if source == "estimated" else ""
    text = f"{WINDOW_LABELS.get(name, name)} {compact_count(remaining)}/{approx}{compact_count(limit)}"
    return text if not marked or source not in ("declared", "estimated") else f"{text} ({source})"


def windows_summary(windows: Mapping[str, WindowView]) -> str:
    """`req 49/50 · out 190k/200k`: remaining/limit per known rate-limit window, marked when the
    limit is one the user declared or one dario estimated from throttling (`~`). Windows that
    all share one such source are marked once, at the end (the status table is narrow)."""
    order = [k for k in WINDOW_LABELS if k in windows] + sorted(k for k in windows if k not in WINDOW_LABELS)
    sources = {windows[k].get("source", "headers") for k in order}
    shared = next(iter(sources)) if len(sources) == 1 and sources & {"declared", "estimated"} else None
    parts = [text for key in order if (text := window_text(key, windows[key], marked=shared is None)) is not None]
    if not parts:
        return UNKNOWN
    return " · ".join(parts) + (f" ({shared})" if shared else "")


# Each declared limit: how it reads, and the window it bounds.
LIMIT_LABELS = {"rpm": ("rpm", "requests"), "input_tpm": ("input tpm", "input-tokens"),
                "output_tpm": ("output tpm", "output-tokens")}


def limits_lines(account: AccountView) -> list[str]:
    """What `dario-ctl limits` prints: each declared limit, then the windows routed by now."""
    alias = printable(account.get("alias", "?"))
    declared: Mapping[str, object] = account.get("limits") or {}
    given = [f"{LIMIT_LABELS[name][0]} {value:,}" for name, value in declared.items()
             if name in LIMIT_LABELS and isinstance(value, int)]
    lines = [f"{alias}: declared " + (", ".join(given) if given else "none")]
    windows = account.get("windows") or {}
    estimated = [f"~{compact_count(w.get('limit'))} {label}"
                 for label, window in LIMIT_LABELS.values() for w in [windows.get(window)]
                 if w is not None and w.get("source") == "estimated"]
    if estimated:
        lines.append(f"{alias}: estimated from throttling " + ", ".join(estimated) + " (rises each minute without one)")
    lines.append(f"{alias}: windows {windows_summary(printable_data(windows))}")
    return lines


def _note_bits(account: AccountView, now: float) -> list[str]:
    """Why an account is not serving, and when that ends, in words."""
    if account.get("status") == "ok":
        return []
    bits: list[str] = []
    if account.get("reason"):
        reason = str(account["reason"])
        # The daemon's reasons are short; an upstream's error text may not be. The full text is in --json.
        bits.append(reason if len(reason) <= NOTE_MAX else reason[: NOTE_MAX - 1] + "…")
    until = account.get("until")
    if until is not None:
        # A reset already due reads "resets now": the daemon clears it on its next check.
        bits.append(f"resets in {human_duration(until - now)}" if until - now >= 1 else "resets now")
    return bits


def account_hint(account: AccountView) -> str | None:
    """The command that fixes an account the user has to act on, if any."""
    alias = account.get("alias", "")
    if account.get("status") == "needs_login" and account.get("managed_by") == "config":
        # Its key comes from the source the team config file names; login would be refused.
        return f"{alias} needs a working key at its source (see its note), then: {command('dario-ctl')} refresh {alias}"
    if account.get("status") == "needs_login":
        return f"{alias} needs a working key: {command('dario-ctl')} login {alias}"
    if account.get("status") == "disabled":
        return f"{alias} is disabled: {command('dario-ctl')} accounts enable {alias}"
    return None


def _headroom_style(fraction: float | None) -> str:
    if fraction is None:
        return "dim"
    if fraction >= 0.5:
        return "green"
    return "yellow" if fraction >= 0.2 else "red"


# -- renderers -------------------------------------------------------------------------


# Columns of the accounts table, least important first: a narrow terminal drops these in this
# order (and shortens the bar) rather than cutting an alias or a number.
DROPPABLE = ("Convs", "In-flight", "Kind", "Windows")
NOTE_MAX = 120  # characters of one reason shown in the table
NOTE_MIN_WIDTH = 24  # the note wraps between words; below this it would read one word per line
SHOWS_HEADROOM = ("ok", "cooling", "exhausted")  # the others cannot serve: a bar would mislead


def conversations(account: Mapping[str, object]) -> int:
    """How many prompt-cache conversations the account holds now (0 from a daemon that does not say)."""
    value = account.get("conversations", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _without_run_hint(reason: str) -> str:
    """A reason minus its "; run: …" tail, for accounts whose fixing command is printed below."""
    return reason.split("; run: ", 1)[0]


def _account_rows(accounts: Sequence[AccountView], now: float, bar_width: int) -> list[dict[str, Text]]:
    from rich.text import Text

    rows = []
    for a in accounts:
        status = str(a.get("status", "?"))
        alias = Text(str(a.get("alias", "?")), style="bold" if a.get("preferred") else "")
        if a.get("preferred"):
            alias.append(" ★", style="yellow")
        if a.get("managed_by") == "config":
            alias.append(" (config)", style="dim")  # defined in the team config file
        headroom = a.get("headroom") if status in SHOWS_HEADROOM else None
        bar = headroom_bar(headroom, bar_width) if bar_width else (
            UNKNOWN if headroom is None else f"{round(min(1.0, max(0.0, headroom)) * 100)}%")
        bits = _note_bits(a, now)
        if account_hint(a):
            bits = [_without_run_hint(b) for b in bits]
        rows.append({
            "Account": alias,
            "Kind": Text(kind_label(a)),
            "Status": Text(status, style=STATUS_STYLES.get(status, "")),
            "Headroom": Text(bar, style=_headroom_style(headroom)),
            "Windows": Text(windows_summary(a.get("windows") or {})),
            "In-flight": Text(str(a.get("in_flight", 0))),
            "Convs": Text(str(conversations(a))),
            # One fact per line: a narrow column then breaks between facts, not inside them.
            "Note": Text("\n".join(bits)),
        })
    return rows


def _needed_width(columns: Sequence[str], rows: Sequence[dict[str, Text]]) -> int:
    """The width the table takes with no cell cut (the note at its minimum), gaps included."""
    total = 0
    for name in columns:
        widest = max([len(name)] + [max((len(line) for line in row[name].plain.split("\n")), default=0)
                                    for row in rows])
        total += min(widest, NOTE_MIN_WIDTH) if name == "Note" else widest
    return total + 2 * (len(columns) - 1)


def _fit(accounts: Sequence[AccountView], now: float, width: int) -> tuple[list[str], list[dict[str, Text]]]:
    """The most columns (and longest bar) that fit `width`, dropping the least important first."""
    has_note = any(_note_bits(a, now) for a in accounts)
    columns = ["Account", "Kind", "Status", "Headroom", "Windows", "In-flight", "Convs"]
    columns += ["Note"] if has_note else []
    # Below 100 columns the bar is short even when the long one would just fit: room for the note.
    plans: list[tuple[list[str], int]] = [(columns, 10)] if width >= 100 else []
    plans.append((columns, 5))
    for name in DROPPABLE:
        columns = [c for c in columns if c != name]
        plans.append((columns, 5))
    plans.append((columns, 0))  # the percentage alone
    for cols, bar_width in plans:
        rows = _account_rows(accounts, now, bar_width)
        if _needed_width(cols, rows) <= width:
            return cols, rows
    return cols, rows


def render_accounts(accounts: Sequence[AccountView], console: Console, now: float | None = None) -> None:
    """The pool as a table (then the command that fixes any account needing the user); with no
    accounts, the hint to add one."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not accounts:
        console.print(Text(login_hint(), style="yellow"))
        return
    accounts = printable_data(accounts)
    now = time.time() if now is None else now
    columns, rows = _fit(accounts, now, console.width)
    # No vertical rules: the columns need every character an 80-column terminal has.
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold"
    )
    for name in columns:
        if name == "Note":
            table.add_column(name, min_width=NOTE_MIN_WIDTH, ratio=1)
        else:
            # Facts are never cut or wrapped: what does not fit was dropped as a whole column.
            table.add_column(name, no_wrap=True, justify="right" if name in ("In-flight", "Convs") else "left")
    for a, row in zip(accounts, rows, strict=True):
        # A disabled account is out of the rotation on purpose: keep it visible but quiet.
        table.add_row(*(row[c] for c in columns), style="dim" if a.get("status") == "disabled" else None)
    console.print(table)
    for a in accounts:
        hint = account_hint(a)
        if hint:
            _print_hint(hint, console)


def _print_hint(hint: str, console: Console) -> None:
    """`what: command` on one line if it fits, else the command alone on the next, never broken."""
    from rich.text import Text

    what, _, command_text = hint.partition(": ")
    if len(hint) <= console.width or not command_text:
        console.print(Text(hint, style="yellow"), soft_wrap=True)
        return
    console.print(Text(what + ":", style="yellow"))
    console.print(Text("  " + command_text, style="yellow"), soft_wrap=True)


def render_status(status: Status, console: Console, now: float | None = None) -> None:
    """Daemon header (version, uptime, addresses, pool health), then the accounts table."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    status = printable_data(status)
    pool = status.get("pool") or {}
    health = str(pool.get("health", "?"))

    pool_line = Text(health, style=HEALTH_STYLES.get(health, ""))
    pool_line.append(f" · {pool.get('available', 0)} of {pool.get('total', 0)} accounts available")
    if pool.get("queue_depth"):
        pool_line.append(f" · {pool['queue_depth']} queued", style="yellow")
    earliest = pool.get("earliest_reset")
    if earliest is not None and health != "ok":
        pool_line.append(f" · next reset {relative_time(earliest, now)}")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Version", Text(f"{status.get('version', '?')} (pid {status.get('pid', '?')})"))
    grid.add_row("Uptime", Text(human_duration(float(status.get("uptime_s", 0)))))
    grid.add_row("Listening", Text(str(status.get("listen", "?"))))
    grid.add_row("Socket", Text(str(status.get("socket", "?"))))
    grid.add_row("Auth required", Text("yes" if status.get("auth_required") else "no"))
    grid.add_row("Requests served", Text(f"{int(status.get('requests_served', 0)):,}"))
    grid.add_row("Pool", pool_line)
    store = status.get("store")
    if store and store != "memory":  # team mode: the pool state is shared through Redis
        grid.add_row("Store", Text("redis, ok" if store == "ok" else f"redis, {store} (using this instance's own "
                                   "picture until Redis answers)", style="" if store == "ok" else "yellow"))
    console.print(Panel(grid, title="dariod", title_align="left", expand=False))
    keyring = status.get("keyring")
    if keyring:  # said once here, not in every account's note
        line = Text("Keyring: ", style="bold yellow")
        line.append(str(keyring))
        console.print(line)
    analytics = status.get("analytics")
    if analytics and (analytics.get("problem") or analytics.get("dropped")):
        line = Text("Usage analytics: ", style="bold yellow")
        line.append(f"{analytics.get('pending', 0):,} rows waiting, {analytics.get('dropped', 0):,} dropped")
        if analytics.get("problem"):
            line.append(" · " + str(analytics["problem"]))
        console.print(line)
    render_accounts(status.get("accounts") or [], console, now=now)


def render_refresh(results: Sequence[RefreshResult], console: Console) -> None:
    """A table (account, result, status, message), then each command to run, once."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not results:
        console.print(Text(login_hint(), style="yellow"))
        return
    results = printable_data(results)
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold"
    )
    table.add_column("Account", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Message", min_width=NOTE_MIN_WIDTH, ratio=1)
    hints: list[str] = []
    for r in results:
        status = str(r.get("status", "?"))
        message, _, command_text = str(r.get("message", "")).partition("; run: ")
        if command_text and command_text not in hints:
            hints.append(command_text)
        table.add_row(
            Text(str(r.get("alias", ""))),
            Text("ok" if r.get("ok") else "failed", style="green" if r.get("ok") else "red"),
            Text(status, style=STATUS_STYLES.get(status, "")),
            Text(message),
        )
    console.print(table)
    for command_text in hints:
        console.print(Text("run: " + command_text, style="yellow"), soft_wrap=True)


def render_keys(keys: Sequence[ClientKeyView], console: Console, now: float | None = None) -> None:
    """Client keys: name, recognisable prefix, age, last use. Never the key itself."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not keys:
        console.print(Text(keys_hint(), style="yellow"))
        return
    keys = printable_data(keys)
    now = time.time() if now is None else now
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold"
    )
    for name in ("Name", "Key", "Created", "Last used"):
        table.add_column(name, no_wrap=True)
    for k in keys:
        last = k.get("last_used")
        table.add_row(
            Text(str(k.get("name", "?"))),
            Text(f"{k.get('prefix', '')}…", style="dim"),
            Text(relative_time(float(k.get("created", now)), now)),
            Text(relative_time(last, now) if last is not None else "never"),
        )
    console.print(table)
