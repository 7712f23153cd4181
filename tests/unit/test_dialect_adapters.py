"""The dialect adapters (parse → Incoming, sinks, error shapes) and the public app's one exchange path.

The public app is driven in-process here: a stub relay records what it is handed and answers through
the sink it gets, so routing, forced models and aliases are checked for both dialects side by side.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
import trio

from dario.daemon.dialects.anthropic import AnthropicDialect
from dario.daemon.dialects.base import DialectAdapter, RequestInfo
from dario.daemon.dialects.openai.adapter import OpenAIDialect
from dario.daemon.edge.guard import Guard
from dario.daemon.edge.public import PublicApp
from dario.daemon.errors import DarioError
from dario.daemon.exchange import Answer, Incoming, Outcome, Sink
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.models import HAIKU, SONNET, ModelTable
from dario.daemon.settings import Settings

MODELS = ModelTable()
INFO = RequestInfo(1.5, "req_test_1", "aider", "owner")
FORCED = "claude-haiku-4-5-20251001"
MESSAGES_PATH = "/v1/messages"


def anthropic() -> AnthropicDialect:
    return AnthropicDialect("messages", MESSAGES_PATH)


def openai() -> OpenAIDialect:
    return OpenAIDialect(MESSAGES_PATH)


def parse(dialect: DialectAdapter, request: dict[str, Any], *, headers: list[tuple[bytes, bytes]] | None = None,
          query: bytes = b"", force: str | None = None) -> Incoming:
    body = orjson.dumps(request)
    incoming, _ = dialect.parse(body, orjson.loads(body), headers or [], query, INFO, MODELS, force)
    return incoming


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def messages(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **extra}


# --- parse → Incoming -------------------------------------------------------------------------------


def test_anthropic_passes_the_body_through_untouched() -> None:
    raw = b'{"model": "claude-opus-4-7",  "max_tokens": 100, "stream": true, "messages": []}'
    headers = [(b"anthropic-version", b"2023-06-01"), (b"anthropic-beta", b"x"), (b"user-agent", b"ua")]
    inc, _ = anthropic().parse(raw, orjson.loads(raw), headers, b"beta=true", INFO, MODELS, None)
    assert inc.body == raw  # byte for byte, spacing included
    assert (inc.dialect, inc.endpoint, inc.path, inc.query) == ("anthropic", "messages", MESSAGES_PATH, b"beta=true")
    assert inc.headers == headers
    assert inc.stream is True
    assert inc.model == "claude-opus-4-7"
    assert (inc.estimate.input_tokens, inc.estimate.output_tokens) == (len(raw) // 4, 100)
    assert (inc.client, inc.t_start) == ("aider", 1.5)


def test_anthropic_count_tokens_never_streams() -> None:
    inc = parse(AnthropicDialect("count_tokens", "/v1/messages/count_tokens"), messages("claude-x", stream=True))
    assert (inc.endpoint, inc.path, inc.stream) == ("count_tokens", "/v1/messages/count_tokens", False)


def test_anthropic_rewrites_an_alias_in_the_body() -> None:
    inc = parse(anthropic(), messages("sonnet"))
    assert inc.model == SONNET
    assert orjson.loads(inc.body)["model"] == SONNET


def test_anthropic_passes_an_unknown_model_to_the_upstream() -> None:
    inc = parse(anthropic(), messages("some-new-model"))
    assert inc.model == "some-new-model"


@pytest.mark.parametrize(("model", "message"), [
    (None, "model: field required"), ("", "model: field required"), (7, "model: field required"),
    ("claude\x1b[31m", "control characters"),
])
def test_anthropic_refuses_a_bad_model(model: object, message: str) -> None:
    with pytest.raises(DarioError) as info:
        parse(anthropic(), {"model": model, "max_tokens": 1, "messages": []})
    assert (info.value.status, info.value.type) == (400, "invalid_request_error")
    assert message in info.value.message


def test_openai_translates_and_forwards_only_beta_headers() -> None:
    headers = [(b"authorization", b"Bearer sk-client"), (b"anthropic-beta", b"b1"), (b"x-stainless-os", b"Linux")]
    inc = parse(openai(), chat("gpt-4o", stream=True, max_tokens=50), headers=headers, query=b"x=1")
    assert (inc.dialect, inc.endpoint, inc.path, inc.query) == ("openai", "chat", MESSAGES_PATH, b"")
    assert inc.headers == [(b"anthropic-beta", b"b1")]
    sent = orjson.loads(inc.body)
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert sent["model"] == inc.model == SONNET
    assert inc.stream is True and sent["stream"] is True
    assert inc.estimate.output_tokens == 50


def test_openai_unknown_model_is_a_404_in_openai_terms() -> None:
    with pytest.raises(DarioError) as info:
        parse(openai(), chat("not-a-model"))
    assert (info.value.status, info.value.openai_code, info.value.param) == (404, "model_not_found", "model")


# --- model resolution: one rule for both dialects ---------------------------------------------------

NAMES = ["sonnet", "HAIKU", "gpt-4o", "gpt-4o-2024-08-06", "openai/gpt-4o-mini", "anthropic/claude-opus-4-7",
         "claude-sonnet-4-6", "o3"]


@pytest.mark.parametrize("force", [None, FORCED, "haiku", "gpt-4o"])
@pytest.mark.parametrize("name", NAMES)
def test_both_dialects_pick_the_same_model(name: str, force: str | None) -> None:
    from_anthropic = parse(anthropic(), messages(name), force=force)
    from_openai = parse(openai(), chat(name), force=force)
    assert from_anthropic.model == from_openai.model
    assert orjson.loads(from_anthropic.body)["model"] == orjson.loads(from_openai.body)["model"]


@pytest.mark.parametrize("dialect", [anthropic, openai])
def test_a_forced_model_wins_over_any_requested_name(dialect: Any) -> None:
    request = messages if dialect is anthropic else chat
    for name in ("claude-opus-4-7", "sonnet", "not-a-model-anyone-knows"):
        inc = parse(dialect(), request(name), force=FORCED)
        assert inc.model == FORCED, name
        assert orjson.loads(inc.body)["model"] == FORCED


@pytest.mark.parametrize("dialect", [anthropic, openai])
def test_a_forced_alias_resolves_like_a_requested_one(dialect: Any) -> None:
    request = messages if dialect is anthropic else chat
    assert parse(dialect(), request("claude-opus-4-7"), force="haiku").model == HAIKU


def test_openai_echoes_the_name_the_client_asked_for_even_when_forced() -> None:
    body = orjson.dumps(chat("gpt-4o"))
    _, (ctx, _) = openai().parse(body, orjson.loads(body), [], b"", INFO, MODELS, FORCED)
    assert (ctx.requested_model, ctx.model) == ("gpt-4o", FORCED)


# --- error shapes -----------------------------------------------------------------------------------

ERR = DarioError(404, "not_found_error", "no such thing", headers=[(b"allow", b"GET")],
                 openai_code="model_not_found", param="model")


def test_anthropic_error_shape() -> None:
    status, headers, body = anthropic().error_response(ERR, "req_1")
    assert status == 404
    assert headers == [(b"allow", b"GET"), (b"request-id", b"req_1")]
    assert orjson.loads(body) == {"type": "error", "error": {"type": "not_found_error", "message": "no such thing"},
                                  "request_id": "req_1"}


def test_openai_error_shape() -> None:
    status, headers, body = openai().error_response(ERR, "req_1")
    assert status == 404
    assert headers == [(b"allow", b"GET"), (b"x-request-id", b"req_1")]
    assert orjson.loads(body) == {"error": {"message": "no such thing", "type": "invalid_request_error",
                                            "param": "model", "code": "model_not_found"}}


def test_openai_maps_overloaded_to_503() -> None:
    status, _, body = openai().error_response(DarioError(529, "overloaded_error", "busy"), "r")
    assert status == 503 and orjson.loads(body)["error"]["code"] == "overloaded"


# --- the public app: one path for every dialect -----------------------------------------------------


class StubRelay:
    """Records what it is handed and answers a fixed Anthropic message through the sink."""

    def __init__(self) -> None:
        self.handed: list[Incoming] = []

    async def forward(self, inc: Incoming, sink: Sink) -> Outcome:
        self.handed.append(inc)
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": inc.model,
                   "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
        body = orjson.dumps(message)
        await sink.answer(Answer(200, [(b"content-type", b"application/json")], body, "work", parsed=message))
        return Outcome(account="work", status=200)


def make_app(**settings: Any) -> tuple[PublicApp, StubRelay, list[tuple[Incoming, Outcome]]]:
    recorded: list[tuple[Incoming, Outcome]] = []
    state = SimpleNamespace(
        settings=replace(Settings(), **settings), client_family=lambda ua: "other", requests_served=0,
        record=lambda inc, out: recorded.append((inc, out)),
    )
    relay = StubRelay()
    guard = Guard(listen_host="127.0.0.1", port_ref=lambda: 3456)
    app = PublicApp(cast(Any, state), cast(Any, relay), guard, ModelCatalog(ModelTable()))
    return app, relay, recorded


def call(app: PublicApp, method: str, path: str, body: object = None,
         headers: list[tuple[bytes, bytes]] | None = None,
         host: bytes = b"127.0.0.1:3456") -> tuple[int, list[tuple[bytes, bytes]], Any]:
    raw = orjson.dumps(body) if body is not None else b""
    sent: list[dict[str, Any]] = []
    arrived = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if arrived:
            return arrived.pop()
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", host), *(headers or [])], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 3456)}
    trio.run(app, scope, receive, send)
    start, *bodies = sent
    payload = b"".join(m.get("body", b"") for m in bodies)
    return start["status"], start["headers"], orjson.loads(payload) if payload else None


def test_both_dialects_reach_the_relay_through_one_path() -> None:
    app, relay, _ = make_app()
    status, _, anthropic_answer = call(app, "POST", "/v1/messages", messages("sonnet"))
    assert status == 200 and anthropic_answer["type"] == "message"
    status, _, openai_answer = call(app, "POST", "/v1/chat/completions", chat("sonnet"))
    assert status == 200 and openai_answer["object"] == "chat.completion"
    assert openai_answer["choices"][0]["message"]["content"] == "Hello"
    assert [(i.dialect, i.model) for i in relay.handed] == [("anthropic", SONNET), ("openai", SONNET)]
    assert app.state.requests_served == 2


def test_force_model_applies_to_both_dialects_alike() -> None:
    app, relay, _ = make_app(force_model="haiku")
    call(app, "POST", "/v1/messages", messages("claude-opus-4-7"))
    call(app, "POST", "/v1/messages/count_tokens", {"model": "opus", "messages": []})
    status, _, answer = call(app, "POST", "/v1/chat/completions", chat("a-name-no-table-knows"))
    assert status == 200
    assert answer["model"] == "a-name-no-table-knows"  # echoed as asked, as OpenAI does
    assert [i.model for i in relay.handed] == [HAIKU, HAIKU, HAIKU]
    assert [orjson.loads(i.body)["model"] for i in relay.handed] == [HAIKU, HAIKU, HAIKU]


def test_an_unknown_openai_model_is_answered_and_recorded_without_the_relay() -> None:
    app, relay, recorded = make_app()
    status, headers, answer = call(app, "POST", "/v1/chat/completions", chat("not-a-model"))
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    assert any(name == b"x-request-id" for name, _ in headers)
    assert relay.handed == []
    [(inc, out)] = recorded
    assert (inc.dialect, inc.endpoint, inc.model, out.status) == ("openai", "chat", "not-a-model", 404)


@pytest.mark.parametrize(("path", "openai_shape"), [
    ("/v1/messages", False), ("/v1/chat/completions", True), ("/v1/messages/count_tokens", False),
])
def test_errors_before_relaying_use_the_dialect_of_the_path(path: str, openai_shape: bool) -> None:
    app, relay, _ = make_app()
    for request in ([1, 2], "not json"):
        status, headers, answer = call(app, "POST", path, request)
        assert status == 400
        assert ("error" in answer and "type" not in answer) == openai_shape
        assert any(name == (b"x-request-id" if openai_shape else b"request-id") for name, _ in headers)
    status, headers, answer = call(app, "GET", path)
    assert status == 405 and (b"allow", b"POST") in headers
    assert ("type" not in answer) == openai_shape
    assert relay.handed == []


def test_a_foreign_host_is_refused_in_the_dialect_of_the_path() -> None:
    app, _, _ = make_app()
    for path, openai_shape in (("/v1/chat/completions", True), ("/v1/messages", False), ("/nowhere", False)):
        status, _, answer = call(app, "POST", path, chat("sonnet"), host=b"evil.example")
        assert status == 403
        assert ("type" not in answer) == openai_shape, path


# --- prompt-cache affinity keys ---------------------------------------------------------------


def test_both_dialects_compute_prompt_cache_keys_once_per_request() -> None:
    cached = messages("claude-opus-4-7", system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}])
    inc = parse(anthropic(), cached)
    assert inc.cache_keys is not None and len(inc.cache_keys.written) == 1
    assert parse(anthropic(), messages("claude-opus-4-7")).cache_keys is None
    counted = parse(AnthropicDialect("count_tokens", "/v1/messages/count_tokens"), cached)
    assert counted.cache_keys is None  # counting tokens reads no cache
    # An OpenAI client's request is keyed by the Anthropic body it becomes (parts may carry cache_control).
    assert parse(openai(), chat("claude-opus-4-7")).cache_keys is None
    marked = chat("claude-opus-4-7", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}])
    keys = parse(openai(), marked).cache_keys
    assert keys is not None and [k.ttl for k in keys.written] == [3600.0]
