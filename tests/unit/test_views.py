"""dario-ctl views: helpers, and what the rendered text tells a user about each pool state."""

from __future__ import annotations

from typing import Any, cast

import pytest
from rich.console import Console

from dario.ctl import views
from dario.ctl.views import compact_count, headroom_bar, human_duration, relative_time
from dario.daemon.control.api import AccountView, ClientKeyView, RefreshResult, Status

NOW = 1_700_010_000.0


def account(**overrides: Any) -> AccountView:
    base: dict[str, Any] = {
        "alias": "work",
        "kind": "anthropic",
        "base_url": "https://api.anthropic.com",
        "created": NOW - 86_400,
        "enabled": True,
        "preferred": False,
        "status": "ok",
        "reason": None,
        "until": None,
        "headroom": 0.83,
        "windows": {
            "requests": {"limit": 50, "remaining": 49, "reset": NOW + 30},
            "output-tokens": {"limit": 200_000, "remaining": 190_000, "reset": NOW + 30},
        },
        "in_flight": 2,
        "requests": 120,
        "errors": 1,
        "latency_ms": 512.0,
    }
    return cast(AccountView, {**base, **overrides})


def status(accounts: list[AccountView], **pool: Any) -> Status:
    available = sum(1 for a in accounts if a["status"] == "ok")
    health = "empty" if not accounts else ("ok" if available else "exhausted")
    return cast(
        Status,
        {
            "version": "0.1.0",
            "pid": 4242,
            "started_at": NOW - 11_520,
            "uptime_s": 11_520.0,
            "listen": "http://127.0.0.1:3456",
            "socket": "/run/user/1000/dario/ctl.sock",
            "auth_required": True,
            "requests_served": 1234,
            "pool": {
                "health": health,
                "available": available,
                "total": len(accounts),
                "earliest_reset": None,
                "queue_depth": 0,
                **pool,
            },
            "accounts": accounts,
        },
    )


def render(fn: Any, *args: Any, **kwargs: Any) -> str:
    console = Console(record=True, width=120)
    fn(*args, console, **kwargs)
    return console.export_text()


# -- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0 s"),
        (38, "38 s"),
        (38.4, "38 s"),
        (0.3, "1 s"),  # a time still ahead never reads as 0 s
        (60, "1 min"),
        (303, "5 min 3 s"),
        (3600, "1 h"),
        (11_520, "3 h 12 min"),
        (86_400, "1 d"),
        (2 * 86_400 + 4 * 3600 + 59, "2 d 4 h"),
        (-5, "0 s"),
        (float("nan"), "—"),
    ],
)
def test_human_duration(seconds: float, expected: str) -> None:
    assert human_duration(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(38, "38 s"), (60, "1 min"), (303, "6 min"), (3 * 3600 + 1, "3 h 1 min"), (86_400 + 60, "1 d")],
)
def test_coarse_duration_rounds_up_to_the_minute(seconds: float, expected: str) -> None:
    assert human_duration(seconds, coarse=True) == expected


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(NOW + 38, "in 38 s"), (NOW - 300, "5 min ago"), (NOW + 0.4, "now"), (NOW - 3 * 86_400, "3 d ago")],
)
def test_relative_time(epoch: float, expected: str) -> None:
    assert relative_time(epoch, NOW) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (49, "49"),
        (999, "999"),
        (1000, "1k"),
        (1234, "1.2k"),
        (12_345, "12k"),
        (190_000, "190k"),
        (999_700, "1M"),
        (1_200_000, "1.2M"),
        (2_000_000_000, "2G"),
        (-1500, "-1.5k"),
        (None, "?"),
    ],
)
def test_compact_count(n: int | None, expected: str) -> None:
    assert compact_count(n) == expected


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.83, "████████░░ 83%"),
        (1.0, "██████████ 100%"),
        (0.0, "░░░░░░░░░░ 0%"),
        (1.7, "██████████ 100%"),
        (-0.2, "░░░░░░░░░░ 0%"),
        (None, "—"),
    ],
)
def test_headroom_bar(fraction: float | None, expected: str) -> None:
    assert headroom_bar(fraction) == expected


