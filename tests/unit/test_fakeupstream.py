"""The fake upstream, driven directly: the official anthropic SDK for behaviour, raw HTTP for wire details.

Everything else in dario's test suite trusts this server to speak the Messages API faithfully, so
these tests pin down what the real clients see.
"""

from __future__ import annotations

import calendar
import http.client
import itertools
import json
import math
import re
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.fakeupstream import LATE_RESPONSE, MODEL_IDS, FakeUpstream
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-5-5"  # not deprecated in the SDK, so no warnings
KEY = "sk-test-1"
RESET_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
WINDOWS = ("requests", "tokens", "input-tokens", "output-tokens")
RAW_EVENTS = {
    "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
    "message_stop",
}  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as f:
        yield f


@pytest.fixture(autouse=True)
def _clean(fake: FakeUpstream) -> None:
    # One server per module: each test starts with no scripts, default limits and an empty log.
    fake.clear()


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0)
    yield c
    c.close()


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def raw(
    fake: FakeUpstream,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str | None] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP exchange; a header mapped to None is left out."""
    h: dict[str, str | None] = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        **(headers or {}),
    }
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers={k: v for k, v in h.items() if v is not None})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body strictly: `event:` then `data:`, blank line, type inside == event name."""
    out = []
    text = data.decode()
    assert text.endswith("\n\n")
    for chunk in text[:-2].split("\n\n"):
        lines = chunk.split("\n")
        assert len(lines) == 2, chunk
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), chunk
        name, payload = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def stream_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "stream": True, "messages": user(text), **extra}


# --- messages ------------------------------------------------------------------------------------


def test_create_text(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=user("hi"))
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello from the fake upstream."  # type: ignore[union-attr]
    assert (msg.model, msg.role, msg.stop_reason, msg.stop_sequence) == (MODEL, "assistant", "end_turn", None)
    entry = fake.requests()[-1]
    assert msg._request_id == f"req_fake_{entry['n']}"
    assert msg.usage.input_tokens == max(1, entry["size"] // 4)
    assert msg.usage.output_tokens == 3  # three text pieces
    assert entry["status"] == 200


def test_stream_wire_format(fake: FakeUpstream) -> None:
    status, headers, data = raw(fake, "POST", "/v1/messages", stream_body("go [[thinking]] [[tool]]"))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert re.fullmatch(r"req_fake_\d+", headers["request-id"])
    events = sse(data)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("ping") == 1
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    # Blocks: start(i) → delta(i)* → stop(i), indices 0, 1, 2 in order.
    blocks: list[tuple[str, list[dict[str, Any]]]] = []
    open_index = None
    for name, ev in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and ev["index"] == len(blocks)
            open_index = ev["index"]
            blocks.append((ev["content_block"]["type"], []))
        elif name == "content_block_delta":
            assert ev["index"] == open_index
            blocks[-1][1].append(ev["delta"])
        elif name == "content_block_stop":
            assert ev["index"] == open_index
            open_index = None
    assert [t for t, _ in blocks] == ["thinking", "text", "tool_use"]
    thinking_deltas = [d["type"] for d in blocks[0][1]]
    assert thinking_deltas[-1] == "signature_delta" and thinking_deltas.count("signature_delta") == 1
    assert set(thinking_deltas[:-1]) == {"thinking_delta"}
    tool_fragments = [d["partial_json"] for d in blocks[2][1]]
    assert tool_fragments[0] == "" and len(tool_fragments) >= 3
    final = events[-2][1]
    pieces = sum(1 for _, ds in blocks for d in ds if d["type"] != "signature_delta" and d.get("partial_json") != "")
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == pieces
    assert final["usage"]["input_tokens"] == start["usage"]["input_tokens"]
    # Non-streaming reports the same usage for the same request.
    body = stream_body("go [[thinking]] [[tool]]", stream=False)
    _, _, data2 = raw(fake, "POST", "/v1/messages", body)
    assert json.loads(data2)["usage"]["output_tokens"] == pieces


def test_each_event_is_its_own_chunk(fake: FakeUpstream) -> None:
    # Read the raw chunked body: one HTTP chunk per SSE event means timing is observable downstream.
    payload = json.dumps(stream_body("hi")).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
        b"x-api-key: %s\r\nanthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s"
        % (KEY.encode(), len(payload), payload)
    )
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    assert all(c.startswith(b"event: ") and c.endswith(b"\n\n") and c.count(b"event: ") == 1 for c in chunks)
    assert len(chunks) == len(sse(b"".join(chunks))) == 9  # start, block start, ping, 3 deltas, stop, delta, stop


