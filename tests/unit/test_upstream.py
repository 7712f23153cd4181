"""The Anthropic Upstream: error bodies read once, answers classified, requests built and signed."""

from __future__ import annotations

from typing import cast

import orjson
import pytest

from dario.daemon.upstream.anthropic import AnthropicUpstream, classify
from dario.daemon.upstream.base import Call, VerdictKind
from dario.daemon.upstream.errors import parse_error
from dario.daemon.upstream.httpclient import HttpClient

NO_CLIENT = cast(HttpClient, None)  # these tests never send


def body(etype: str, message: str, **extra: object) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message, **extra}})


def test_the_documented_spend_limit_code_is_a_spend_limit() -> None:
    info = parse_error(429, body("rate_limit_error", "usage limits reached",
                                 details={"error_code": "enforced_spend_limit_reached"}))
    assert info.spend_limit and info.type == "rate_limit_error" and info.message == "usage limits reached"
    assert classify(429, body("rate_limit_error", "x", details={"error_code": "enforced_spend_limit_reached"})).kind \
        is VerdictKind.SPEND_LIMITED


@pytest.mark.parametrize("text", ["Your spend is fine, slow down", "spend limit", "spend_limit exceeded"])
def test_the_word_spend_alone_is_an_ordinary_rate_limit(text: str) -> None:
    raw = body("rate_limit_error", text)
    assert not parse_error(429, raw).spend_limit
    assert classify(429, raw).kind is VerdictKind.RATE_LIMITED


@pytest.mark.parametrize("status,kind", [
    (200, VerdictKind.OK), (400, VerdictKind.FINAL), (404, VerdictKind.FINAL), (413, VerdictKind.FINAL),
    (401, VerdictKind.AUTH), (403, VerdictKind.AUTH), (429, VerdictKind.RATE_LIMITED),
    (500, VerdictKind.OVERLOADED), (502, VerdictKind.OVERLOADED), (503, VerdictKind.OVERLOADED),
    (504, VerdictKind.OVERLOADED), (529, VerdictKind.OVERLOADED),
])
def test_classify_by_status(status: int, kind: VerdictKind) -> None:
    verdict = classify(status, body("api_error", "m"))
    assert verdict.kind is kind
    assert (verdict.error is None) == (kind is VerdictKind.OK)


def test_wrapped_and_foreign_error_shapes() -> None:
    vertex = orjson.dumps([{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}])
    info = parse_error(429, vertex)
    assert (info.type, info.message, info.declared_type) == ("rate_limit_error", "Quota exceeded", None)
    bedrock = parse_error(503, b'{"message": "Too many requests"}')
    assert (bedrock.type, bedrock.message) == ("api_error", "Too many requests")
    odd = parse_error(500, body("some_new_error", "m"))
    assert (odd.type, odd.declared_type) == ("api_error", "some_new_error")  # known type for clients, raw for analytics


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'{"error": 5}', b"\xff\xfe", b"x" * 5000])
def test_parse_error_never_raises_and_always_has_a_message(raw: bytes) -> None:
    info = parse_error(502, raw)
    assert info.message and len(info.message) <= 1001 and not info.spend_limit


def test_prepare_signs_with_the_account_key_and_forwards_only_safe_headers() -> None:
    up = AnthropicUpstream(NO_CLIENT, kind="anthropic")
    call = Call("POST", "/v1/messages", b"beta=true", [(b"authorization", b"Bearer client"),
                                                       (b"anthropic-beta", b"x"), (b"x-api-key", b"client")], b"{}")
    req = up.prepare("https://api.example", "sk-account", call)
    assert req.url == "https://api.example/v1/messages?beta=true" and req.body == b"{}"
    assert (b"x-api-key", b"sk-account") in req.headers and (b"anthropic-beta", b"x") in req.headers
    assert (b"authorization", b"Bearer client") not in req.headers and (b"x-api-key", b"client") not in req.headers
    with pytest.raises(ValueError):
        up.prepare("https://api.example", "sk", Call("POST", "/v1/files"))


def test_limits_and_stream_detection() -> None:
    up = AnthropicUpstream(NO_CLIENT)
    snap = up.limits([(b"anthropic-ratelimit-requests-remaining", b"7"), (b"retry-after", b"3")])
    assert snap.windows["requests"].remaining == 7 and snap.retry_after == 3.0
    assert up.is_stream([(b"content-type", b"text/event-stream; charset=utf-8")])
    assert not up.is_stream([(b"content-type", b"application/json")])
    assert up.stream_decoder().feed(b"event: ping\ndata: {}\n\nevent: pa") == b"event: ping\ndata: {}\n\n"