def test_headroom_bar_width() -> None:
    assert headroom_bar(0.5, width=4) == "██░░ 50%"


def test_windows_summary() -> None:
    a = account()
    assert views.windows_summary(a["windows"]) == "req 49/50 · out 190k/200k"
    assert views.windows_summary({}) == "—"
    assert views.windows_summary({"tokens": {"limit": None, "remaining": None, "reset": None}}) == "—"


# -- status renderings -----------------------------------------------------------------


def test_status_no_accounts() -> None:
    text = render(views.render_status, status([]), now=NOW)
    assert "dario-ctl login" in text
    assert "empty" in text
    assert "0.1.0" in text and "3 h 12 min" in text


def test_status_healthy() -> None:
    accounts = [account(preferred=True), account(alias="home", headroom=None, windows={}, in_flight=0)]
    text = render(views.render_status, status(accounts), now=NOW)
    # Header: everything a user checks first.
    for needle in (
        "0.1.0",
        "4242",
        "3 h 12 min",
        "http://127.0.0.1:3456",
        "/run/user/1000/dario/ctl.sock",
        "yes",
        "1,234",
        "2 of 2 accounts available",
    ):
        assert needle in text, needle
    assert "work ★" in text
    assert "████████░░ 83%" in text
    assert "req 49/50 · out 190k/200k" in text
    home = next(line for line in text.splitlines() if "home" in line)
    assert "—" in home and "★" not in home
    assert "dario-ctl login" not in text


def test_status_exhausted() -> None:
    accounts = [
        account(
            status="exhausted",
            reason="output tokens used up",
            until=NOW + 38,
            headroom=0.0,
            windows={"output-tokens": {"limit": 200_000, "remaining": 0, "reset": NOW + 38}},
        ),
        account(
            alias="spare", status="cooling", reason="429 from upstream", until=NOW + 3 * 3600, headroom=0.1
        ),
    ]
    text = render(views.render_status, status(accounts, earliest_reset=NOW + 38, queue_depth=3), now=NOW)
    assert "exhausted" in text and "cooling" in text
    assert "output tokens used up" in text and "resets in 38 s" in text
    assert "resets in 3 h" in text
    assert "0%" in text and "10%" in text
    assert "next reset in 38 s" in text
    assert "3 queued" in text


def test_status_needs_login() -> None:
    accounts = [account(status="needs_login", reason="401: invalid x-api-key", headroom=None)]
    text = render(views.render_status, status(accounts), now=NOW)
    assert "needs_login" in text
    assert "invalid x-api-key" in text
    assert "dario-ctl login work" in text


def test_status_colours_statuses() -> None:
    # Styles reach the terminal: check the segments rather than the exported text.
    console = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    accounts = [account(), account(alias="b", status="needs_login"), account(alias="c", status="exhausted")]
    views.render_accounts(accounts, console, now=NOW)
    styles = {seg.text.strip(): str(seg.style) for seg in console._record_buffer if seg.text.strip()}
    assert "green" in styles["ok"]
    assert "red" in styles["needs_login"]
    assert "red" in styles["exhausted"]


def test_accounts_disabled_row_and_hint() -> None:
    text = render(views.render_accounts, [account(status="disabled", enabled=False)], now=NOW)
    assert "disabled" in text
    assert "dario-ctl accounts enable work" in text


def test_accounts_empty_hint() -> None:
    assert "dario-ctl login" in render(views.render_accounts, [])


def test_daemon_strings_are_not_markup() -> None:
    text = render(views.render_accounts, [account(alias="[red]evil[/red]", reason="[bold]x")], now=NOW)
    assert "[red]evil[/red]" in text


