"""A cut-off or garbled answer is never passed off as complete (issue #11, A1–A4).

A real `dariod` against the fake upstream's hostile actions; what the clients see is checked with
the official anthropic and openai SDKs, which is what decides whether a broken answer "looks
finished" to the tools people use.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from typing import Any

import anthropic
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Dariod, wait_until

pytestmark = pytest.mark.timeout(120)

MODEL = "claude-sonnet-5-5"
KEYS = {"a": "sk-trust-a", "b": "sk-trust-b"}


@pytest.fixture
def one(dariod: Dariod, upstream: Any) -> tuple[Dariod, Any]:
    dariod.login("a", KEYS["a"], upstream.url)
    return dariod, upstream


def raw_post(d: Dariod, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request("POST", path, body=orjson.dumps(body),
                     headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ask(text: str, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]}


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": text}]}


def attempts(upstream: Any, marker: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests()
            if r["path"] == "/v1/messages" and marker in orjson.dumps(r["body"]).decode()]


def sse_events(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


def errors_metric(d: Dariod) -> dict[tuple[str, str], float]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "dario_request_errors_total":
                out[(s.labels["dialect"], s.labels["type"])] = s.value
    return out


# --- A1: a stream that ends without message_stop -------------------------------------------------


def test_truncated_stream_ends_with_an_error_event_in_the_anthropic_dialect(one: Any) -> None:
    d, upstream = one
    upstream.script({"truncate": 6}, key=KEYS["a"])
    marker = uuid.uuid4().hex
    status, body = raw_post(d, "/v1/messages", ask(marker + " [[long:8]]"))
    assert status == 200
    events = sse_events(body)
    assert [n for n, _ in events[:4]] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert "message_stop" not in [n for n, _ in events]
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" in data["error"]["message"] and "incomplete" in data["error"]["message"]
    assert len(attempts(upstream, marker)) == 1  # the client owned the stream: never sent again
    # The SDK raises on it instead of returning a short answer.
    upstream.script({"truncate": 6}, key=KEYS["a"])
    client = anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "[[long:8]]"}]
    with pytest.raises(anthropic.APIStatusError, match="message_stop"):
        with client.messages.stream(model=MODEL, max_tokens=64, messages=messages) as s:
            s.get_final_text()


def test_truncated_stream_raises_in_the_openai_sdk_and_never_finishes(one: Any) -> None:
    d, upstream = one
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
    upstream.script({"truncate": 6}, key=KEYS["a"])
    finishes: list[Any] = []
    with pytest.raises(openai.APIError, match="message_stop"):
        for chunk in client.chat.completions.create(**chat("[[long:8]]")):
            finishes.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
    assert finishes == []
    # A tool call cut mid-arguments: no "tool_calls" finish, no [DONE].
    upstream.script({"truncate": 11}, key=KEYS["a"])  # the tool arguments cut at {"city":"fake-ci
    status, body = raw_post(d, "/v1/chat/completions", {**chat("weather [[tool]]"), "tools": [{
        "type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]})
    assert status == 200
    frames = sse_events(body)
    assert all(data != "[DONE]" for _, data in frames)
    assert not any(c.get("finish_reason") for _, data in frames if isinstance(data, dict)
                   for c in data.get("choices", []))
    deltas = [c["delta"] for _, data in frames if isinstance(data, dict) for c in data.get("choices", [])]
    assert any(d.get("tool_calls") and d["tool_calls"][0]["function"].get("arguments") for d in deltas)
    assert frames[-1][1]["error"]["type"] == "server_error"  # OpenAI's name for a 5xx-class failure


def test_truncated_stream_counts_as_an_error(one: Any) -> None:
    d, upstream = one
    upstream.script({"truncate": 6}, key=KEYS["a"])
    raw_post(d, "/v1/messages", ask("[[long:8]]"))
    upstream.script({"truncate": 6}, key=KEYS["a"])
    raw_post(d, "/v1/chat/completions", chat("[[long:8]]"))
    raw_post(d, "/v1/messages", ask("a complete one"))
    usage = d.ctl_json("usage", "--window", "1h")
    assert usage["totals"]["requests"] == 3
    assert usage["totals"]["errors"] == 2
    assert errors_metric(d) == {("anthropic", "api_error"): 1.0, ("openai", "api_error"): 1.0}


def test_truncated_before_content_fails_over(dariod: Dariod, upstream: Any) -> None:
    for alias in ("a", "b"):
        dariod.login(alias, KEYS[alias], upstream.url)
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"truncate": 1}, key=KEYS["a"])
    marker = uuid.uuid4().hex
    status, body = raw_post(dariod, "/v1/messages", ask(marker))
    assert status == 200 and sse_events(body)[-1][0] == "message_stop"
    assert [r["key"] for r in attempts(upstream, marker)] == [KEYS["a"], KEYS["b"]]


# --- A2: malformed event data after commit --------------------------------------------------------


def test_malformed_event_after_commit_is_an_error_in_both_dialects(one: Any) -> None:
    d, upstream = one
    # Paced, so the garbage comes after the stream was committed to the client.
    upstream.script({"malformed": 4, "event_delay": 0.02}, key=KEYS["a"])
    status, body = raw_post(d, "/v1/messages", ask("[[long:8]]"))
    assert status == 200
    assert b"unterminated" not in body  # the garbage never reaches the client
    events = sse_events(body)  # every event parses
    assert [n for n, _ in events[:4]] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert events[-1][0] == "error" and "not JSON" in events[-1][1]["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
    # Paced, so the garbage comes after the stream was committed to the client.
    upstream.script({"malformed": 4, "event_delay": 0.02}, key=KEYS["a"])
    with pytest.raises(openai.APIError, match="not JSON"):
        for _ in client.chat.completions.create(**chat("[[long:8]]")):
            pass
    assert errors_metric(d) == {("anthropic", "api_error"): 1.0, ("openai", "api_error"): 1.0}


# --- A3: caps and a dripping upstream -------------------------------------------------------------


def test_a_line_that_never_ends_is_capped(one: Any) -> None:
    d, upstream = one
    upstream.script({"huge_event": 6 * 1024 * 1024, "huge_event_open": True}, key=KEYS["a"])
    status, body = raw_post(d, "/v1/messages", ask("hi"))
    assert status == 200 and len(body) < 64 * 1024  # nothing of the huge line was relayed
    name, data = sse_events(body)[-1]
    assert name == "error" and "larger than dario accepts" in data["error"]["message"]


def test_a_dripping_stream_arrives_whole(one: Any) -> None:
    d, upstream = one
    upstream.script({"drip": 1}, key=KEYS["a"])
    client = anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "[[long:5]]"}]) as s:
        assert s.get_final_text() == " lorem ipsum dolor sit amet"


def test_a_1_byte_chunk_drip_does_not_hold_up_another_client(one: Any) -> None:
    d, upstream = one
    # 60 KB of text as 1-byte HTTP chunks, packed tightly: once, this held /health for 3.6 s.
    upstream.script({"huge_event": 60_000, "drip": 1}, key=KEYS["a"])
    latencies: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        while not done.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            latencies.append(time.perf_counter() - t0)
            done.wait(0.02)
        conn.close()

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        status, body = raw_post(d, "/v1/messages", ask("hi"))
    finally:
        done.set()
        poller.join(30)
    assert status == 200 and sse_events(body)[-1][0] == "message_stop"
    assert b"x" * 60_000 in body
    assert latencies and max(latencies) < 0.5, f"/health took up to {max(latencies):.2f} s during the drip"


# --- A4: a whole answer is capped -----------------------------------------------------------------


def test_a_huge_non_streaming_answer_is_refused(one: Any) -> None:
    d, upstream = one
    for chunked in (False, True):  # refused from Content-Length, or once 64 MiB were read
        upstream.script({"huge_body": 65 * 1024 * 1024, "huge_body_chunked": chunked}, key=KEYS["a"])
        status, body = raw_post(d, "/v1/messages", ask("hi", stream=False))
        assert status == 502
        err = orjson.loads(body)
        assert err["type"] == "error" and err["error"]["type"] == "api_error"
        assert "larger than 64 MiB" in err["error"]["message"]
    status, body = raw_post(d, "/v1/messages", ask("hi", stream=False))  # a normal one still works
    assert status == 200, body


# --- unsolicited bytes on an idle upstream connection -----------------------------------------------


def test_a_late_response_on_an_idle_upstream_connection_reaches_no_one(one: Any) -> None:
    d, upstream = one
    for stream in (False, True):
        upstream.script({"late_bytes": True, "late_delay": 0.05}, key=KEYS["a"])
        status, body = raw_post(d, "/v1/messages", ask("first", stream=stream))
        assert status == 200
        wait_until(lambda: upstream.requests()[-1].get("late_bytes_sent"), 10, "the fake's late bytes")
        status, body = raw_post(d, "/v1/messages", ask("second", stream=False))
        assert status == 200 and b"late" not in body
        assert orjson.loads(body)["content"][0]["text"] == "Hello from the fake upstream."
