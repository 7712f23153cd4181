"""What the tray shows, as pure functions of the daemon's status.

Nothing here touches pystray, threads or the socket: `app.py` feeds these functions the latest
`Status` (or None when no daemon answers) and renders the result, so every word and every menu
entry can be tested without a display.
"""

from __future__ import annotations

import enum
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from dario.ctl.views import conversations, human_duration, kind_label, printable, window_text
from dario.daemon.control.api import AccountView, Status

DEFAULT_LISTEN = "http://127.0.0.1:3456"
LOW_HEADROOM = 0.20  # below this an account still serves, but the pool is called degraded
TOOLTIP_MAX = 127  # Windows keeps at most 127 characters of a tray tooltip (szTip[128])


class TrayHealth(enum.Enum):
    HEALTHY = "healthy"  # every enabled account ok, each with headroom >= 20 % (or unknown)
    DEGRADED = "degraded"  # at least one can serve, but some cannot or are running low
    UNAVAILABLE = "unavailable"  # accounts exist, none can serve right now
    STOPPED = "stopped"  # no daemon answers
    EMPTY = "empty"  # the daemon runs, no account was added yet


MenuKind = Literal["radio", "action", "separator", "info", "submenu"]


@dataclass(frozen=True)
class MenuEntry:
    label: str
    kind: MenuKind
    checked: bool = False
    enabled: bool = True
    action: str | None = None  # "prefer:work", "prefer:", "refresh:", "quit", ...
    children: tuple[MenuEntry, ...] = field(default=())  # only for kind == "submenu"


SEPARATOR = MenuEntry("", "separator", enabled=False)


# -- accounts ------------------------------------------------------------------------------
def _enabled(status: Status) -> list[AccountView]:
    return [a for a in status["accounts"] if a["enabled"] and a["status"] != "disabled"]


def _ready(account: AccountView) -> bool:
    return account["enabled"] and account["status"] == "ok"


def _low(account: AccountView) -> bool:
    # Unknown headroom (no request made yet) is not evidence of trouble.
    headroom = account["headroom"]
    return headroom is not None and headroom < LOW_HEADROOM


def _percent(headroom: float) -> str:
    return f"{round(max(0.0, min(1.0, headroom)) * 100)}%"


def _until(account: AccountView, now: float) -> str | None:
    until = account["until"]
    if until is None:
        return None
    if until <= now:
        return "any moment"
    return f"in {human_duration(until - now, coarse=True)}"


def _local_limits(account: AccountView) -> str:
    """The windows dario keeps itself, marked: " · req 2/3 (declared)"; "" for header windows."""
    windows = account.get("windows") or {}
    texts = [window_text(name, w) for name, w in windows.items() if w.get("source") in ("declared", "estimated")]
    return "".join(f" · {printable(t)}" for t in texts if t)


def account_state(account: AccountView, now: float | None = None) -> str:
    """The account's condition in a few words: "83% · ok", "exhausted, resets in 38 s"; windows
    dario keeps itself (declared or estimated limits) follow, marked: "67% · ok · req 2/3 (declared)"."""
    now = time.time() if now is None else now
    state = _account_state(account, now)
    if account["status"] in ("ok", "exhausted", "cooling"):
        state += _local_limits(account)
    return state


def _account_state(account: AccountView, now: float) -> str:
    status = account["status"]
    if not account["enabled"] or status == "disabled":
        return "disabled"
    if status == "ok":
        headroom = account["headroom"]
        state = "ok" if headroom is None else f"{_percent(headroom)} · {'low' if _low(account) else 'ok'}"
        held = conversations(account)  # prompt-cache conversations that prefer this account
        return f"{state} · {held} conversation{'' if held == 1 else 's'}" if held else state
    if status == "needs_login":
        return "needs login"
    if status == "waiting_for_keyring":
        return "waiting for the keyring"
    when = _until(account, now)
    if status == "exhausted":
        return f"exhausted, resets {when}" if when else "exhausted"
    if status == "cooling":
        return f"cooling, retry {when}" if when else "cooling"
    return printable(status)


# -- health and tooltip --------------------------------------------------------------------
def health(status: Status | None) -> TrayHealth:
    if status is None:
        return TrayHealth.STOPPED
    if not status["accounts"]:
        return TrayHealth.EMPTY
    enabled = _enabled(status)
    ready = [a for a in enabled if _ready(a)]
    if not ready:
        return TrayHealth.UNAVAILABLE
    if len(ready) < len(enabled) or any(_low(a) for a in ready) or status.get("store") == "degraded":
        return TrayHealth.DEGRADED
    return TrayHealth.HEALTHY


def _lead_account(status: Status) -> AccountView | None:
    """The account requests go to: the preferred one if it can serve, else the most headroom."""
    ready = [a for a in _enabled(status) if _ready(a)]
    for account in ready:
        if account["preferred"]:
            return account
    if not ready:
        return None
    return max(ready, key=lambda a: -1.0 if a["headroom"] is None else a["headroom"])