def test_fits_80_columns() -> None:
    console = Console(record=True, width=80)
    views.render_status(status([account(preferred=True)]), console, now=NOW)
    text = console.export_text()
    assert "████░ 83%" in text  # a shorter bar, never wrapped
    assert all(len(line) <= 80 for line in text.splitlines())


# -- refresh and keys ------------------------------------------------------------------


def test_render_refresh() -> None:
    results = [
        cast(RefreshResult, {"alias": "work", "ok": True, "status": "ok", "message": "limits updated"}),
        cast(RefreshResult, {"alias": "b", "ok": False, "status": "needs_login", "message": "401"}),
    ]
    lines = render(views.render_refresh, results).splitlines()
    assert lines[0].split() == ["Account", "Result", "Status", "Message"]
    assert lines[2].split() == ["work", "ok", "ok", "limits", "updated"]
    assert lines[3].split() == ["b", "failed", "needs_login", "401"]


def test_refresh_shows_each_command_once_below_the_table() -> None:
    results = [
        cast(RefreshResult, {"alias": a, "ok": False, "status": "needs_login",
                             "message": "no key in the keyring; run: dario-ctl login " + a})
        for a in ("a", "b")
    ] + [cast(RefreshResult, {"alias": "c", "ok": False, "status": "needs_login",
                              "message": "no key in the keyring; run: dario-ctl login a"})]
    text = render(views.render_refresh, results)
    assert text.count("run: dario-ctl login a") == 1 and text.count("run: dario-ctl login b") == 1
    assert text.splitlines()[2].split() == ["a", "failed", "needs_login", "no", "key", "in", "the", "keyring"]


def test_render_keys() -> None:
    keys = [
        cast(
            ClientKeyView,
            {"name": "cursor", "created": NOW - 7200, "prefix": "dario-ck-ab", "last_used": NOW - 5},
        ),
        cast(ClientKeyView, {"name": "ci", "created": NOW - 60, "prefix": "dario-ck-cd", "last_used": None}),
    ]
    text = render(views.render_keys, keys, now=NOW)
    assert "cursor" in text and "dario-ck-ab…" in text and "2 h ago" in text and "5 s ago" in text
    assert "never" in text
    assert "keys create" in render(views.render_keys, [])


def _crowded_pool() -> list[AccountView]:
    four_windows = {
        "requests": {"limit": 4000, "remaining": 3999, "reset": NOW + 30},
        "input-tokens": {"limit": 2_000_000, "remaining": 1_999_000, "reset": NOW + 30},
        "output-tokens": {"limit": 400_000, "remaining": 399_000, "reset": NOW + 30},
        "tokens": {"limit": 2_400_000, "remaining": 2_398_000, "reset": NOW + 30},
    }
    return [
        account(alias="personal-account", preferred=True, headroom=1.0, windows=four_windows, in_flight=12),
        account(alias="work-team-alpha", kind="anthropic-compatible", status="needs_login", headroom=1.0,
                reason="upstream answered 401: invalid x-api-key"),
        account(alias="backup-account", status="exhausted", reason="rate limited (429)", until=NOW + 3600,
                headroom=0.0),
        account(alias="spare-account", status="waiting_for_keyring", headroom=None, windows={},
                reason="the OS keyring has not answered for 3 s; it is probably locked; dario retries by itself"),
    ]


def test_crowded_status_fits_80_columns_without_cutting_names_or_numbers() -> None:
    st = status(_crowded_pool(), health="needs_login")
    st["keyring"] = ("the OS keyring has not answered for 3 s; it is probably locked. Unlock it (log in to the "
                     "desktop, or answer the unlock prompt); dario reads the keys as soon as it answers.")
    console = Console(width=80, record=True)
    views.render_status(st, console, now=NOW)
    text = console.export_text()
    lines = text.splitlines()
    # Only a command to copy may run past 80 columns (a long install path); it is never broken.
    assert all(len(line) <= 80 or line.startswith("  /") for line in lines), text
    assert "…" not in text, text
    for alias in ("personal-account ★", "work-team-alpha", "backup-account", "spare-account"):
        assert alias in text
    assert "100%" in text and "0%" in text
    assert len(lines) <= 28, text
    # The keyring explanation once, wrapped as prose rather than a word per line.
    assert " ".join(text.split()).count("Unlock it (log in to the desktop") == 1
    prose = [line for line in lines if "keyring" in line.lower() and "│" not in line and not line.startswith("  /")]
    assert prose and all(len(line.split()) > 3 for line in prose), prose
    # Accounts that cannot serve show no bar: a full green bar beside needs_login would mislead.
    for line in lines:
        if line.startswith(("work-team-alpha", "spare-account")):
            assert "█" not in line and "%" not in line, line