def test_stream_text_sdk(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("hello")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake upstream." == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3


def test_stream_tool_sdk(client: anthropic.Anthropic) -> None:
    tool: Any = {
        "name": "lookup",
        "description": "Look a city up.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
    fragments: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("weather? [[tool]]"), tools=[tool]) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    call = final.content[1]
    assert call.type == "tool_use"
    assert call.name == "lookup" and call.id.startswith("toolu_")
    assert fragments[0] == "" and len(fragments) >= 3
    assert call.input == json.loads("".join(fragments))
    assert set(call.input) == {"city", "days"}
    assert final.stop_reason == "tool_use"


def test_stream_parallel_tools_sdk(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("both [[tools]]")) as stream:
        final = stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 2
    assert all(c.name == "get_weather" for c in calls)  # no tools in the request → get_weather
    assert calls[0].id != calls[1].id and calls[0].input != calls[1].input
    assert final.stop_reason == "tool_use"


def test_thinking_sdk(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": user("ponder [[thinking]]"),
    }
    seen: list[str] = []
    with client.messages.stream(**kwargs) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                seen.append(event.delta.type)
            elif event.type == "content_block_stop":
                seen.append("stop")
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    block = final.content[0]
    assert block.type == "thinking"
    assert block.thinking == "Let me think about this request carefully." and block.signature
    assert seen[seen.index("signature_delta") + 1] == "stop"  # signature right before the block's stop
    msg = client.messages.create(**kwargs)
    assert msg.content[0].type == "thinking" and msg.content[0].signature


def test_directives(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    echo = client.messages.create(model=MODEL, max_tokens=32, messages=user("[[echo]]"), metadata={"user_id": "u1"})
    sent = json.loads(echo.content[0].text)  # type: ignore[union-attr]
    assert sent == {
        "model": MODEL,
        "max_tokens": 32,
        "messages": user("[[echo]]"),
        "metadata": {"user_id": "u1"},
    }

    cache = client.messages.create(model=MODEL, max_tokens=32, messages=user("[[cache]]"))
    assert cache.usage.cache_creation_input_tokens == 50 and cache.usage.cache_read_input_tokens == 100
    assert cache.usage.cache_creation is not None
    assert cache.usage.cache_creation.ephemeral_5m_input_tokens == 50

    stop = client.messages.create(model=MODEL, max_tokens=32, messages=user("[[stop:XYZ]]"))
    assert (stop.stop_reason, stop.stop_sequence) == ("stop_sequence", "XYZ")
    assert client.messages.create(model=MODEL, max_tokens=32, messages=user("[[max]]")).stop_reason == "max_tokens"

    _, _, data = raw(fake, "POST", "/v1/messages", stream_body("[[long:50]]"))
    events = sse(data)
    assert sum(1 for n, e in events if n == "content_block_delta" and e["delta"]["type"] == "text_delta") == 50
    assert events[-2][1]["usage"]["output_tokens"] == 50

    # The directive is read from the LAST user message only.
    history = [*user("[[max]]"), {"role": "assistant", "content": "ok"}, *user("plain")]
    assert client.messages.create(model=MODEL, max_tokens=32, messages=history).stop_reason == "end_turn"


def test_count_tokens(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    result = client.messages.count_tokens(model=MODEL, messages=user("count me, please"))
    entry = fake.requests()[-1]
    assert entry["path"] == "/v1/messages/count_tokens" and "max_tokens" not in entry["body"]
    assert result.input_tokens == max(1, entry["size"] // 4)


# --- models --------------------------------------------------------------------------------------


def test_models_pagination(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    first = client.models.list(limit=3)
    assert first.has_more is True and [m.id for m in first.data] == MODEL_IDS[:3]
    assert first.last_id == MODEL_IDS[2] and first.first_id == MODEL_IDS[0]
    fake.clear()
    assert [m.id for m in client.models.list(limit=3)] == MODEL_IDS  # auto-pagination via after_id
    pages = [e for e in fake.requests() if e["path"] == "/v1/models"]
    assert len(pages) == math.ceil(len(MODEL_IDS) / 3)
    assert "after_id=" + MODEL_IDS[2] in pages[1]["query"]
    before = client.models.list(before_id=MODEL_IDS[5], limit=2)
    assert [m.id for m in before.data] == MODEL_IDS[3:5] and before.has_more is True
    info = client.models.retrieve(MODEL_IDS[0])
    assert (info.type, info.id) == ("model", MODEL_IDS[0]) and info.display_name and info.created_at
    assert client.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5-20250929"  # alias
    with pytest.raises(anthropic.NotFoundError) as err:
        client.models.retrieve("claude-nonexistent-1")
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# --- scripted faults -----------------------------------------------------------------------------


def test_scripted_429(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"status": 429, "retry_after": 5})
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    h = err.value.response.headers
    assert h["retry-after"] == "5"
    assert h["anthropic-ratelimit-requests-remaining"] == "0"
    reset = calendar.timegm(time.strptime(h["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 3 <= reset - time.time() <= 6
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == h["request-id"]
    assert fake.pending() == []  # consumed: the next request is normal
    assert client.messages.create(model=MODEL, max_tokens=16, messages=user("hi")).stop_reason == "end_turn"


def test_spend_limit(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"status": 429, "spend_limit": True})
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert "retry-after" not in err.value.response.headers
    error: Any = err.value.body
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
    assert "spend limit" in error["error"]["message"]


@pytest.mark.parametrize(
    ("status", "etype", "exc"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (500, "api_error", anthropic.InternalServerError),
        (502, "api_error", anthropic.InternalServerError),
        (503, "api_error", anthropic.ServiceUnavailableError),
        (504, "timeout_error", anthropic.GatewayTimeoutError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
def test_scripted_status(
    fake: FakeUpstream, client: anthropic.Anthropic, status: int, etype: str, exc: type[Exception]
) -> None:
    fake.script({"status": status})
    with pytest.raises(exc) as err:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert isinstance(err.value, anthropic.APIStatusError)
    assert err.value.status_code == status
    assert err.value.body["error"]["type"] == etype  # type: ignore[index]
    assert "anthropic-ratelimit-requests-limit" in err.value.response.headers


def test_script_matches_key(fake: FakeUpstream) -> None:
    fake.script({"status": 500}, key="k-a")
    other = anthropic.Anthropic(base_url=fake.url, api_key="k-b", max_retries=0)
    target = anthropic.Anthropic(base_url=fake.url, api_key="k-a", max_retries=0)
    assert other.messages.create(model=MODEL, max_tokens=8, messages=user("hi")).stop_reason == "end_turn"
    assert fake.pending() == [{"key": "k-a", "action": {"status": 500}}]
    with pytest.raises(anthropic.InternalServerError):
        target.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    assert fake.pending() == []


def test_stream_error(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"stream_error": "overloaded_error", "after_events": 2})
    seen: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model=MODEL, max_tokens=16, messages=user("hi")) as stream,
    ):
        for event in stream:
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start"]
    assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert err.value.response.status_code == 200  # the error arrived after a 200 head


def test_cut_after_events_is_a_protocol_error(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"cut_after_events": 4})
    text: list[str] = []
    with (
        pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)),
        client.messages.stream(model=MODEL, max_tokens=16, messages=user("hi")) as stream,
    ):
        text.extend(stream.text_stream)
    assert text == ["Hello"]  # start, block start, ping, one delta — then the connection died
    fake.script({"cut_after_events": 2})
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    conn.request("POST", "/v1/messages", body=json.dumps(stream_body("hi")), headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()


def test_reset_connection(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"reset_connection": True})
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    entry = fake.requests()[-1]
    assert entry["path"] == "/v1/messages" and entry["status"] is None  # received, never answered
    assert client.messages.create(model=MODEL, max_tokens=16, messages=user("hi")).stop_reason == "end_turn"


def test_echo_key_quotes_the_received_key(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"echo_key": True}, {"echo_key": True, "status": 529})
    with pytest.raises(anthropic.AuthenticationError) as auth:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert auth.value.body["error"]["message"] == f"invalid x-api-key: {KEY}"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert overloaded.value.status_code == 529 and KEY in str(overloaded.value.body)


def test_stall_until_client_leaves(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"stall": True})
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.5).messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert fake.wait_idle(timeout=5)["in_flight"] == 0  # the server noticed the disconnect
    entry = fake.requests()[-1]
    assert entry["disconnected"] is True and entry["status"] is None


