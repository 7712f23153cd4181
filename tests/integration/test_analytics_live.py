"""Usage you can see: the numbers dario reports, checked against requests these tests made.

A real `dariod` and the fake upstream; requests through the Anthropic and the OpenAI SDKs.
Every expected number comes from what the client itself saw (the SDK responses' usage and
dario's `x-dario-account` header) and from the published price formula, never from dario's
own bookkeeping.
"""

from __future__ import annotations

import collections
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, Dariod

pytestmark = pytest.mark.timeout(90)

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5-20251001"
KEYS = {"work": "sk-ant-analytics-work", "side": "sk-ant-analytics-side"}
# USD per million tokens, as Anthropic publishes them: input, output, 5-minute cache write
# (1.25 × input), 1-hour cache write (2 × input), cache read (0.1 × input).
RATES = {
    SONNET: (3.0, 15.0, 3.75, 6.0, 0.30),
    HAIKU: (1.0, 5.0, 1.25, 2.0, 0.10),
}


@dataclass
class Made:
    """One request as the client saw it."""

    client: str
    account: str
    model: str
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write: int = 0
    cache_read: int = 0
    streaming: bool = False
    count_tokens: bool = False
    failovers: int = 0

    @property
    def cost(self) -> float:
        i, o, cw, _, cr = RATES[self.model]
        return (self.input_tokens * i + self.output_tokens * o + self.cache_write * cw + self.cache_read * cr) / 1e6

    @property
    def cache_saved(self) -> float:
        i, _, _, _, cr = RATES[self.model]
        return self.cache_read * (i - cr) / 1e6

    @property
    def error(self) -> bool:
        return self.status >= 400


