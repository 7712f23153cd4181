"""The official `anthropic` SDK, unchanged, against dario (and, for comparison, the fake directly).

dario must be invisible to the SDK: the same answers, streams, tool inputs and thinking
signatures as talking to the upstream itself, plus dario's own `x-dario-*` headers. The fake's
request log shows what actually went upstream: the account's key, dario's own User-Agent, and
none of the client's credentials or identity headers.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import orjson
import pytest

from dario.daemon import __version__
from tests.fakeupstream import LONG_WORDS, MODEL_IDS
from tests.support import Dariod

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-e2e-account-key"
CLIENT_KEY = "sk-client-side-placeholder"
MODEL = "claude-sonnet-4-6"
USER_AGENT = f"dario/{__version__}"
# What may reach the upstream. Everything else the client sends (its key, x-stainless-*, its
# own User-Agent, custom headers) stays behind.
UPSTREAM_HEADERS = frozenset({
    "host", "x-api-key", "anthropic-version", "anthropic-beta", "content-type", "content-length",
    "user-agent", "accept", "accept-encoding", "connection",
})
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a place.",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["location"],
    },
}
TIME_TOOL = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}, "exact": {"type": "boolean"}}},
}


@pytest.fixture(scope="module")
def gateway(fake: Any) -> Iterator[Dariod]:
    d = Dariod().start()
    try:
        d.login("work", KEY, fake.url)
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def client(gateway: Dariod, upstream: Any) -> Iterator[anthropic.Anthropic]:
    """The SDK pointed at dario, as a user would (any key; dario holds the real one)."""
    with anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def direct(upstream: Any) -> Iterator[anthropic.Anthropic]:
    """The SDK pointed at the fake itself, for answers to compare against."""
    with anthropic.Anthropic(base_url=upstream.url, api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def only_upstream_request(upstream: Any, path: str = "/v1/messages") -> dict[str, Any]:
    reqs = [r for r in upstream.requests() if r["path"] == path]
    assert len(reqs) == 1, [(r["method"], r["path"]) for r in upstream.requests()]
    return reqs[0]


def assert_sent_as_dario(entry: dict[str, Any]) -> None:
    headers = entry["headers"]
    assert entry["key"] == KEY
    assert headers["x-api-key"] == KEY
    assert "authorization" not in headers
    assert headers["user-agent"] == USER_AGENT
    assert not [h for h in headers if h.startswith("x-stainless")]
    assert set(headers) <= UPSTREAM_HEADERS, sorted(set(headers) - UPSTREAM_HEADERS)


def assert_dario_headers(headers: Any, model: str = MODEL) -> None:
    assert headers["x-dario-account"] == "work"
    assert headers["x-dario-model"] == model
    assert float(headers["x-dario-overhead-ms"]) >= 0.0
    assert headers["request-id"].startswith("req_fake_")
    for window in ("requests", "tokens", "input-tokens", "output-tokens"):
        for part in ("limit", "remaining", "reset"):
            assert headers.get(f"anthropic-ratelimit-{window}-{part}"), (window, part)


def final_via_stream(c: anthropic.Anthropic, **kwargs: Any) -> tuple[anthropic.types.Message, str, Any]:
    with c.messages.stream(model=MODEL, max_tokens=2048, **kwargs) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
        headers = stream.response.headers
    return message, text, headers


# -- messages --------------------------------------------------------------------------


def test_messages_create(client: anthropic.Anthropic, upstream: Any) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"x-client-trace": "trace-123"},
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn" and message.model == MODEL
    assert message.usage.output_tokens > 0
    assert_dario_headers(raw.headers)

    entry = only_upstream_request(upstream)
    assert_sent_as_dario(entry)
    assert "x-client-trace" not in entry["headers"]
    sent = raw.http_request.headers
    # The SDK did send its own credential and identity; none of it went upstream.
    assert CLIENT_KEY in (sent.get("authorization", "") + sent.get("x-api-key", ""))
    assert any(h.startswith("x-stainless") for h in sent) and sent["user-agent"] != USER_AGENT
    # The SDK's anthropic-version goes upstream verbatim, whatever date it names.
    assert entry["headers"]["anthropic-version"] == sent["anthropic-version"]
    assert entry["body"] == orjson.loads(raw.http_request.content)
    assert raw.headers["request-id"] == f"req_fake_{entry['n']}"


@pytest.mark.parametrize("credential", [
    {"auth_token": "sk-client-bearer"},
    {"api_key": "unused", "default_headers": {"x-api-key": "sk-client-x-api-key"}},
])
def test_client_credentials_are_not_forwarded(gateway: Dariod, upstream: Any, credential: dict[str, Any]) -> None:
    with anthropic.Anthropic(base_url=gateway.url, max_retries=0, timeout=30, **credential) as c:
        message = c.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].type == "text"
    assert_sent_as_dario(only_upstream_request(upstream))


def test_stream_text(client: anthropic.Anthropic, upstream: Any) -> None:
    message, text, headers = final_via_stream(client, messages=[{"role": "user", "content": "Hello"}])
    assert text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    assert headers["content-type"].startswith("text/event-stream")
    assert_dario_headers(headers)
    entry = only_upstream_request(upstream)
    assert entry["body"]["stream"] is True
    assert_sent_as_dario(entry)


def test_stream_long_text_arrives_whole(client: anthropic.Anthropic) -> None:
    message, text, _ = final_via_stream(client, messages=[{"role": "user", "content": "[[long:200]]"}])
    assert text == "".join(LONG_WORDS[i % len(LONG_WORDS)] for i in range(200))
    assert message.usage.output_tokens == 200


def _tool_uses(message: anthropic.types.Message) -> list[tuple[str, dict[str, Any]]]:
    return [(b.name, b.input) for b in message.content if b.type == "tool_use"]  # type: ignore[misc]


@pytest.mark.parametrize("directive, count", [("[[tool]]", 1), ("[[tools]]", 2)])
def test_stream_tool_input_equals_what_the_upstream_streamed(
    client: anthropic.Anthropic, direct: anthropic.Anthropic, directive: str, count: int
) -> None:
    kwargs: dict[str, Any] = {
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "messages": [{"role": "user", "content": f"What is the weather? {directive}"}],
    }
    via_dario, _, _ = final_via_stream(client, **kwargs)
    from_fake, _, _ = final_via_stream(direct, **kwargs)
    assert via_dario.stop_reason == "tool_use"
    uses = _tool_uses(via_dario)
    assert len(uses) == count
    assert uses == _tool_uses(from_fake)
    assert uses[0] == ("get_weather", {"location": "fake-location-1", "unit": "celsius", "days": 1})
    ids = [b.id for b in via_dario.content if b.type == "tool_use"]
    assert len(set(ids)) == count
    # The non-streaming form carries the same input.
    whole = client.messages.create(model=MODEL, max_tokens=2048, **kwargs)
    assert _tool_uses(whole) == uses


def _signature(n: int) -> str:
    # The fake signs thinking as base64(sha256("fake-signature-<request number>") * 3).
    return base64.b64encode(hashlib.sha256(b"fake-signature-%d" % n).digest() * 3).decode()


def test_stream_thinking_signature_preserved(client: anthropic.Anthropic, upstream: Any) -> None:
    message, text, _ = final_via_stream(
        client, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think first. [[thinking]]"}],
    )
    entry = only_upstream_request(upstream)
    thinking = [b for b in message.content if b.type == "thinking"]
    assert len(thinking) == 1
    assert thinking[0].thinking == "Let me think about this request carefully."
    assert thinking[0].signature == _signature(entry["n"])
    assert text == "Hello from the fake upstream."


def test_stream_bytes_are_relayed_untouched(client: anthropic.Anthropic, direct: anthropic.Anthropic,
                                            upstream: Any) -> None:
    """The SSE body through dario is byte-for-byte the upstream's (only per-request ids differ)."""
    body = {
        "model": MODEL, "max_tokens": 2048, "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "All of it. [[thinking]] [[tool]] [[cache]]"}],
    }
    with client.messages.with_streaming_response.create(**body) as resp:
        got = resp.read()
    n_via = upstream.requests()[-1]["n"]
    with direct.messages.with_streaming_response.create(**body) as resp:
        want = resp.read()
    n_direct = upstream.requests()[-1]["n"]
    assert b"signature_delta" in got and b"input_json_delta" in got
    want = (want.replace(_signature(n_direct).encode(), _signature(n_via).encode())
            .replace(b"_fake_%d" % n_direct, b"_fake_%d" % n_via))
    assert got == want