def test_accounts_list_keeps_windows_when_they_fit_and_drops_kind_first() -> None:
    accounts = [account(alias="personal-account"), account(alias="work-team-alpha", kind="anthropic-compatible")]
    console = Console(width=80, record=True)
    views.render_accounts(accounts, console, now=NOW)
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "req 49/50 · out 190k/200k" in text
    assert "Headroom" in text and "83%" in text
    wide = render(views.render_accounts, accounts, now=NOW)
    assert "anthropic-compatible" in wide and "In-flight" in wide


def test_accounts_show_conversations_held_and_drop_them_first_when_narrow() -> None:
    accounts = [account(alias="personal-account", conversations=3), account(alias="work-team-alpha")]
    wide = render(views.render_accounts, accounts, now=NOW)
    header = next(line for line in wide.splitlines() if "Account" in line)
    assert "Convs" in header
    column = header.index("Convs") + len("Convs")  # right-justified under its header
    cells = {line.split()[0]: line[:column].split()[-1] for line in wide.splitlines()
             if line.startswith(("personal-account", "work-team-alpha"))}
    # A daemon that does not report conversations yet shows 0, not an error.
    assert cells == {"personal-account": "3", "work-team-alpha": "0"}, wide
    console = Console(width=80, record=True)
    views.render_accounts(accounts, console, now=NOW)
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines()), text
    assert "Convs" not in text and "req 49/50 · out 190k/200k" in text  # the least important goes first
    # Just too narrow for every column (short bar): only this one goes, Kind stays.
    console = Console(width=96, record=True)
    views.render_accounts(accounts, console, now=NOW)
    needed = len(next(line for line in console.export_text().splitlines() if "Account" in line).rstrip())
    console = Console(width=needed - 1, record=True)
    views.render_accounts(accounts, console, now=NOW)
    text = console.export_text()
    assert "Convs" not in text and "Kind" in text and "In-flight" in text, text


def test_conversations_is_a_count_or_zero() -> None:
    assert views.conversations(account(conversations=4)) == 4
    assert views.conversations(account()) == 0
    assert views.conversations(account(conversations=True)) == 0 and views.conversations(account(conversations=-1)) == 0


def test_status_says_when_usage_rows_wait_or_were_dropped() -> None:
    fine = {"store": "postgresql", "where": "postgresql://team:***@db/usage", "ok": True, "pending": 3,
            "written": 10, "dropped": 0, "problem": None}
    assert "Usage analytics" not in render(views.render_status, {**status([]), "analytics": fine}, now=NOW)
    down = {**fine, "ok": False, "pending": 1200, "dropped": 7,
            "problem": "usage analytics database postgresql://team:***@db/usage is unusable (connection refused)"}
    text = render(views.render_status, {**status([]), "analytics": down}, now=NOW)
    assert "1,200 rows waiting, 7 dropped" in text and "connection refused" in text
def test_status_says_when_the_team_store_is_degraded() -> None:
    st = status([])
    assert "Store" not in render(views.render_status, st, now=NOW)  # memory: nothing to say
    st["store"] = "ok"
    assert "redis, ok" in render(views.render_status, st, now=NOW)
    st["store"] = "degraded"
    assert "redis, degraded" in render(views.render_status, st, now=NOW)