def test_delay_and_slow_drip(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.script({"delay": 0.3})
    t0 = time.monotonic()
    client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert time.monotonic() - t0 >= 0.3

    fake.script({"event_delay": 0.05})
    arrivals: list[float] = []
    with client.messages.stream(model=MODEL, max_tokens=16, messages=user("hi")) as stream:
        for event in stream:
            if event.type in RAW_EVENTS:  # the SDK also yields derived events (e.g. "text")
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Spaced out, i.e. not buffered into one write. The server sleeps between writes; a read that
    # the client takes late makes one gap short and the next long, so judge the median gap.
    assert len(gaps) >= 5 and statistics.median(gaps) >= 0.04

    # A slow drip stops as soon as the client goes away.
    fake.script({"event_delay": 0.5})
    with client.messages.stream(model=MODEL, max_tokens=16, messages=user("[[long:200]]")) as stream:
        assert next(iter(stream)).type == "message_start"
    t0 = time.monotonic()
    assert fake.wait_idle(timeout=10)["in_flight"] == 0
    assert time.monotonic() - t0 < 5
    assert fake.requests()[-1]["disconnected"] is True


# --- auth, validation, headers -------------------------------------------------------------------


def test_auth(fake: FakeUpstream) -> None:
    bad = anthropic.Anthropic(base_url=fake.url, api_key="sk-bad-123", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    body: Any = err.value.body
    assert body["error"]["type"] == "authentication_error" and body["request_id"].startswith("req_fake_")

    bearer = anthropic.Anthropic(base_url=fake.url, auth_token="oauth-token-1", max_retries=0)
    assert bearer.messages.create(model=MODEL, max_tokens=8, messages=user("hi")).stop_reason == "end_turn"
    entry = fake.requests()[-1]
    assert entry["key"] == "oauth-token-1" and entry["headers"]["authorization"] == "Bearer oauth-token-1"

    status, headers, data = raw(fake, "GET", "/v1/models", headers={"x-api-key": None})
    assert status == 401 and json.loads(data)["error"]["type"] == "authentication_error"
    assert headers["request-id"] == json.loads(data)["request_id"]


GOOD = {"model": MODEL, "max_tokens": 16, "messages": user("hi")}


@pytest.mark.parametrize(
    ("path", "body", "headers", "needle"),
    [
        ("/v1/messages", GOOD, {"anthropic-version": None}, "anthropic-version"),
        ("/v1/messages", b"{not json", None, "parsing"),
        ("/v1/messages", {"max_tokens": 16, "messages": user("hi")}, None, "model: Field required"),
        ("/v1/messages", {"model": MODEL, "messages": user("hi")}, None, "max_tokens: Field required"),
        ("/v1/messages", {"model": MODEL, "max_tokens": 16}, None, "messages: Field required"),
        ("/v1/messages", {**GOOD, "max_tokens": "16"}, None, "max_tokens"),
        ("/v1/messages", {**GOOD, "messages": "hi"}, None, "messages"),
        ("/v1/messages", {**GOOD, "n": 2}, None, "n: Extra inputs are not permitted"),
        ("/v1/messages", {**GOOD, "messages": user("")}, None, "non-empty"),
        (
            "/v1/messages",
            {
                **GOOD,
                "messages": [
                    *user("hi"),
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}],
                    },
                    *user("no result"),
                ],
            },
            None,
            "tool_result",
        ),
        ("/v1/messages/count_tokens", {"messages": user("hi")}, None, "model: Field required"),
        ("/v1/messages/count_tokens", GOOD, None, "max_tokens: Extra inputs"),
    ],
)
def test_request_validation(
    fake: FakeUpstream, path: str, body: Any, headers: dict[str, str | None] | None, needle: str
) -> None:
    status, h, data = raw(fake, "POST", path, body, headers)
    assert status == 400
    err = json.loads(data)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert needle in err["error"]["message"]
    assert err["request_id"] == h["request-id"] and "anthropic-ratelimit-tokens-remaining" in h