# -- other endpoints -------------------------------------------------------------------


def test_count_tokens(client: anthropic.Anthropic, direct: anthropic.Anthropic, upstream: Any) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    raw = client.messages.with_raw_response.count_tokens(**kwargs)
    counted = raw.parse()
    entry = only_upstream_request(upstream, "/v1/messages/count_tokens")
    assert_sent_as_dario(entry)
    assert counted.input_tokens == direct.messages.count_tokens(**kwargs).input_tokens
    assert counted.input_tokens == max(1, entry["size"] // 4)
    assert raw.headers["x-dario-account"] == "work"


def test_models_list_and_retrieve(client: anthropic.Anthropic, upstream: Any) -> None:
    ids = [m.id for m in client.models.list()]
    # The upstream's own list, fetched through the account.
    assert set(MODEL_IDS) <= set(ids)
    assert len(ids) == len(set(ids))
    model = client.models.retrieve("claude-opus-4-7")
    assert model.id == "claude-opus-4-7" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")
    for entry in upstream.requests():
        assert (entry["method"], entry["path"]) == ("GET", "/v1/models")
        assert_sent_as_dario(entry)


def test_beta_messages_keep_query_and_beta_header(client: anthropic.Anthropic, upstream: Any) -> None:
    message = client.beta.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}],
        betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
        extra_query={"beta": "true"},  # Claude Code's path; this SDK version no longer adds it
    )
    assert message.content[0].type == "text"
    entry = only_upstream_request(upstream)
    assert entry["query"] == "beta=true"
    assert entry["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert_sent_as_dario(entry)


def test_beta_stream(client: anthropic.Anthropic, upstream: Any) -> None:
    with client.beta.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}],
        betas=["fine-grained-tool-streaming-2025-05-14"], extra_query={"beta": "true"},
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from the fake upstream."
    entry = only_upstream_request(upstream)
    assert entry["query"] == "beta=true"
    assert entry["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"


# -- errors ----------------------------------------------------------------------------


def test_upstream_400_comes_back_as_is(client: anthropic.Anthropic, upstream: Any) -> None:
    upstream.script({"status": 400, "message": "messages.0: scripted problem"})
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}])
    err = info.value
    assert err.status_code == 400
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"] == {"type": "invalid_request_error", "message": "messages.0: scripted problem"}
    assert err.response.headers["x-dario-account"] == "work"
    assert err.request_id == err.response.headers["request-id"]
    # A real validation failure from the upstream, streamed this time.
    with pytest.raises(anthropic.BadRequestError) as info:
        with client.messages.stream(model=MODEL, max_tokens=64, extra_body={"temperature": 1.5},
                                    messages=[{"role": "user", "content": "Hello"}]) as stream:
            stream.get_final_message()
    assert "temperature" in str(info.value)
    # A 400 is the request's fault, not the account's: it stays ok and the next call works.
    assert client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]).id


def test_forced_model(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    forced = "claude-haiku-4-5-20251001"
    d = dariod_factory(args=["--model", forced])
    d.login("work", KEY, upstream.url)
    with anthropic.Anthropic(base_url=d.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        raw = c.messages.with_raw_response.create(
            model="claude-opus-4-7", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
        assert raw.headers["x-dario-model"] == forced
        assert raw.parse().model == forced
        with c.messages.stream(model="claude-opus-4-7", max_tokens=16,
                               messages=[{"role": "user", "content": "Hi"}]) as stream:
            assert stream.get_final_message().model == forced
    sent = [r["body"]["model"] for r in upstream.requests() if r["path"] == "/v1/messages"]
    assert sent == [forced, forced]