def _get(d: Dariod, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _ctl_wide(d: Dariod, *args: str) -> subprocess.CompletedProcess[str]:
    """`dario-ctl` with a wide terminal, so rich does not shorten names in tables."""
    return subprocess.run([sys.executable, "-m", "dario.ctl.cli", "--socket", str(d.socket), *args], cwd=ROOT,
                          env={**d.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)


def _usage_json(d: Dariod) -> dict[str, Any]:
    result: dict[str, Any] = d.ctl_json("usage", "--window", "1h")
    return result


def _sdk_clients(d: Dariod, api_key: str = "anything") -> tuple[anthropic.Anthropic, openai.OpenAI]:
    a = anthropic.Anthropic(base_url=d.url, api_key=api_key, max_retries=0, timeout=30)
    o = openai.OpenAI(base_url=d.url + "/v1", api_key=api_key, max_retries=0, timeout=30)
    return a, o


def _make_known_requests(d: Dariod, upstream: Any) -> list[Made]:
    """The fixed mix: both SDKs, streaming and not, a cache hit, count_tokens, a scripted 400,
    a failover, and an OpenAI stream that asks for no usage."""
    a, o = _sdk_clients(d)
    made: list[Made] = []

    def user(text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": text}]

    def from_message(account: str, msg: Any, streaming: bool = False, failovers: int = 0) -> Made:
        u = msg.usage
        return Made("anthropic-python", account, SONNET, 200, u.input_tokens, u.output_tokens,
                    u.cache_creation_input_tokens or 0, u.cache_read_input_tokens or 0, streaming, failovers=failovers)

    # 1. Anthropic, not streaming; the first account answers 429, dario moves it to the other one.
    upstream.script({"status": 429, "retry_after": 1})
    raw = a.messages.with_raw_response.create(model=SONNET, max_tokens=64, messages=user("Hello there"))
    made.append(from_message(raw.headers["x-dario-account"], raw.parse(), failovers=1))
    # 2. Anthropic, streaming (40 words of output).
    with a.messages.stream(model=SONNET, max_tokens=128, messages=user("Tell me more [[long:40]]")) as s:
        made.append(from_message(s.response.headers["x-dario-account"], s.get_final_message(), streaming=True))
    assert made[-1].output_tokens == 40
    # 3. Anthropic with a cache write (50) and a cache read (100).
    raw = a.messages.with_raw_response.create(model=SONNET, max_tokens=64, messages=user("[[cache]] again"))
    made.append(from_message(raw.headers["x-dario-account"], raw.parse()))
    assert (made[-1].cache_write, made[-1].cache_read) == (50, 100)
    # 4. count_tokens: a request, but no usage.
    raw_count = a.messages.with_raw_response.count_tokens(model=SONNET, messages=user("How many tokens is this?"))
    assert raw_count.parse().input_tokens > 0
    made.append(Made("anthropic-python", raw_count.headers["x-dario-account"], SONNET, 200, count_tokens=True))
    # 5. The upstream refuses one request with a 400.
    upstream.script({"status": 400})
    with pytest.raises(anthropic.BadRequestError) as refused:
        a.messages.create(model=SONNET, max_tokens=64, messages=user("This one fails"))
    made.append(Made("anthropic-python", refused.value.response.headers["x-dario-account"], SONNET, 400))
    # 6. OpenAI, not streaming.
    raw_chat = o.chat.completions.with_raw_response.create(model=HAIKU, messages=user("Hi from OpenAI"))
    chat = raw_chat.parse()
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 0  # so prompt_tokens is all plain input
    made.append(Made("openai-python", raw_chat.headers["x-dario-account"], HAIKU, 200,
                     chat.usage.prompt_tokens, chat.usage.completion_tokens))
    # 7. OpenAI, streaming, with the usage chunk.
    stream = o.chat.completions.create(model=HAIKU, messages=user("Stream it [[long:7]]"), stream=True,
                                       stream_options={"include_usage": True})
    usage = list(stream)[-1].usage
    assert usage is not None and usage.completion_tokens == 7
    made.append(Made("openai-python", stream.response.headers["x-dario-account"], HAIKU, 200,
                     usage.prompt_tokens, usage.completion_tokens, streaming=True))
    # 8. OpenAI, streaming, without asking for usage (what most OpenAI tools do): the client sees no
    #    numbers, yet dario must count what the upstream reported. Output is the 5 words asked for;
    #    input is what the fake reports for a body of that size (max(1, bytes // 4)).
    stream = o.chat.completions.create(model=HAIKU, messages=user("Quietly [[long:5]]"), stream=True)
    assert all(c.usage is None for c in stream)
    sent = upstream.requests()[-1]
    assert "[[long:5]]" in orjson.dumps(sent["body"]).decode()
    made.append(Made("openai-python", stream.response.headers["x-dario-account"], HAIKU, 200,
                     max(1, sent["size"] // 4), 5, streaming=True))

    a.close()
    o.close()  # an idle keep-alive connection would hold the daemon's stop for its grace period

    # The header names the account whose key reached the upstream, request by request; the one
    # 429 came from the other account.
    alias_of = {v: k for k, v in KEYS.items()}
    seen = [r for r in upstream.requests() if r["path"].startswith("/v1/messages")]
    assert [alias_of[r["key"]] for r in seen if r["status"] != 429] == [m.account for m in made]
    limited = [alias_of[r["key"]] for r in seen if r["status"] == 429]
    assert limited == [next(alias for alias in KEYS if alias != made[0].account)]
    # That account is exhausted for a second; wait it out so the views below show a settled pool.
    deadline = time.monotonic() + 10
    while {acc["status"] for acc in d.ctl_json("status")["accounts"]} != {"ok"}:
        assert time.monotonic() < deadline, d.ctl_json("status")["accounts"]
        time.sleep(0.1)
    return made


@dataclass
class Scenario:
    d: Dariod
    made: list[Made]
    upstream: Any


@pytest.fixture(scope="module")
def scenario(fake: Any) -> Iterator[Scenario]:
    fake.clear()
    d = Dariod().start()
    try:
        for alias, key in KEYS.items():
            d.login(alias, key, fake.url)
        made = _make_known_requests(d, fake)
        yield Scenario(d, made, fake)
    finally:
        d.cleanup()


def _expected_counters(rows: list[Made]) -> dict[str, Any]:
    return {
        "requests": len(rows),
        "errors": sum(m.error for m in rows),
        "input_tokens": sum(m.input_tokens for m in rows),
        "output_tokens": sum(m.output_tokens for m in rows),
        "cache_write_tokens": sum(m.cache_write for m in rows),
        "cache_read_tokens": sum(m.cache_read for m in rows),
        "cost_usd": pytest.approx(sum(m.cost for m in rows), abs=2e-6),
        "cache_read_share": _share(rows),
        "cache_saved_usd": pytest.approx(sum(m.cache_saved for m in rows), abs=2e-6),
    }


def _share(rows: list[Made]) -> Any:
    reads = sum(m.cache_read for m in rows)
    prompt = sum(m.input_tokens + m.cache_write + m.cache_read for m in rows)
    return None if not prompt else pytest.approx(reads / prompt, abs=1e-6)


def _counters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: group[k] for k in ("requests", "errors", "input_tokens", "output_tokens", "cache_write_tokens",
                                  "cache_read_tokens", "cost_usd", "cache_read_share", "cache_saved_usd")}


def _check_usage(usage: dict[str, Any], made: list[Made]) -> None:
    assert usage["problem"] is None
    assert usage["window"] == "1h"
    assert _counters(usage["totals"]) == _expected_counters(made)
    # The price formula by hand: sonnet 3/15 $/Mtok, cache write 3.75, cache read 0.30; haiku 1/5.
    assert usage["totals"]["cost_usd"] > 0
    assert usage["totals"]["cache_saved_usd"] > 0 and 0 < usage["totals"]["cache_read_share"] < 1  # the cache hit

    for name, key in (("by_account", lambda m: m.account), ("by_model", lambda m: m.model),
                      ("by_client", lambda m: m.client)):
        groups: dict[str, list[Made]] = collections.defaultdict(list)
        for m in made:
            groups[key(m)].append(m)
        got = {g["key"]: g for g in usage[name]}
        assert set(got) == set(groups), name
        for k, rows in groups.items():
            g = got[k]
            assert _counters(g) == _expected_counters(rows), (name, k)
            errors = collections.Counter("invalid_request_error" for m in rows if m.error)
            assert g["errors_by_type"] == dict(errors), (name, k)
            successes = [m for m in rows if not m.error]
            if successes:
                assert isinstance(g["p50_latency_ms"], float) and g["p50_latency_ms"] > 0, (name, k)
                assert g["p95_latency_ms"] >= g["p50_latency_ms"], (name, k)
            if any(m.streaming for m in successes):
                assert g["p50_ttft_ms"] is not None and g["p95_ttft_ms"] >= g["p50_ttft_ms"], (name, k)
    assert {g["key"] for g in usage["by_client"]} == {"anthropic-python", "openai-python"}
    assert {g["key"] for g in usage["by_model"]} == {SONNET, HAIKU}

    recent = usage["recent"]
    assert len(recent) == len(made)
    assert sorted((r["client"], r["account"], r["model"], r["status"]) for r in recent) == sorted(
        (m.client, m.account, m.model, m.status) for m in made
    )
    assert sorted(r["failovers"] for r in recent) == sorted(m.failovers for m in made)
    counted = [r for r in recent if r["endpoint"] == "count_tokens"]
    assert len(counted) == 1 and counted[0]["input_tokens"] == 0 and counted[0]["cost_usd"] == 0
    failed = [r for r in recent if r["status"] >= 400]
    assert [(r["status"], r["error_type"]) for r in failed] == [(400, "invalid_request_error")]

    # The series holds the same tokens, split by account and model.
    points = usage["series"]["points"]
    assert sum(p["requests"] for p in points) == len(made)
    assert sum(p["input_tokens"] for p in points) == usage["totals"]["input_tokens"]
    assert sum(p["output_tokens"] for p in points) == usage["totals"]["output_tokens"]


def test_ctl_usage_json_counts_every_request_exactly(scenario: Scenario) -> None:
    made = scenario.made
    assert len(made) == 8
    assert sum(m.error for m in made) == 1
    _check_usage(_usage_json(scenario.d), made)


def test_analytics_endpoint_agrees_with_ctl_and_lists_accounts(scenario: Scenario) -> None:
    status, headers, body = _get(scenario.d, "/analytics?window=1h")
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    http_usage = orjson.loads(body)
    _check_usage(http_usage, scenario.made)
    ctl_usage = _usage_json(scenario.d)
    assert http_usage["totals"] == ctl_usage["totals"]
    assert sorted(a["alias"] for a in http_usage["accounts"]) == sorted(KEYS)
    for acc in http_usage["accounts"]:
        assert acc["status"] == "ok"
        assert set(acc["windows"]) >= {"requests", "tokens", "input-tokens", "output-tokens"}
    # No real key anywhere in what the dashboard reads.
    assert not any(k.encode() in body for k in KEYS.values())

    status, _, body = _get(scenario.d, "/analytics?window=1y")
    assert status == 400 and b"unknown window" in body


def test_ctl_usage_human_shows_the_totals(scenario: Scenario) -> None:
    out = _ctl_wide(scenario.d, "usage", "--window", "1h")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Usage, last 1h" in text
    for word in ("By account", "By model", "By client", "anthropic-python", "openai-python", SONNET, HAIKU,
                 "work", "side", "invalid_request_error"):
        assert word in text, word


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def test_metrics_match_the_requests(scenario: Scenario) -> None:
    status, headers, body = _get(scenario.d, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples = _samples(body.decode())
    made = scenario.made

    requests = samples["dario_requests_total"]
    assert sum(v for _, v in requests) == len(made)
    by_status = collections.Counter()
    for labels, v in requests:
        by_status[labels["status"]] += int(v)
    assert by_status == collections.Counter(str(m.status) for m in made)
    per_account = collections.Counter()
    for labels, v in requests:
        per_account[labels["account"]] += int(v)
    assert per_account == collections.Counter(m.account for m in made)
    dialects = collections.Counter()
    for labels, v in requests:
        dialects[labels["dialect"]] += int(v)
    assert dialects == {"anthropic": 5, "openai": 3}
    assert sum(v for _, v in samples["dario_failovers_total"]) == 1

    tokens: collections.Counter[str] = collections.Counter()
    for labels, v in samples["dario_tokens_total"]:
        tokens[labels["kind"]] += int(v)
    assert tokens["input"] == sum(m.input_tokens for m in made)
    assert tokens["output"] == sum(m.output_tokens for m in made)
    assert tokens["cache_write_5m"] == sum(m.cache_write for m in made)
    assert tokens["cache_read"] == sum(m.cache_read for m in made)

    headroom = {labels["account"]: v for labels, v in samples["dario_account_headroom"]}
    assert set(headroom) == set(KEYS)
    assert all(0.0 < v <= 1.0 for v in headroom.values())
    for alias in KEYS:
        states = {labels["status"]: v for labels, v in samples["dario_account_status"] if labels["account"] == alias}
        assert states["ok"] == 1.0
        assert sum(states.values()) == 1.0
        remaining = {labels["window"] for labels, v in samples["dario_account_window_remaining"]
                     if labels["account"] == alias}
        assert remaining == {"requests", "tokens", "input-tokens", "output-tokens"}
    assert samples["dario_queue_depth"] == [({}, 0.0)]
    lat = [v for labels, v in samples["dario_request_latency_seconds_count"]]
    assert sum(lat) == len(made)


# -- burn and forecast ------------------------------------------------------------------


def test_forecast_warns_when_output_tokens_run_out_before_reset(dariod: Dariod, upstream: Any) -> None:
    key = "sk-ant-analytics-burn"
    # 300 output tokens left in an hour-long window; the test then burns 200 of them in one request,
    # so at that rate (200 per 15 min) the last 100 last about 7.5 minutes: well before the reset.
    upstream.set_limits(key, output_tokens=1000, remaining={"output_tokens": 300}, reset_in=3600)
    dariod.login("work", key, upstream.url)
    with anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0, timeout=30) as a:
        msg = a.messages.create(model=SONNET, max_tokens=256,
                                messages=[{"role": "user", "content": "burn [[long:200]]"}])
    assert msg.usage.output_tokens == 200

    usage = _usage_json(dariod)
    burn = usage["burn"]["work"]
    assert burn["output_tpm"] == pytest.approx(200 / 15)
    entries = {e["window"]: e for e in usage["forecast"]["work"]}
    out = entries["output-tokens"]
    assert out["remaining"] == 100 and out["limit"] == 1000
    assert out["before_reset"] is True
    assert out["runs_out_in_s"] == pytest.approx(100 / (200 / 15) * 60, rel=0.01)
    assert out["runs_out_at"] < out["reset"]
    assert out["reset"] - usage["until"] == pytest.approx(3600, abs=10)
    # The other windows have plenty left at this burn.
    for name in ("requests", "tokens", "input-tokens"):
        assert entries[name]["before_reset"] is False, name

    human = _ctl_wide(dariod, "usage", "--window", "1h")
    assert human.returncode == 0, human.stderr
    assert re.search(r"work: output tokens run out in (7|8) min, reset in (59 min|1 h)", human.stdout), human.stdout


# -- kill -9 ----------------------------------------------------------------------------


def test_kill_9_loses_at_most_the_last_moments(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    key = "sk-ant-analytics-kill"
    # Room for far more requests than the drive makes: a 429 here would only cloud the count.
    upstream.set_limits(key, requests=1_000_000, tokens=100_000_000, input_tokens=100_000_000,
                        output_tokens=100_000_000)
    d = dariod_factory()
    d.login("work", key, upstream.url)
    body = orjson.dumps({"model": SONNET, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    done: list[float] = []  # monotonic time each successful request completed
    started = [0]
    errors: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def drive() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        while not stop.is_set():
            with lock:
                started[0] += 1
            try:
                conn.request("POST", "/v1/messages", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                return  # the daemon is gone
            if resp.status != 200:
                errors.append(resp.status)
                return
            t = time.monotonic()
            with lock:
                done.append(t)

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    t_kill = time.monotonic()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    assert d.proc.returncode == -signal.SIGKILL
    assert errors == []

    completed = len(done)
    last_moments = sum(1 for t in done if t > t_kill - 1.5)
    assert completed > 50, "the drive made too few requests to say anything"

    again = dariod_factory(home=d.home)  # same config, state and socket path; the old socket is stale
    rows = _usage_json(again)["totals"]["requests"]
    assert completed - last_moments <= rows <= started[0], (completed, last_moments, rows, started[0])

    # The database took no damage: new rows land next to the old ones.
    with anthropic.Anthropic(base_url=again.url, api_key="x", max_retries=0, timeout=30) as a:
        a.messages.create(model=SONNET, max_tokens=16, messages=[{"role": "user", "content": "after"}])
    usage = _usage_json(again)
    assert usage["problem"] is None
    assert usage["totals"]["requests"] == rows + 1

    # A normal stop loses nothing: the buffered tail is written on the way out.
    with anthropic.Anthropic(base_url=again.url, api_key="x", max_retries=0, timeout=30) as a:
        for _ in range(5):
            a.messages.create(model=SONNET, max_tokens=16, messages=[{"role": "user", "content": "tail"}])
    assert again.stop() == 0
    third = dariod_factory(home=d.home)
    assert _usage_json(third)["totals"]["requests"] == rows + 6


def test_stop_is_prompt_while_a_client_holds_an_idle_connection(
    dariod_factory: Callable[..., Dariod], upstream: Any
) -> None:
    d = dariod_factory(env={"DARIO_GRACE_PERIOD": "2"})
    d.login("work", "sk-ant-analytics-stop", upstream.url)
    with anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0, timeout=30) as a:
        a.messages.create(model=SONNET, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        # Nothing is in flight; the SDK just keeps its connection for the next request.
        t0 = time.monotonic()
        assert d.stop() == 0
        took = time.monotonic() - t0
    assert took < 1.5, f"dariod took {took:.1f} s to stop with no request in flight"