def _earliest_reset(status: Status) -> float | None:
    times = [a["until"] for a in _enabled(status) if a["until"] is not None]
    pool_reset = status["pool"].get("earliest_reset")
    if pool_reset is not None:
        times.append(pool_reset)
    return min(times) if times else None


def tooltip(status: Status | None, now: float | None = None) -> str:
    """One line in words, e.g. "dario: 2 of 3 accounts ready · work 83%"."""
    now = time.time() if now is None else now
    state = health(status)
    if status is None:
        text = "dario: daemon not running"
    elif state is TrayHealth.EMPTY:
        text = "dario: running, no accounts yet (add one with dario-ctl login)"
    else:
        enabled = _enabled(status)
        ready = [a for a in enabled if _ready(a)]
        noun = "account" if len(enabled) == 1 else "accounts"
        text = f"dario: {len(ready)} of {len(enabled)} {noun} ready"
        if state is TrayHealth.UNAVAILABLE:
            reset = _earliest_reset(status)
            if reset is not None:
                when = "any moment" if reset <= now else f"in {human_duration(reset - now, coarse=True)}"
                text += f" · next reset {when}"
            elif any(a["status"] == "waiting_for_keyring" for a in enabled):
                text += " · unlock the keyring"
            elif any(a["status"] == "needs_login" for a in enabled):
                text += " · log in again with dario-ctl login"
        else:
            lead = _lead_account(status)
            if lead is not None:
                text += f" · {printable(lead['alias'])}"
                if lead["headroom"] is not None:
                    text += f" {_percent(lead['headroom'])}"
    if status is not None and status.get("store") == "degraded":
        text += " · store: degraded"  # team mode: Redis is not answering, this instance decides alone
    if len(text) > TOOLTIP_MAX:
        text = text[: TOOLTIP_MAX - 1] + "…"
    return text


# -- menu ----------------------------------------------------------------------------------
def _where(account: AccountView) -> str:
    """For a Bedrock or Vertex account, e.g. " (bedrock us-east-1)"; nothing for an Anthropic one (room is short)."""
    return f" ({kind_label(account)})" if account.get("region") else ""


def menu_model(status: Status | None, now: float | None = None) -> list[MenuEntry]:
    now = time.time() if now is None else now
    summary = tooltip(status, now).removeprefix("dario: ")
    header = MenuEntry(summary[:1].upper() + summary[1:], "info", enabled=False)
    entries: list[MenuEntry] = [header, SEPARATOR]
    running = status is not None
    if status is not None and status["accounts"]:
        accounts = status["accounts"]
        for account in accounts:
            entries.append(
                MenuEntry(
                    f"{printable(account['alias'])}{_where(account)} — {account_state(account, now)}",
                    "radio",
                    checked=account["preferred"],
                    # A disabled account cannot be preferred: the daemon would never route to it.
                    enabled=account["enabled"] and account["status"] != "disabled",
                    action=f"prefer:{account['alias']}",
                )
            )
        entries.append(
            MenuEntry(
                "Automatic",
                "radio",
                checked=not any(a["preferred"] for a in accounts),
                action="prefer:",
            )
        )
        entries.append(SEPARATOR)
        entries.append(MenuEntry("Refresh all", "action", action="refresh:"))
        entries.append(
            MenuEntry(
                "Refresh",
                "submenu",
                children=tuple(
                    MenuEntry(printable(a["alias"]), "action", action=f"refresh:{a['alias']}")
                    for a in accounts
                ),
            )
        )
        entries.append(SEPARATOR)
    entries.append(MenuEntry("Open dashboard", "action", enabled=running, action="open-dashboard"))
    # Stopped: the listen address is unknown, and pasting a dead URL helps nobody.
    entries.append(MenuEntry("Copy settings for tools", "action", enabled=running, action="copy-settings"))
    if not running:
        entries.append(MenuEntry("Start daemon", "action", action="start-daemon"))
    entries.append(SEPARATOR)
    entries.append(MenuEntry("Quit", "action", action="quit"))
    return entries


def settings_text(status: Status | None, platform: str | None = None, key: str | None = None) -> str:
    """What `dario-ctl env` prints: the lines that point Anthropic and OpenAI SDKs at dario."""
    from dario.ctl.toolenv import render, tool_env

    platform = sys.platform if platform is None else platform
    listen = printable(status["listen"] if status is not None else DEFAULT_LISTEN)
    # PowerShell on Windows, the shell its users paste into; sh syntax elsewhere.
    text = render(tool_env(listen, key), "powershell" if platform == "win32" else "sh")
    if key is None and status is not None and status["auth_required"]:
        # Both shells take "#" comments; no key could be had, so say where one comes from.
        text += "# this dariod requires a client key: use dario-ctl env, or dario-ctl keys create NAME\n"
    return text
