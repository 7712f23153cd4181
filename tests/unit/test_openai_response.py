"""Anthropic message → chat.completion, and upstream error mapping (dario.daemon.dialects.openai.response/errors)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from dario.daemon.dialects.openai.errors import openai_error_from_anthropic
from dario.daemon.dialects.openai.request import ChatContext
from dario.daemon.dialects.openai.response import message_to_chat
from dario.daemon.dialects.openai.thinking import ThinkingCache

CTX = ChatContext(requested_model="gpt-4o", model="claude-sonnet-4-5-20250929")
USAGE = {
    "input_tokens": 25,
    "output_tokens": 40,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1000,
}


def msg(content: list[dict[str, Any]], stop: str | None = "end_turn", **kw: Any) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": kw.pop("usage", USAGE),
        **kw,
    }


def chat(m: dict[str, Any], ctx: ChatContext = CTX, **kw: Any) -> dict[str, Any]:
    out = message_to_chat(m, ctx, created=1730000000, **kw)
    ChatCompletion.model_validate(out)  # the official SDK type must accept it
    return out


def test_text_response_shape_and_usage() -> None:
    out = chat(msg([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]))
    assert out["id"] == "msg_01" and out["object"] == "chat.completion" and out["created"] == 1730000000
    assert out["model"] == "gpt-4o"  # echoes what the client asked for
    choice = out["choices"][0]
    assert choice["message"]["content"] == "Hello" and choice["message"]["role"] == "assistant"
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert out["usage"] == {
        "prompt_tokens": 1125,
        "completion_tokens": 40,
        "total_tokens": 1165,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


def test_tool_calls() -> None:
    out = chat(
        msg(
            [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "SF"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ],
            stop="tool_use",
        )
    )
    m = out["choices"][0]["message"]
    assert m["content"] is None
    assert m["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"SF"}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_text_and_tool_call_finish_tool_calls_even_if_stop_reason_differs() -> None:
    out = chat(
        msg(
            [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            ],
            stop="max_tokens",
        )
    )
    assert out["choices"][0]["message"]["content"] == "Checking."
    assert out["choices"][0]["finish_reason"] == "tool_calls"  # agent loops branch on it


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason_map(stop: str | None, finish: str) -> None:
    assert chat(msg([{"type": "text", "text": "x"}], stop=stop))["choices"][0]["finish_reason"] == finish


def test_empty_content_is_empty_string() -> None:
    out = chat(msg([], stop="max_tokens"))
    assert out["choices"][0]["message"]["content"] == ""


def test_thinking_to_reasoning_content_and_cached_for_tool_turns() -> None:
    thinking = {"type": "thinking", "thinking": "Let me think.", "signature": "sig1"}
    redacted = {"type": "redacted_thinking", "data": "blob"}
    cache = ThinkingCache()
    out = chat(
        msg(
            [thinking, redacted, {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}],
            stop="tool_use",
            usage={**USAGE, "output_tokens_details": {"thinking_tokens": 12}},
        ),
        thinking_cache=cache,
    )
    m = out["choices"][0]["message"]
    assert m["reasoning_content"] == "Let me think."
    assert cache.recall("toolu_9") == [thinking, redacted]
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 12}


def test_thinking_without_tools_not_cached() -> None:
    cache = ThinkingCache()
    chat(
        msg([{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "a"}]),
        thinking_cache=cache,
    )
    assert len(cache) == 0


def test_json_mode_tool_becomes_content() -> None:
    ctx = ChatContext(requested_model="gpt-4o", model="m", json_tool="json_response")
    out = chat(
        msg(
            [{"type": "tool_use", "id": "t", "name": "json_response", "input": {"a": [1, 2]}}],
            stop="tool_use",
        ),
        ctx,
    )
    m = out["choices"][0]["message"]
    assert orjson.loads(m["content"]) == {"a": [1, 2]}
    assert "tool_calls" not in m and out["choices"][0]["finish_reason"] == "stop"


def test_json_mode_unwraps_and_drops_prose_but_keeps_other_tools() -> None:
    ctx = ChatContext(requested_model="gpt-4o", model="m", json_tool="json_response", json_unwrap="value")
    out = chat(
        msg(
            [
                {"type": "text", "text": "Here you go:"},
                {"type": "tool_use", "id": "t1", "name": "json_response", "input": {"value": ["x", "y"]}},
                {"type": "tool_use", "id": "t2", "name": "lookup", "input": {}},
            ],
            stop="tool_use",
        ),
        ctx,
    )
    m = out["choices"][0]["message"]
    assert orjson.loads(m["content"]) == ["x", "y"]
    assert [t["id"] for t in m["tool_calls"]] == ["t2"] and out["choices"][0]["finish_reason"] == "tool_calls"


def test_missing_usage_gives_zeros() -> None:
    m = msg([{"type": "text", "text": "x"}])
    del m["usage"]
    assert chat(m)["usage"]["total_tokens"] == 0


def test_server_tool_blocks_ignored() -> None:
    out = chat(
        msg(
            [
                {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
                {"type": "web_search_tool_result", "tool_use_id": "srv", "content": []},
                {"type": "text", "text": "Found it."},
            ]
        )
    )
    assert (
        out["choices"][0]["message"]["content"] == "Found it."
        and "tool_calls" not in out["choices"][0]["message"]
    )


# --- errors ------------------------------------------------------------------------------------------


def err(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    s, b = openai_error_from_anthropic(status, body)
    return s, orjson.loads(b)["error"]


def anth(t: str, m: str, **extra: Any) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": t, "message": m, **extra}, "request_id": "req_1"})


@pytest.mark.parametrize(
    ("status", "atype", "out_status", "otype", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (401, "authentication_error", 401, "authentication_error", "invalid_api_key"),
        (403, "permission_error", 403, "permission_error", None),
        (404, "not_found_error", 404, "invalid_request_error", "not_found"),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 500, "server_error", None),
        (529, "overloaded_error", 503, "server_error", "overloaded"),
        (504, "timeout_error", 504, "timeout_error", None),
    ],
)
def test_error_mapping(status: int, atype: str, out_status: int, otype: str, code: str | None) -> None:
    s, e = err(status, anth(atype, "boom"))
    assert (s, e["type"], e["code"], e["message"]) == (out_status, otype, code, "boom")
    assert "param" in e


def test_spend_limit_is_insufficient_quota() -> None:
    body = anth(
        "rate_limit_error",
        "Monthly spend limit reached",
        details={"error_code": "enforced_spend_limit_reached"},
    )
    s, e = err(429, body)
    assert s == 429 and e["type"] == "insufficient_quota" and e["code"] == "insufficient_quota"
    assert e["message"] == "Monthly spend limit reached"
    # a plain 429 stays a retryable rate limit
    assert err(429, anth("rate_limit_error", "slow down"))[1]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "body", "otype"),
    [
        (502, b"<html>Bad Gateway</html>", "server_error"),
        (500, b"", "server_error"),
        (429, b'{"message": "Too many requests"}', "rate_limit_error"),
        (
            429,
            b'[{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}]',
            "rate_limit_error",
        ),
        (400, b'{"type":"error","error":"weird"}', "invalid_request_error"),
        (418, b"\xff\xfe garbage", "invalid_request_error"),
    ],
)
def test_error_garbage_tolerated(status: int, body: bytes, otype: str) -> None:
    s, e = err(status, body)
    assert e["type"] == otype and isinstance(e["message"], str) and e["message"]
    assert s >= 400


def test_bedrock_message_used() -> None:
    assert err(429, b'{"message": "Too many requests"}')[1]["message"] == "Too many requests"


@settings(max_examples=150, deadline=None)
@given(st.integers(100, 999), st.one_of(st.binary(max_size=64), st.text(max_size=40).map(str.encode)))
def test_error_mapping_never_raises(status: int, body: bytes) -> None:
    s, b = openai_error_from_anthropic(status, body)
    e = orjson.loads(b)["error"]
    assert isinstance(s, int) and set(e) == {"message", "type", "param", "code"}