def test_unknown_route_and_method(fake: FakeUpstream) -> None:
    status, _, data = raw(fake, "GET", "/v1/nothing")
    assert status == 404 and json.loads(data)["error"]["type"] == "not_found_error"
    status, _, data = raw(fake, "GET", "/v1/messages")
    assert status == 405 and json.loads(data)["error"]["type"] == "invalid_request_error"


def test_query_string_accepted_and_logged(fake: FakeUpstream) -> None:
    status, _, _ = raw(fake, "POST", "/v1/messages?beta=true", GOOD, {"anthropic-beta": "a-1,b-2"})
    assert status == 200
    entry = fake.requests()[-1]
    assert (entry["method"], entry["path"], entry["query"]) == ("POST", "/v1/messages", "beta=true")
    assert entry["headers"]["anthropic-beta"] == "a-1,b-2" and entry["headers"]["x-api-key"] == KEY
    assert entry["body"] == GOOD and entry["key"] == KEY and isinstance(entry["time"], float)
    status, _, data = raw(fake, "POST", "/v1/messages/count_tokens?beta=true", {"model": MODEL, "messages": user("x")})
    assert status == 200 and json.loads(data)["input_tokens"] >= 1
    fake.clear()
    assert fake.requests() == []


def test_rate_limit_headers(client: anthropic.Anthropic) -> None:
    first = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=user("hi"))
    second = client.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=user("hi"))
    for resp in (first, second):
        for w in WINDOWS:
            assert int(resp.headers[f"anthropic-ratelimit-{w}-limit"]) > 0
            assert int(resp.headers[f"anthropic-ratelimit-{w}-remaining"]) >= 0
            assert RESET_RE.match(resp.headers[f"anthropic-ratelimit-{w}-reset"])

    def remaining(resp: Any, w: str) -> int:
        return int(resp.headers[f"anthropic-ratelimit-{w}-remaining"])

    assert remaining(second, "requests") == remaining(first, "requests") - 1
    usage = second.parse().usage
    assert remaining(second, "tokens") == remaining(first, "tokens") - usage.input_tokens - usage.output_tokens
    assert remaining(second, "output-tokens") == remaining(first, "output-tokens") - usage.output_tokens


