"""Values from outside (aliases, model ids, client names, upstream error text) cannot drive the
user's terminal or tray: every ctl and tray view strips C0/C1 control characters and shows rich
markup as typed."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from rich.console import Console

from dario.ctl import cli, views
from dario.ctl.usage_view import render_usage
from dario.ctl.views import printable, printable_data
from dario.daemon.control.api import ClientKeyView, RefreshResult
from dario.daemon.recording.analytics import AnalyticsStore, UsageRecord
from dario.daemon.recording.prices import PriceTable
from dario.tray.model import account_state, menu_model, settings_text, tooltip
from tests.unit.test_tray_model import FakeClient, make_app, make_status, pystray_dummy  # noqa: F401
from tests.unit.test_tray_model import account as tray_account
from tests.unit.test_views import NOW, account, status

# An OSC window title (ended by BEL), clear-screen, a one-byte C1 CSI, DEL, a carriage return
# that would overwrite the line, and rich markup.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31mred\x7f\r[bold]x[/bold]\x00"
# What may reach the screen: newlines between lines, nothing else below 0x20, no DEL, no C1.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def rendered(fn: Any, *args: Any, **kwargs: Any) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=False)
    fn(*args, console, **kwargs)
    return out.getvalue()


def assert_safe(text: str) -> None:
    assert CONTROL.findall(text) == []
    assert "[bold]x[/bold]" in text  # markup shown as typed, not applied


def test_printable() -> None:
    assert printable(HOSTILE) == "]0;pwned[2J31mred [bold]x[/bold]"
    assert printable("a\nb\tc") == "a b c"
    assert printable("a\nb\tc", keep_newlines=True) == "a\nb c"
    assert printable("naïve — ✓ 83%") == "naïve — ✓ 83%"  # printable non-ASCII stays
    assert printable_data({HOSTILE: [HOSTILE, 1, None, {"k": HOSTILE}]}) == {
        printable(HOSTILE): [printable(HOSTILE), 1, None, {"k": printable(HOSTILE)}]
    }


def test_status_and_accounts_views() -> None:
    bad = account(alias=HOSTILE, kind=HOSTILE, status="needs_login", reason=HOSTILE, headroom=None,
                  windows={HOSTILE: {"limit": 5, "remaining": 1, "reset": None}})
    assert_safe(rendered(views.render_status, status([bad], health=HOSTILE), now=NOW))
    assert_safe(rendered(views.render_accounts, [bad], now=NOW))


def test_refresh_and_keys_views() -> None:
    results = [cast(RefreshResult, {"alias": HOSTILE, "ok": False, "status": HOSTILE, "message": HOSTILE})]
    assert_safe(rendered(views.render_refresh, results))
    keys = [cast(ClientKeyView, {"name": HOSTILE, "prefix": HOSTILE, "created": NOW, "last_used": None})]
    assert_safe(rendered(views.render_keys, keys, now=NOW))


def test_usage_view(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "u.sqlite3", prices=PriceTable(), flush_interval=3600)
    records = [
        UsageRecord(ts=NOW - 600 + i, client=HOSTILE, account=HOSTILE, model=HOSTILE, dialect="anthropic",
                    endpoint="messages", streaming=False, status=500 if i else 200,
                    error_type=HOSTILE if i else None, input_tokens=10, output_tokens=5, latency_ms=100.0)
        for i in range(3)
    ]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for r in records:
                store.record(r)
            await store.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    usage = store.query("1h", now=NOW)
    text = rendered(render_usage, {**usage, "problem": HOSTILE})
    assert_safe(text)
    assert "pwned" in text  # the values are shown, only their control characters are gone


def test_cli_messages(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    cli._say(Console(file=out, width=200, color_system=None, force_terminal=False), f"Enabled {HOSTILE}")
    assert_safe(out.getvalue())
    cli._err(f"error: no account named {HOSTILE}")
    assert_safe(capsys.readouterr().err)


def test_tray_texts() -> None:
    hostile = tray_account(HOSTILE, cast(Any, HOSTILE), None)
    s = make_status(hostile, tray_account(HOSTILE, preferred=True), listen="http://127.0.0.1:3456\x1b[2J")
    labels = []
    for entry in menu_model(s, NOW):
        labels.append(entry.label)
        labels.extend(c.label for c in entry.children)
    texts = [tooltip(s, NOW), settings_text(s), account_state(hostile, NOW), *labels]
    assert [t for t in texts if CONTROL.search(t)] == []
    # Actions keep the exact alias: the daemon must be asked about the account that exists.
    assert any(e.action == f"prefer:{HOSTILE}" for e in menu_model(s, NOW))


def test_tray_notifications(pystray_dummy: Any, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    tray = make_app(pystray_dummy, FakeClient(make_status()))
    tray.notify(f"dariod refused: {HOSTILE}")
    assert CONTROL.findall(capsys.readouterr().err) == []
