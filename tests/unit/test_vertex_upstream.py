"""dario's VertexUpstream against the fake Vertex AI over loopback, with dario's own HttpClient."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from dario.daemon.upstream.base import Call, VerdictKind
from dario.daemon.upstream.httpclient import ConnectError, HttpClient
from dario.daemon.upstream.sse import iter_events
from dario.daemon.upstream.vertex import (
    ADC_SECRET,
    VertexUpstream,
    base_url_for,
    host_for,
    parse_base_url,
    vertex_model,
)
from tests.fakevertex import FakeVertex


@pytest.fixture(scope="module")
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


@pytest.fixture
def fake(vertex: FakeVertex) -> FakeVertex:
    vertex.clear()
    vertex.set_expires_in(3600)
    return vertex


@pytest.fixture
def secret(fake: FakeVertex, tmp_path: Path) -> str:
    return fake.service_account(tmp_path).read_text()


def _base(fake: FakeVertex) -> str:
    return base_url_for("proj", "us-east5", host=fake.url)


def _run(test: Callable[[VertexUpstream], Awaitable[None]], *, refresher: bool = False) -> None:
    async def main() -> None:
        async with HttpClient(trust_env=False) as client:
            up = VertexUpstream(client)
            async with trio.open_nursery() as nursery:
                if refresher:
                    await nursery.start(up.tokens.run)
                await test(up)
                nursery.cancel_scope.cancel()

    trio.run(main)


def _messages(text: str = "hi", **extra: Any) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 50,
                         "messages": [{"role": "user", "content": text}], **extra})


async def _call(up: VertexUpstream, base: str, secret: str, body: bytes, path: str = "/v1/messages",
                headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    request = up.prepare(base, secret, Call("POST", path, b"", headers or [], body))
    reply = await up.send(request, read_timeout=10)
    try:
        data = b"".join([bytes(c) async for c in reply.aiter_bytes()])
    finally:
        await reply.aclose()
    return reply.status, reply.headers, data


def _model_calls(fake: FakeVertex) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["path"] != "/token"]


def test_model_ids_and_hosts() -> None:
    assert vertex_model("claude-sonnet-4-5") == "claude-sonnet-4-5@20250929"
    assert vertex_model("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5@20250929"
    assert vertex_model("claude-opus-4-20250514") == "claude-opus-4@20250514"
    assert vertex_model("claude-3-5-sonnet-20241022") == "claude-3-5-sonnet-v2@20241022"
    assert vertex_model("claude-haiku-4-5@20251001") == "claude-haiku-4-5@20251001"
    assert vertex_model("gpt-4o") is None
    assert host_for("global") == "https://aiplatform.googleapis.com"
    assert host_for("eu") == "https://aiplatform.eu.rep.googleapis.com"
    assert host_for("us-east5") == "https://us-east5-aiplatform.googleapis.com"
    base = base_url_for("my-proj", "europe-west1")
    assert base == "https://europe-west1-aiplatform.googleapis.com/v1/projects/my-proj/locations/europe-west1"
    assert parse_base_url(base) == ("https://europe-west1-aiplatform.googleapis.com", "my-proj", "europe-west1")
    with pytest.raises(ValueError):
        parse_base_url("https://api.anthropic.com")


def test_text_goes_to_raw_predict_with_the_vertex_body(fake: FakeVertex, secret: str) -> None:
    async def test(up: VertexUpstream) -> None:
        status, headers, body = await _call(up, _base(fake), secret, _messages(),
                                            headers=[(b"anthropic-beta", b"a-1, b-2"), (b"x-api-key", b"client")])
        assert status == 200, body
        assert not up.is_stream(headers)
        assert orjson.loads(up.answer_body(body))["content"][0]["text"] == "Hello from Vertex."

    _run(test)
    (sent,) = _model_calls(fake)
    assert sent["path"].endswith("/locations/us-east5/publishers/anthropic/models/"
                                 "claude-sonnet-4-5@20250929:rawPredict")
    assert "model" not in sent["body"]
    assert sent["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert sent["body"]["anthropic_beta"] == ["a-1", "b-2"]
    assert sent["headers"]["anthropic-beta"] == "a-1,b-2"
    assert "x-api-key" not in sent["headers"] and "anthropic-version" not in sent["headers"]
    assert sent["headers"]["authorization"].startswith("Bearer ya29.fake-")


def test_stream_is_anthropic_sse(fake: FakeVertex, secret: str) -> None:
    async def test(up: VertexUpstream) -> None:
        request = up.prepare(_base(fake), secret, Call("POST", "/v1/messages", b"", [], _messages(stream=True)))
        assert request.url.endswith(":streamRawPredict")
        reply = await up.send(request, read_timeout=10)
        assert reply.status == 200 and up.is_stream(reply.headers)
        decoder = up.stream_decoder()
        out = b""
        while (chunk := await reply.next_chunk()) is not None:
            out += decoder.feed(chunk)
        await reply.aclose()
        names = [name for name, _ in iter_events(out)]
        assert names[0] == b"message_start" and names[-1] == b"message_stop"
        assert b"content_block_delta" in names

    _run(test)


def test_tools_and_thinking_pass_through(fake: FakeVertex, secret: str) -> None:
    tools = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]
    thinking = {"type": "enabled", "budget_tokens": 1024}

    async def test(up: VertexUpstream) -> None:
        status, _, body = await _call(up, _base(fake), secret,
                                      _messages("[[tool]] [[thinking]]", tools=tools, thinking=thinking))
        assert status == 200, body
        kinds = [b["type"] for b in orjson.loads(body)["content"]]
        assert kinds == ["thinking", "tool_use"]

    _run(test)
    (sent,) = _model_calls(fake)
    assert sent["body"]["tools"] == tools and sent["body"]["thinking"] == thinking


def test_count_tokens_through_its_raw_predict_endpoint(fake: FakeVertex, secret: str) -> None:
    async def test(up: VertexUpstream) -> None:
        status, _, body = await _call(up, _base(fake), secret, _messages(), path="/v1/messages/count_tokens")
        assert status == 200, body
        assert orjson.loads(body)["input_tokens"] >= 1
        status, _, body = await up.check_key(_base(fake), secret)
        assert status == 200, body

    _run(test)
    calls = _model_calls(fake)
    assert [c["path"].rsplit("/", 1)[1] for c in calls] == ["count-tokens:rawPredict"] * 2
    assert calls[0]["body"]["model"] == "claude-sonnet-4-5@20250929"


@pytest.mark.parametrize(("action", "status", "kind", "etype"), [
    ({"google": "RESOURCE_EXHAUSTED"}, 429, VerdictKind.RATE_LIMITED, "rate_limit_error"),
    ({"google": "RESOURCE_EXHAUSTED", "array": True}, 429, VerdictKind.RATE_LIMITED, "rate_limit_error"),
    ({"google": "UNAVAILABLE", "array": True}, 503, VerdictKind.OVERLOADED, "overloaded_error"),
    ({"google": "INTERNAL"}, 500, VerdictKind.OVERLOADED, "api_error"),
    ({"overloaded": True}, 529, VerdictKind.OVERLOADED, "overloaded_error"),
    ({"google": "PERMISSION_DENIED"}, 403, VerdictKind.AUTH, "permission_error"),
    ({"expire_tokens": True}, 401, VerdictKind.AUTH, "authentication_error"),
    ({"google": "FAILED_PRECONDITION"}, 400, VerdictKind.FINAL, "invalid_request_error"),
    ({"google": "NOT_FOUND"}, 404, VerdictKind.FINAL, "not_found_error"),
])
def test_errors_reach_the_relay_in_anthropic_shape(fake: FakeVertex, secret: str, action: dict[str, Any],
                                                   status: int, kind: VerdictKind, etype: str) -> None:
    fake.script(action)

    async def test(up: VertexUpstream) -> None:
        got, headers, body = await _call(up, _base(fake), secret, _messages())
        assert got == status
        data = orjson.loads(body)
        assert data["type"] == "error" and data["error"]["type"] == etype and data["error"]["message"]
        verdict = up.classify(got, headers, body)
        assert verdict.kind is kind
        assert verdict.error is not None and verdict.error.type == etype
        assert up.limits(headers).windows == {}

    _run(test)


def test_a_token_echoed_in_an_error_does_not_reach_the_client(fake: FakeVertex, secret: str) -> None:
    fake.script({"google": "INVALID_ARGUMENT", "echo_auth": True})

    async def test(up: VertexUpstream) -> None:
        status, _, body = await _call(up, _base(fake), secret, _messages())
        assert status == 400 and b"[redacted]" in body and b"ya29." not in body

    _run(test)


@pytest.mark.parametrize("region", ["global", "eu", "europe-west1"])
def test_each_location_kind_reaches_its_resource_path(fake: FakeVertex, secret: str, region: str) -> None:
    async def test(up: VertexUpstream) -> None:
        base = base_url_for("proj", region, host=fake.url)
        assert (await _call(up, base, secret, _messages()))[0] == 200

    _run(test)
    assert f"/projects/proj/locations/{region}/publishers/anthropic/" in _model_calls(fake)[0]["path"]


def test_an_unknown_model_is_refused_here_naming_it(fake: FakeVertex, secret: str) -> None:
    async def test(up: VertexUpstream) -> None:
        body = orjson.dumps({"model": "gpt-4o", "max_tokens": 5, "messages": []})
        status, headers, data = await _call(up, _base(fake), secret, body)
        assert status == 400 and "gpt-4o" in orjson.loads(data)["error"]["message"]
        assert up.classify(status, headers, data).kind is VerdictKind.FINAL

    _run(test)
    assert fake.requests() == []  # nothing sent, not even a token fetch


def test_a_token_is_refreshed_ahead_of_expiry_off_the_request_path(fake: FakeVertex, secret: str) -> None:
    fake.set_expires_in(2)  # refreshed when half its life is gone

    async def test(up: VertexUpstream) -> None:
        assert (await _call(up, _base(fake), secret, _messages()))[0] == 200
        assert up.tokens.fetches_on_request_path == 1  # the first request had to wait for one
        with trio.fail_after(10):
            while up.tokens.fetches_done < 2:  # the background task fetches the next one
                await up.tokens.next_fetch_end()
        request = up.prepare(_base(fake), secret, Call("POST", "/v1/messages", b"", [], _messages()))
        assert any(name == b"authorization" for name, _ in request.headers)  # prepare found it cached
        reply = await up.send(request, read_timeout=10)
        assert reply.status == 200
        await reply.aclose()
        assert up.tokens.fetches_on_request_path == 1

    _run(test, refresher=True)
    log = fake.requests()
    assert [r["path"] == "/token" for r in log] == [True, False, True, False]
    first, second = log[1]["headers"]["authorization"], log[3]["headers"]["authorization"]
    assert first != second


def test_application_default_credentials_by_reference(fake: FakeVertex, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.service_account(tmp_path)))

    async def test(up: VertexUpstream) -> None:
        status, _, body = await _call(up, _base(fake), ADC_SECRET, _messages())
        assert status == 200, body

    _run(test)
    assert [r["path"].rsplit(":", 1)[-1] for r in fake.requests()] == ["/token", "rawPredict"]


def test_unusable_credentials_are_an_auth_failure_with_nothing_sent(fake: FakeVertex, tmp_path: Path) -> None:
    info = orjson.loads(fake.service_account(tmp_path).read_text())
    info["client_email"] = "nobody@proj.iam.gserviceaccount.com"  # an issuer the fake never learned

    async def test(up: VertexUpstream) -> None:
        for secret in ("not json", orjson.dumps(info).decode()):
            status, headers, body = await _call(up, _base(fake), secret, _messages())
            assert status == 401 and up.classify(status, headers, body).kind is VerdictKind.AUTH
            assert "PRIVATE KEY" not in body.decode()

    _run(test)
    assert _model_calls(fake) == []


def test_an_unreachable_token_endpoint_lets_the_relay_try_elsewhere(fake: FakeVertex, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    info = orjson.loads(fake.service_account(tmp_path).read_text())
    info["token_uri"] = f"http://127.0.0.1:{port}/token"

    async def test(up: VertexUpstream) -> None:
        request = up.prepare(_base(fake), orjson.dumps(info).decode(), Call("POST", "/v1/messages", b"", [],
                                                                             _messages()))
        with pytest.raises(ConnectError):
            await up.send(request, read_timeout=10)

    _run(test)