def test_limits_enforced(fake: FakeUpstream) -> None:
    fake.set_limits("k-lim", requests=2, reset_in=30)
    limited = anthropic.Anthropic(base_url=fake.url, api_key="k-lim", max_retries=0)
    for _ in range(2):
        limited.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    with pytest.raises(anthropic.RateLimitError) as err:
        limited.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    h = err.value.response.headers
    assert 1 <= int(h["retry-after"]) <= 30
    assert h["anthropic-ratelimit-requests-limit"] == "2" and h["anthropic-ratelimit-requests-remaining"] == "0"
    other = anthropic.Anthropic(base_url=fake.url, api_key="k-other", max_retries=0)
    assert other.messages.create(model=MODEL, max_tokens=8, messages=user("hi")).stop_reason == "end_turn"

    fake.set_limits("k-empty", remaining={"requests": 0})
    empty = anthropic.Anthropic(base_url=fake.url, api_key="k-empty", max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        empty.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))

    fake.set_limits("k-out", output_tokens=20)  # 50 output pieces do not fit
    out = anthropic.Anthropic(base_url=fake.url, api_key="k-out", max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        out.messages.create(model=MODEL, max_tokens=8, messages=user("[[long:50]]"))
    ok = out.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=user("hi"))
    assert ok.headers["anthropic-ratelimit-output-tokens-remaining"] == "17"  # the 429 took nothing


def test_admin_rejects_unknown_action(fake: FakeUpstream) -> None:
    with pytest.raises(RuntimeError, match="stauts"):
        fake.script({"stauts": 429})
    assert fake.pending() == []


