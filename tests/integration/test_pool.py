"""The pool through real processes: routing, failover, cooldowns, the wait queue, persistence."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import anthropic
import orjson
import pytest

from tests.support import Dariod

MODEL = "claude-sonnet-5-5"
KEYS = {"a": "sk-pool-a", "b": "sk-pool-b", "c": "sk-pool-c"}


def post(url: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url + "/v1/messages", data=orjson.dumps(body), method="POST",
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def ask(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]}


def pool_of(dariod: Dariod, upstream: Any, *aliases: str) -> None:
    for alias in aliases:
        dariod.login(alias, KEYS[alias], upstream.url)


def attempts(upstream: Any, marker: str) -> list[dict[str, Any]]:
    out = []
    for r in upstream.requests():
        body = r.get("body") or {}
        if r["path"] == "/v1/messages" and marker in orjson.dumps(body).decode():
            out.append(r)
    return out


def alias_of(key: str | None) -> str:
    return {v: k for k, v in KEYS.items()}[key or ""]


def account(dariod: Dariod, alias: str) -> dict[str, Any]:
    accounts = dariod.ctl_json("accounts", "list")["accounts"]
    return next(a for a in accounts if a["alias"] == alias)


def test_429_fails_over_and_marks_the_account_exhausted(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    assert dariod.ctl("accounts", "prefer", "a").returncode == 0
    upstream.script({"status": 429, "retry_after": 30}, key=KEYS["a"])
    marker = uuid.uuid4().hex
    status, headers, body = post(dariod.url, ask(marker))
    assert status == 200, body
    assert headers["x-dario-account"] == "b"
    tried = attempts(upstream, marker)
    assert [alias_of(r["key"]) for r in tried] == ["a", "b"]
    a = account(dariod, "a")
    assert a["status"] == "exhausted" and a["until"] is not None
    assert 20 < a["until"] - time.time() <= 31
    # While a is exhausted, everything goes to b even though a is preferred.
    status, headers, _ = post(dariod.url, ask("again"))
    assert status == 200 and headers["x-dario-account"] == "b"


def test_in_band_overload_before_content_fails_over_invisibly(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"stream_error": "overloaded_error", "after_events": 1}, key=KEYS["a"])
    client = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
    marker = uuid.uuid4().hex
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": marker}]) as s:
        text = s.get_final_text()
        served_by = s.response.headers["x-dario-account"]
    assert text  # the client saw a normal, complete answer
    assert served_by == "b"
    assert [alias_of(r["key"]) for r in attempts(upstream, marker)] == ["a", "b"]
    assert account(dariod, "a")["status"] == "cooling"


def test_error_after_content_is_not_retried_and_ends_well_formed(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"stream_error": "overloaded_error", "after_events": 4}, key=KEYS["a"])
    client = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
    marker = uuid.uuid4().hex + " [[long:6]]"
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": marker}]) as s:
            for event in s:
                seen.append(event.type)
    assert "content_block_start" in seen  # bytes had reached the client
    assert "overloaded" in str(info.value).lower()
    assert len(attempts(upstream, marker.split()[0])) == 1  # never sent again


def test_connection_cut_mid_stream_gives_an_error_event_and_no_resend(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"cut_after_events": 5}, key=KEYS["a"])
    marker = uuid.uuid4().hex
    status, _, body = post(dariod.url, ask(marker + " [[long:8]]", stream=True))
    assert status == 200
    events = [line for line in body.decode().split("\n") if line.startswith("event: ")]
    assert events[-1] == "event: error"
    assert body.endswith(b"\n\n")
    assert len(attempts(upstream, marker)) == 1


def test_401_marks_needs_login_and_others_serve(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"status": 401}, key=KEYS["a"])
    status, headers, _ = post(dariod.url, ask("hello"))
    assert status == 200 and headers["x-dario-account"] == "b"
    a = account(dariod, "a")
    assert a["status"] == "needs_login" and "401" in (a["reason"] or "")
    # Logging in again fixes it at once.
    dariod.login("a", KEYS["a"], upstream.url)
    assert account(dariod, "a")["status"] == "ok"


def test_queue_waits_for_the_earliest_reset(dariod_factory: Any, upstream: Any) -> None:
    dariod = dariod_factory(args=["--queue-timeout", "20"])
    pool_of(dariod, upstream, "a")
    upstream.script({"status": 429, "retry_after": 2}, key=KEYS["a"])
    started = time.monotonic()
    status, _, body = post(dariod.url, ask("wait for me"))
    waited = time.monotonic() - started
    assert status == 200, body
    assert 1.0 < waited < 10.0


def test_queue_deadline_answers_429_with_retry_after_and_reasons(dariod_factory: Any, upstream: Any) -> None:
    dariod = dariod_factory(args=["--queue-timeout", "1"])
    pool_of(dariod, upstream, "a", "b")
    upstream.script({"status": 429, "retry_after": 120}, key=KEYS["a"])
    upstream.script({"status": 429, "retry_after": 90}, key=KEYS["b"])
    post(dariod.url, ask("exhaust both"))  # both accounts answer 429 and become exhausted
    before = len(upstream.requests())
    status, headers, body = post(dariod.url, ask("now wait"))
    assert status == 429
    assert 80 <= int(headers["retry-after"]) <= 91  # the earliest reset
    error = orjson.loads(body)["error"]
    assert error["type"] == "rate_limit_error"
    assert "a: exhausted" in error["message"] and "b: exhausted" in error["message"]
    assert len(upstream.requests()) == before  # nothing was sent upstream while exhausted


def test_a_client_that_hangs_up_leaves_the_queue(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a")
    upstream.script({"status": 429, "retry_after": 120}, key=KEYS["a"])
    # The 429 exhausts the only account, so the request queues; the client gives up.
    with pytest.raises(OSError):
        post(dariod.url, ask("impatient"), timeout=1.0)
    deadline = time.monotonic() + 10
    depth = None
    while time.monotonic() < deadline:
        depth = dariod.ctl_json("status")["pool"]["queue_depth"]
        if depth == 0:
            break
    assert depth == 0


def test_prefer_enable_disable_apply_at_once_and_persist(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    assert dariod.ctl("accounts", "prefer", "b").returncode == 0
    for _ in range(3):
        assert post(dariod.url, ask("x"))[1]["x-dario-account"] == "b"
    assert dariod.ctl("accounts", "disable", "b").returncode == 0
    assert post(dariod.url, ask("x"))[1]["x-dario-account"] == "a"
    dariod.stop()
    restarted = Dariod(dariod.home).start()
    try:
        accounts = {a["alias"]: a for a in restarted.ctl_json("accounts", "list")["accounts"]}
        assert accounts["b"]["preferred"] is True and accounts["b"]["status"] == "disabled"
        assert restarted.ctl("accounts", "enable", "b").returncode == 0
        assert post(restarted.url, ask("x"))[1]["x-dario-account"] == "b"
        assert restarted.ctl("accounts", "prefer", "--none").returncode == 0
        assert restarted.ctl_json("accounts", "list")["accounts"][0]["preferred"] is False
    finally:
        restarted.stop()


def test_exhaustion_survives_a_restart_and_refresh_clears_it(dariod_factory: Any, upstream: Any) -> None:
    dariod = dariod_factory(args=["--queue-timeout", "0.5"])
    pool_of(dariod, upstream, "a")
    upstream.script({"status": 429, "retry_after": 300}, key=KEYS["a"])
    post(dariod.url, ask("exhaust"))
    dariod.stop()
    restarted = Dariod(dariod.home, args=["--queue-timeout", "0.5"]).start()
    try:
        assert account(restarted, "a")["status"] == "exhausted"
        before = len(upstream.requests())
        status, headers, _ = post(restarted.url, ask("do not hammer"))
        assert status == 429 and int(headers["retry-after"]) > 200
        assert len(upstream.requests()) == before
        result = restarted.ctl("refresh", "a")
        assert result.returncode == 0, result.stdout + result.stderr
        assert account(restarted, "a")["status"] == "ok"
        assert post(restarted.url, ask("back"))[0] == 200
    finally:
        restarted.stop()


def test_headroom_routing_follows_live_headers(dariod: Dariod, upstream: Any) -> None:
    upstream.set_limits(KEYS["a"], requests=1000, remaining={"requests": 100})
    upstream.set_limits(KEYS["b"], requests=1000, remaining={"requests": 900})
    pool_of(dariod, upstream, "a", "b")  # login reads each account's windows
    served = collections.Counter(post(dariod.url, ask("x"))[1]["x-dario-account"] for _ in range(5))
    assert served == {"b": 5}
    accounts = {a["alias"]: a for a in dariod.ctl_json("accounts", "list")["accounts"]}
    assert accounts["a"]["headroom"] < accounts["b"]["headroom"]
    assert accounts["b"]["windows"]["requests"]["limit"] == 1000


def test_200_concurrent_requests_survive_429_and_529_midway(dariod: Dariod, upstream: Any) -> None:
    """Half streaming, over 3 accounts; one starts answering 429 midway, another 529."""
    pool_of(dariod, upstream, "a", "b", "c")
    run = uuid.uuid4().hex[:8]
    done = threading.Event()
    completed = [0]
    lock = threading.Lock()

    def inject() -> None:
        # Midway: once a quarter of the requests are done, a starts 429 and b starts 529.
        while not done.is_set():
            with lock:
                if completed[0] >= 50:
                    break
            time.sleep(0.005)
        upstream.script({"status": 429, "retry_after": 30}, key=KEYS["a"])
        upstream.script(*[{"status": 529}] * 40, key=KEYS["b"])

    async def one(client: anthropic.AsyncAnthropic, i: int) -> str:
        content = f"{run}-{i} [[long:3]]"
        if i % 2:
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": content}]
            ) as s:
                text = await s.get_final_text()
        else:
            msg = await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": content}]
            )
            text = "".join(b.text for b in msg.content if b.type == "text")
        with lock:
            completed[0] += 1
        return text

    async def main() -> list[str | BaseException]:
        client = anthropic.AsyncAnthropic(base_url=dariod.url, api_key="x", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(client, i) for i in range(200)), return_exceptions=True)
        finally:
            await client.close()

    injector = threading.Thread(target=inject)
    injector.start()
    try:
        results = asyncio.run(main())
    finally:
        done.set()
        injector.join()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert all(results)
    by_marker: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in upstream.requests():
        text = orjson.dumps(r.get("body") or {}).decode()
        if run in text:
            marker = text.split(run + "-", 1)[1].split(" ", 1)[0]
            by_marker[marker].append(r)
    assert len(by_marker) == 200
    for marker, tries in by_marker.items():
        keys = [t["key"] for t in tries]
        assert len(keys) == len(set(keys)), f"request {marker} was sent twice to one account"
        # Every attempt before the last failed before any byte could reach the client.
        assert all(t["status"] in (429, 529) for t in tries[:-1]), (marker, [t["status"] for t in tries])
        assert tries[-1]["status"] == 200
    pending = upstream.pending()
    upstream.clear()
    assert any(p["key"] == KEYS["b"] for p in pending) or account(dariod, "b")["errors"] > 0


def test_a_pool_reports_its_combined_windows_to_clients(dariod: Dariod, upstream: Any) -> None:
    upstream.set_limits(KEYS["a"], requests=1000, remaining={"requests": 300})
    upstream.set_limits(KEYS["b"], requests=1000, remaining={"requests": 900})
    pool_of(dariod, upstream, "a")
    _, headers, _ = post(dariod.url, ask("one account"))
    assert headers["anthropic-ratelimit-requests-limit"] == "1000"  # the upstream's own, as it sent it
    pool_of(dariod, upstream, "b")
    _, headers, _ = post(dariod.url, ask("two accounts"))
    assert headers["anthropic-ratelimit-requests-limit"] == "2000"
    assert 1000 < int(headers["anthropic-ratelimit-requests-remaining"]) <= 1200


def test_repeated_overloads_on_a_lone_account_are_passed_through_at_once(dariod_factory: Any,
                                                                          upstream: Any) -> None:
    """Six 529s in a row used to hold the seventh request 16 s, then answer a false 429."""
    dariod = dariod_factory(args=["--queue-timeout", "5"])
    pool_of(dariod, upstream, "a")
    upstream.script(*[{"status": 529}] * 7, key=KEYS["a"])
    marker = uuid.uuid4().hex
    started = time.monotonic()
    for i in range(7):
        status, headers, body = post(dariod.url, ask(f"{marker} {i}"))
        assert status == 529, body
        assert orjson.loads(body)["error"]["type"] == "overloaded_error"
        assert headers["x-dario-account"] == "a"
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, elapsed  # each was sent at once, not queued behind the cooldown
    assert len(attempts(upstream, marker)) == 7
    assert account(dariod, "a")["status"] == "cooling"
    # The account answers again: the next request goes through and lifts the cooldown.
    status, _, body = post(dariod.url, ask(marker + " ok"))
    assert status == 200, body
    assert account(dariod, "a")["status"] == "ok"
    assert "trying another account" not in dariod.stderr()
    assert failovers_total(dariod) == 0  # none of the eight moved to another account


def failovers_total(dariod: Dariod) -> float:
    with urllib.request.urlopen(dariod.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("dario_failovers_total "))


def test_overload_on_both_accounts_fails_over_once_then_passes_the_529_through(dariod: Dariod,
                                                                                upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b")
    upstream.script(*[{"status": 529}] * 4, key=KEYS["a"])
    upstream.script(*[{"status": 529}] * 4, key=KEYS["b"])
    for i in range(3):
        marker = uuid.uuid4().hex
        started = time.monotonic()
        status, _, body = post(dariod.url, ask(marker))
        assert status == 529, body
        assert time.monotonic() - started < 3.0
        assert sorted(alias_of(r["key"]) for r in attempts(upstream, marker)) == ["a", "b"], i
    log = dariod.stderr()
    assert "retrying on" in log and "no other account to try" in log
    assert failovers_total(dariod) == 3  # one move per request, from the first account to the second


def test_openai_clients_get_503_at_once_while_the_lone_account_is_overloaded(dariod: Dariod,
                                                                             upstream: Any) -> None:
    import openai

    pool_of(dariod, upstream, "a")
    upstream.script(*[{"status": 529}] * 6, key=KEYS["a"])
    client = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    started = time.monotonic()
    for _ in range(6):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 503
    assert time.monotonic() - started < 4.0  # none of them queued behind the growing cooldown
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content


def test_a_cached_conversation_stays_on_one_account_and_the_account_shows_it(dariod: Dariod, upstream: Any) -> None:
    pool_of(dariod, upstream, "a", "b", "c")
    cc = {"type": "ephemeral"}
    marker = uuid.uuid4().hex
    messages: list[dict[str, Any]] = []
    served = []
    for turn in range(5):
        if turn:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {turn}"}]})
        for m in messages:
            for block in m["content"]:
                block.pop("cache_control", None)
        messages.append({"role": "user", "content": [{"type": "text", "text": f"{marker} turn {turn}",
                                                      "cache_control": cc}]})
        body = {"model": MODEL, "max_tokens": 64, "messages": messages,
                "system": [{"type": "text", "text": "a long system prompt", "cache_control": cc}]}
        status, headers, _ = post(dariod.url, body)
        assert status == 200
        served.append(headers["x-dario-account"])
    assert len(set(served)) == 1, served  # without affinity the pool would rotate between equals
    counts = {alias: account(dariod, alias)["conversations"] for alias in ("a", "b", "c")}
    assert counts[served[0]] >= 2 and sum(counts.values()) == counts[served[0]], counts
