"""One spend-limit rule: `error.details.error_code == "enforced_spend_limit_reached"`.

Anthropic documents a monthly spend limit as a 429 carrying that code
(https://docs.anthropic.com/en/api/errors); it holds the account back for a long while. Any
other 429, whatever its message says, is an ordinary rate limit that passes with its window,
including the ones a key check at login or refresh gets.
"""

from __future__ import annotations

import time
from typing import Any

from tests.support import Dariod

KEY_A, KEY_B = "sk-spend-a", "sk-spend-b"
CHATTY_429 = {"models": True, "status": 429, "retry_after": 5, "message": "Your spend is fine, slow down"}


def account(dariod: Dariod, alias: str) -> dict[str, Any]:
    accounts = dariod.ctl_json("accounts", "list")["accounts"]
    return next(a for a in accounts if a["alias"] == alias)


def seconds_held(dariod: Dariod, alias: str) -> float:
    view = account(dariod, alias)
    assert view["status"] == "exhausted", view
    assert view["until"] is not None
    return float(view["until"]) - time.time()


def test_a_refresh_429_that_mentions_spend_is_an_ordinary_rate_limit(dariod: Dariod, upstream: Any) -> None:
    dariod.login("a", KEY_A, upstream.url)
    upstream.script(CHATTY_429, key=KEY_A)
    dariod.ctl("refresh", "a")
    assert seconds_held(dariod, "a") < 60  # the window's retry-after, not the spend-limit hour


def test_a_login_429_that_mentions_spend_is_an_ordinary_rate_limit(dariod: Dariod, upstream: Any) -> None:
    upstream.script(CHATTY_429, key=KEY_B)
    dariod.login("b", KEY_B, upstream.url)  # a 429 still proves the key
    assert seconds_held(dariod, "b") < 60


def test_a_documented_spend_limit_at_refresh_holds_the_account_back(dariod: Dariod, upstream: Any) -> None:
    dariod.login("a", KEY_A, upstream.url)
    upstream.script({"models": True, "status": 429, "spend_limit": True}, key=KEY_A)
    dariod.ctl("refresh", "a")
    assert seconds_held(dariod, "a") > 3000