# --- process handling ----------------------------------------------------------------------------


def test_key_restricted_server_and_clean_shutdown() -> None:
    with FakeUpstream(keys=["only-this"]) as restricted:
        good = anthropic.Anthropic(base_url=restricted.url, api_key="only-this", max_retries=0)
        assert good.messages.create(model=MODEL, max_tokens=8, messages=user("hi")).stop_reason == "end_turn"
        other = anthropic.Anthropic(base_url=restricted.url, api_key="sk-anything", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            other.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    assert restricted.returncode == 0  # SIGTERM → graceful exit


def test_start_failure_reports_stderr() -> None:
    # "--key --bogus" is an argparse error: the child exits before printing READY.
    with pytest.raises(RuntimeError, match="expected one argument"):
        FakeUpstream(keys=["--bogus"]).start()


def test_server_stderr_has_no_tracebacks(fake: FakeUpstream) -> None:
    # Runs last in file order: cuts, resets, stalls and disconnects above must not crash handlers.
    assert "Traceback" not in fake.stderr() and "Error in ASGI" not in fake.stderr()
    assert "Running on http://127.0.0.1:" in fake.stderr()  # proves stderr is really captured


# --- hostile upstream actions ---------------------------------------------------------------------


def raw_exchange(fake: FakeUpstream, body: dict[str, Any], *, keep_open_for_late: bool = False) -> tuple[bytes, bytes]:
    """One request on a raw socket; returns (response head, de-chunked or whole body) exactly as sent."""
    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-api-key: %s\r\nanthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s"
        % (KEY.encode(), len(payload), payload)
    )
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            chunks = []
            while True:
                while b"\r\n" not in rest:
                    rest += sock.recv(65536)
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                while len(rest) < size + 2:
                    more = sock.recv(65536)
                    assert more, "connection closed mid-chunk"
                    rest += more
                if size == 0:
                    break
                chunks.append(rest[:size])
                rest = rest[size + 2 :]
            body_out = b"\x00".join(chunks)  # NUL-separated so tests can see the piece sizes
        else:
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            while len(rest) < length:
                rest += sock.recv(65536)
            body_out, rest = rest[:length], rest[length:]
        if keep_open_for_late:
            while len(rest) < len(LATE_RESPONSE):
                more = sock.recv(65536)
                if not more:
                    break
                rest += more
            return head, rest
        return head, body_out


