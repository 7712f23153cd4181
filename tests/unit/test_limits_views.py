"""Declared and estimated windows as dario-ctl, the tray and the forecast show them."""

from __future__ import annotations

from typing import Any, cast

from dario.ctl.cli import build_parser
from dario.ctl.usage_view import forecast_sentences
from dario.ctl.views import limits_lines, windows_summary
from dario.daemon.control.api import AccountView, WindowView
from dario.daemon.recording.analytics import _forecast
from dario.tray.model import account_state

NOW = 1_700_000_000.0


def w(limit: int, remaining: int, source: str | None = None) -> WindowView:
    view: dict[str, Any] = {"limit": limit, "remaining": remaining, "reset": NOW + 30}
    if source is not None:
        view["source"] = source
    return cast(WindowView, view)


def account(windows: dict[str, WindowView], status: str = "ok", **limits: int) -> AccountView:
    return cast(AccountView, {
        "alias": "bed", "kind": "anthropic-compatible", "base_url": "https://x.invalid", "created": NOW,
        "enabled": True, "preferred": False, "status": status, "reason": None, "until": None,
        "headroom": 0.67, "windows": windows, "in_flight": 0, "requests": 0, "errors": 0,
        "latency_ms": None, "conversations": 0,
        "limits": {"rpm": limits.get("rpm"), "input_tpm": limits.get("input_tpm"),
                   "output_tpm": limits.get("output_tpm")},
    })


def test_windows_summary_marks_declared_and_estimated_limits() -> None:
    assert windows_summary({"requests": w(50, 49, "headers")}) == "req 49/50"
    assert windows_summary({"requests": w(50, 49)}) == "req 49/50"  # an older daemon says no source
    assert windows_summary({"requests": w(3, 2, "declared"), "output-tokens": w(40_000, 39_000, "estimated")}) == (
        "req 2/3 (declared) · out 39k/~40k (estimated)"
    )
    # One source for every window: said once.
    assert windows_summary({"requests": w(1, 0, "estimated"), "output-tokens": w(200, 195, "estimated")}) == (
        "req 0/~1 · out 195/~200 (estimated)"
    )


def test_limits_lines_say_what_is_declared_and_what_was_learned() -> None:
    lines = limits_lines(account({"requests": w(7, 3, "estimated")}, rpm=50, output_tpm=40_000))
    assert lines == [
        "bed: declared rpm 50, output tpm 40,000",
        "bed: estimated from throttling ~7 rpm (rises each minute without one)",
        "bed: windows req 3/~7 (estimated)",
    ]
    assert limits_lines(account({}))[0] == "bed: declared none"


def test_the_tray_shows_local_windows_marked() -> None:
    assert account_state(account({"requests": w(3, 2, "declared")}), NOW) == "67% · ok · req 2/3 (declared)"
    header = account({"requests": w(50, 40, "headers")})
    assert account_state(header, NOW) == "67% · ok"


def test_the_forecast_carries_and_says_the_source() -> None:
    forecast = _forecast({"bed": {"requests_pm": 4.0}}, {"bed": {"requests": dict(w(3, 1, "declared"))}}, NOW)
    entry = forecast["bed"][0]
    assert entry["source"] == "declared" and entry["runs_out_in_s"] == 15.0
    assert forecast_sentences({"forecast": forecast}, NOW) == [
        "bed: requests (declared limit) run out in 15 s, reset in 30 s",
    ]
    quiet = _forecast({}, {"bed": {"requests": dict(w(3, 3, "estimated"))}}, NOW)
    assert forecast_sentences({"forecast": quiet}, NOW) == [
        "bed: requests (estimated limit) fine at current burn (resets in 30 s)",
    ]


def test_login_and_limits_take_the_limit_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["limits", "bed", "--rpm", "40", "--output-tpm", "8_000", "--clear", "--json"])
    assert (args.rpm, args.input_tpm, args.output_tpm, args.clear, args.json) == (40, None, 8000, True, True)
    args = parser.parse_args(["login", "bed", "--input-tpm", "200000"])
    assert args.input_tpm == 200_000
