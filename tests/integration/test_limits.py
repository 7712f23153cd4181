"""Headroom without rate-limit headers, through a real dariod: declared limits and learned estimates.

The fake upstream answers these accounts' keys with no `anthropic-ratelimit-*` headers (as Bedrock
and Vertex do) and throttles with a bare 429 (as Bedrock's ThrottlingException).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from dario.ctl.client import ControlAPIError, ControlClient
from tests.support import Dariod, wait_until

MODEL = "claude-sonnet-5-5"
KEYS = {"a": "sk-limits-a", "b": "sk-limits-b"}


def post(url: str, text: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    req = urllib.request.Request(
        url + "/v1/messages", data=orjson.dumps(body), method="POST",
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def login(dariod: Dariod, upstream: Any, alias: str, *flags: str) -> None:
    upstream.set_ratelimit_headers(KEYS[alias], False)
    result = dariod.ctl("login", alias, "--kind", "anthropic-compatible", "--base-url", upstream.url, *flags,
                        input=KEYS[alias] + "\n")
    assert result.returncode == 0, result.stdout + result.stderr


def account(dariod: Dariod, alias: str) -> dict[str, Any]:
    status = dariod.ctl_json("status")
    return next(a for a in status["accounts"] if a["alias"] == alias)


def served_by(upstream: Any, marker: str) -> list[str]:
    names = {v: k for k, v in KEYS.items()}
    return [names[r["key"]] for r in upstream.requests()
            if r["path"] == "/v1/messages" and marker in orjson.dumps(r.get("body")).decode()]


def test_declared_rpm_sends_the_fourth_request_in_a_minute_to_another_account(dariod: Dariod, upstream: Any) -> None:
    login(dariod, upstream, "a", "--rpm", "3")
    login(dariod, upstream, "b")
    assert dariod.ctl("accounts", "prefer", "a").returncode == 0
    served = []
    for _ in range(4):
        status, headers, body = post(dariod.url, uuid.uuid4().hex)
        assert status == 200, body
        served.append(headers["x-dario-account"])
    assert served == ["a", "a", "a", "b"]
    a = account(dariod, "a")
    assert a["limits"] == {"rpm": 3, "input_tpm": None, "output_tpm": None}
    req = a["windows"]["requests"]
    assert (req["limit"], req["remaining"], req["source"]) == (3, 0, "declared")
    assert a["status"] == "exhausted" and 0 < a["until"] - time.time() <= 60
    assert account(dariod, "b")["windows"] == {}  # nothing declared, never throttled: unknown headroom
    shown = dariod.ctl("limits", "a")
    assert shown.returncode == 0, shown.stderr
    assert "declared rpm 3" in shown.stdout and "req 0/3 (declared)" in shown.stdout


def test_a_lone_account_at_its_declared_limit_queues_until_the_limit_is_raised_live(
        dariod: Dariod, upstream: Any) -> None:
    login(dariod, upstream, "a", "--rpm", "1")
    assert post(dariod.url, "first")[0] == 200
    marker = uuid.uuid4().hex
    result: list[tuple[int, dict[str, str], bytes]] = []
    waiter = threading.Thread(target=lambda: result.append(post(dariod.url, marker)))
    waiter.start()
    try:
        wait_until(lambda: dariod.ctl_json("status")["pool"]["queue_depth"] == 1, 20, "the request to queue")
        assert served_by(upstream, marker) == []  # held by dario, not sent to be refused
        changed = dariod.ctl("limits", "a", "--rpm", "5", "--json")
        assert changed.returncode == 0, changed.stderr
        assert orjson.loads(changed.stdout)["account"]["windows"]["requests"]["limit"] == 5
    finally:
        waiter.join(30)
    assert result and result[0][0] == 200, result
    assert served_by(upstream, marker) == ["a"]
    # The new limit is kept in accounts.json and applies to the running pool.
    saved = orjson.loads((dariod.home / "config" / "dario" / "accounts.json").read_bytes())
    assert saved["accounts"][0]["rpm"] == 5
    cleared = dariod.ctl_json("limits", "a", "--clear")["account"]
    assert cleared["windows"] == {} and cleared["limits"]["rpm"] is None


def test_a_throttle_without_headers_learns_an_estimate_that_moves_traffic_and_survives_a_restart(
        dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    dariod = dariod_factory()
    login(dariod, upstream, "a")
    login(dariod, upstream, "b")
    assert dariod.ctl("accounts", "prefer", "a").returncode == 0
    assert post(dariod.url, "warm up")[1]["x-dario-account"] == "a"
    assert account(dariod, "a")["windows"] == {}  # no headers, nothing declared: unknown headroom
    upstream.script({"status": 429, "retry_after": None}, key=KEYS["a"])  # a bare 429: no reset named
    marker = uuid.uuid4().hex
    status, headers, _ = post(dariod.url, marker)
    assert status == 200 and headers["x-dario-account"] == "b"
    assert served_by(upstream, marker) == ["a", "b"]
    a = account(dariod, "a")
    req = a["windows"]["requests"]
    assert req["source"] == "estimated" and req["limit"] == 1  # 0.7 × 2 sent, floored at one request
    assert a["status"] == "exhausted"
    assert 30 < a["until"] - time.time() <= 60  # held to the local minute's reset, not the 30 s default
    assert post(dariod.url, "after")[1]["x-dario-account"] == "b"
    shown = dariod.ctl("limits", "a")
    assert "estimated from throttling ~1 rpm" in shown.stdout
    dariod.stop()
    again = dariod_factory(home=dariod.home)
    a = account(again, "a")
    assert a["windows"]["requests"]["source"] == "estimated" and a["windows"]["requests"]["limit"] == 1
    assert a["status"] == "exhausted"
    assert post(again.url, "after restart")[1]["x-dario-account"] == "b"


def test_limits_are_validated_with_clear_errors(dariod: Dariod, upstream: Any) -> None:
    login(dariod, upstream, "a")
    bad = dariod.ctl("limits", "a", "--rpm", "0")
    assert bad.returncode == 2 and "--rpm" in bad.stderr and "from 1" in bad.stderr
    missing = dariod.ctl("limits", "nosuch", "--rpm", "3")
    assert missing.returncode == 1 and "no account named 'nosuch'" in missing.stderr
    client = ControlClient(dariod.socket)
    with pytest.raises(ControlAPIError) as info:
        client.set_limits("a", {"output_tpm": -5})
    assert info.value.status == 400 and "--output-tpm must be a whole number" in info.value.message
    with pytest.raises(ControlAPIError) as info:
        client.request("POST", "/v1/accounts/a/limits", {"tpm": 5})
    assert info.value.status == 400 and "unknown fields" in info.value.message
    # A login with a bad limit stores nothing.
    upstream.set_ratelimit_headers(KEYS["b"], False)
    result = dariod.ctl("login", "b", "--kind", "anthropic-compatible", "--base-url", upstream.url,
                        "--input-tpm", "x", input=KEYS["b"] + "\n")
    assert result.returncode == 2
    assert [a["alias"] for a in dariod.ctl_json("accounts", "list")["accounts"]] == ["a"]