def test_truncate_ends_the_body_cleanly_without_message_stop(fake: FakeUpstream) -> None:
    fake.script({"truncate": 4})
    _, body = raw_exchange(fake, stream_body("hi"))
    events = sse(body.replace(b"\x00", b""))
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta",
    ]  # fmt: skip
    # The SDK sees a stream that just stops (no error, no message_stop): what dario must catch.
    fake.script({"truncate": 5})
    client = anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0)
    seen = [e.type for e in client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"), stream=True)]
    assert "message_stop" not in seen and seen[-1] == "content_block_delta"


def test_drip_sends_n_byte_pieces(fake: FakeUpstream) -> None:
    fake.script({"drip": 7})
    _, body = raw_exchange(fake, stream_body("hi"))
    pieces = body.split(b"\x00")
    assert all(len(p) == 7 for p in pieces[:-1]) and 1 <= len(pieces[-1]) <= 7
    assert [n for n, _ in sse(b"".join(pieces))][-1] == "message_stop"  # same content, cut finer
    fake.script({"drip": 5})
    _, whole = raw_exchange(fake, {**stream_body("hi"), "stream": False})
    assert json.loads(whole)["content"][0]["text"] == "Hello from the fake upstream."


def test_malformed_event_data_after_n_events(fake: FakeUpstream) -> None:
    fake.script({"malformed": 3})
    _, body = raw_exchange(fake, stream_body("hi"))
    blocks = body.replace(b"\x00", b"").decode().split("\n\n")
    assert blocks[3].startswith("event: content_block_delta\ndata: ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(blocks[3].split("data: ", 1)[1])
    assert "event: message_stop" in blocks[-2]  # the rest of the stream follows as normal


def test_huge_event_and_open_line(fake: FakeUpstream) -> None:
    fake.script({"huge_event": 100_000})
    _, body = raw_exchange(fake, stream_body("hi"))
    events = sse(body.replace(b"\x00", b""))
    assert events[3][1]["delta"]["text"] == "x" * 100_000
    assert events[-1][0] == "message_stop"
    fake.script({"huge_event": 50_000, "huge_event_open": True})
    _, body = raw_exchange(fake, stream_body("hi"))
    flat = body.replace(b"\x00", b"")
    assert flat.endswith(b"data: " + b"x" * 50_000) and b"message_stop" not in flat


def test_huge_body(fake: FakeUpstream) -> None:
    fake.script({"huge_body": 3 * 1024 * 1024 + 5})
    _, whole = raw_exchange(fake, {**stream_body("hi"), "stream": False})
    message = json.loads(whole)
    assert message["content"] == [{"type": "text", "text": "x" * (3 * 1024 * 1024 + 5)}]
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] >= 1
    fake.script({"huge_body": 2 * 1024 * 1024, "huge_body_chunked": True})
    head, whole = raw_exchange(fake, {**stream_body("hi"), "stream": False})
    assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower()
    assert json.loads(whole.replace(b"\x00", b""))["content"][0]["text"] == "x" * (2 * 1024 * 1024)


def test_late_bytes_arrive_on_the_idle_connection(fake: FakeUpstream) -> None:
    fake.script({"late_bytes": True, "late_delay": 0.05})
    _, late = raw_exchange(fake, {**stream_body("hi"), "stream": False}, keep_open_for_late=True)
    assert late == LATE_RESPONSE
    wait_until(lambda: fake.requests()[-1].get("late_bytes_sent"), 5, "the fake to log the late bytes")


# --- prompt-cache mode ---------------------------------------------------------------------------

EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
AGENT_SYSTEM = "You are a coding agent. " * 200  # ~1,200 tokens by the fake's bytes/4 estimate


def agent_turn(history: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Claude Code's pattern: the breakpoint sits on the newest message only (earlier ones are bare)."""
    bare = [{"role": m["role"], "content": [{"type": "text", "text": _text_of(m)}]} for m in history]
    return [*bare, {"role": "user", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]}]


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def cached_create(client: anthropic.Anthropic, messages: list[dict[str, Any]], **extra: Any) -> Any:
    system = [{"type": "text", "text": AGENT_SYSTEM, "cache_control": EPHEMERAL}]
    return client.messages.create(model=MODEL, max_tokens=64, system=system, messages=messages, **extra)  # type: ignore[arg-type]


def test_prompt_cache_off_by_default_keeps_fixed_usage(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    for _ in range(2):
        msg = cached_create(client, agent_turn([], "hi"))
        assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (0, 0)


def test_prompt_cache_conversation_reads_its_history(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.set_prompt_cache(True)
    history: list[dict[str, Any]] = []
    reads: list[int] = []
    previous_prefix = 0
    for turn in range(5):
        messages = agent_turn(history, f"step {turn}: " + "context " * 50)
        msg = cached_create(client, messages)
        u = msg.usage
        total = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
        entry = fake.requests()[-1]
        assert total == max(1, entry["size"] // 4)  # the three parts add up to the fake's estimate
        if turn == 0:
            assert u.cache_read_input_tokens == 0 and (u.cache_creation_input_tokens or 0) > 1000
        else:
            # The whole of the previous request (up to its breakpoint) is read; only the new turn is written.
            assert u.cache_read_input_tokens == previous_prefix
            assert 0 < (u.cache_creation_input_tokens or 0) < 200
        reads.append(u.cache_read_input_tokens or 0)
        previous_prefix = (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
        history = [*messages, {"role": "assistant", "content": msg.content[0].text}]  # type: ignore[union-attr]
    assert reads == sorted(reads) and reads[-1] > reads[1] > 0


def test_prompt_cache_is_per_key(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.set_prompt_cache(True)
    cached_create(client, agent_turn([], "hi"))
    assert cached_create(client, agent_turn([], "hi")).usage.cache_read_input_tokens > 0
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-test-other", max_retries=0) as other:
        assert cached_create(other, agent_turn([], "hi")).usage.cache_read_input_tokens == 0


def test_prompt_cache_shared_system_and_lookback(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.set_prompt_cache(True)
    first = cached_create(client, agent_turn([], "conversation A"))
    system_tokens = first.usage.cache_creation_input_tokens
    # Another conversation shares the cached system prompt (its own breakpoint), not A's message.
    other = cached_create(client, agent_turn([], "conversation B"))
    assert 0 < (other.usage.cache_read_input_tokens or 0) < (system_tokens or 0)
    # A breakpoint more than ~20 blocks past the last cached boundary cannot see it, except through
    # the system prompt's own breakpoint.
    long_history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(30)]
    cached_create(client, agent_turn(long_history[:2], "m2"))  # writes the prefix ending at block 3 (m2)
    far = cached_create(client, agent_turn(long_history[:29], "y"))  # breakpoint at block 30
    assert far.usage.cache_read_input_tokens == other.usage.cache_read_input_tokens  # the system prompt only
    near = cached_create(client, agent_turn(long_history[:15], "z"))  # breakpoint at block 16: m2 in reach
    assert (near.usage.cache_read_input_tokens or 0) > (other.usage.cache_read_input_tokens or 0)


def test_prompt_cache_ttl_refresh_and_one_hour(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.set_prompt_cache(True)
    cached_create(client, agent_turn([], "hi"))
    fake.advance_clock(200)
    assert cached_create(client, agent_turn([], "hi")).usage.cache_read_input_tokens > 0  # and refreshed
    fake.advance_clock(200)  # 400 s after the write, 200 s after the refreshing read
    assert cached_create(client, agent_turn([], "hi")).usage.cache_read_input_tokens > 0
    fake.advance_clock(301)
    expired = cached_create(client, agent_turn([], "hi"))
    assert expired.usage.cache_read_input_tokens == 0 and expired.usage.cache_creation_input_tokens > 0
    hour = {"type": "ephemeral", "ttl": "1h"}
    messages = [{"role": "user", "content": [{"type": "text", "text": "long-lived", "cache_control": hour}]}]
    written = client.messages.create(model=MODEL, max_tokens=8, messages=messages)  # type: ignore[arg-type]
    assert written.usage.cache_creation.ephemeral_1h_input_tokens > 0  # type: ignore[union-attr]
    assert written.usage.cache_creation.ephemeral_5m_input_tokens == 0  # type: ignore[union-attr]
    fake.advance_clock(3000)
    assert client.messages.create(model=MODEL, max_tokens=8, messages=messages).usage.cache_read_input_tokens > 0  # type: ignore[arg-type]


def test_prompt_cache_stream_usage_and_breakpoint_limit(fake: FakeUpstream) -> None:
    fake.set_prompt_cache(True)
    block = {"type": "text", "text": "a block of text", "cache_control": EPHEMERAL}
    body = {**stream_body("hi"), "system": [block, {**block, "text": "another block"}]}
    raw(fake, "POST", "/v1/messages", body)
    status, _, data = raw(fake, "POST", "/v1/messages", body)
    assert status == 200
    events = dict(sse(data))
    start, delta = events["message_start"]["message"]["usage"], events["message_delta"]["usage"]
    assert start["cache_read_input_tokens"] > 0 and start["cache_creation_input_tokens"] == 0
    assert delta["cache_read_input_tokens"] == start["cache_read_input_tokens"]
    five = {**body, "system": [{**block, "text": f"block {i}"} for i in range(5)]}
    status, _, data = raw(fake, "POST", "/v1/messages", five)
    assert status == 400 and b"A maximum of 4 blocks with cache_control" in data
    four_and_auto = {**five, "system": five["system"][:4], "cache_control": EPHEMERAL}
    status, _, data = raw(fake, "POST", "/v1/messages", four_and_auto)
    assert status == 400 and b"Found 5" in data


def test_prompt_cache_top_level_marker_caches_the_last_block(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    fake.set_prompt_cache(True)
    messages = user("automatic caching marks the last cacheable block " * 20)
    auto = {"cache_control": EPHEMERAL}
    first = client.messages.create(model=MODEL, max_tokens=8, messages=messages, extra_body=auto)
    again = client.messages.create(model=MODEL, max_tokens=8, messages=messages, extra_body=auto)
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert again.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
