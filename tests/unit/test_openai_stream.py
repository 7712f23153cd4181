"""Anthropic SSE → chat.completion.chunk frames (dario.daemon.dialects.openai.stream), checked with the openai SDK."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from dario.daemon.dialects.openai.request import ChatContext
from dario.daemon.dialects.openai.stream import ChatStreamTranslator
from dario.daemon.dialects.openai.thinking import ThinkingCache

Event = tuple[str, dict[str, Any]]


def ctx(**kw: Any) -> ChatContext:
    return ChatContext(requested_model="gpt-4o", model="claude-sonnet-4-5-20250929", stream=True, **kw)


def message_start(input_tokens: int = 472, **usage: int) -> Event:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 2, **usage},
            },
        },
    )


def start(i: int, block: dict[str, Any]) -> Event:
    return ("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})


def delta(i: int, d: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})


def stop(i: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": i})


def text_block(i: int, *pieces: str) -> list[Event]:
    return [
        start(i, {"type": "text", "text": ""}),
        *(delta(i, {"type": "text_delta", "text": p}) for p in pieces),
        stop(i),
    ]


def tool_block(i: int, tid: str, name: str, *fragments: str) -> list[Event]:
    return [
        start(i, {"type": "tool_use", "id": tid, "name": name, "input": {}}),
        *(delta(i, {"type": "input_json_delta", "partial_json": f}) for f in fragments),
        stop(i),
    ]


def thinking_block(i: int, *pieces: str, signature: str = "sig==") -> list[Event]:
    return [
        start(i, {"type": "thinking", "thinking": "", "signature": ""}),
        *(delta(i, {"type": "thinking_delta", "thinking": p}) for p in pieces),
        delta(i, {"type": "signature_delta", "signature": signature}),
        stop(i),
    ]


def end(stop_reason: str, output_tokens: int = 89) -> list[Event]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


PING: Event = ("ping", {"type": "ping"})


def run(
    events: list[Event], c: ChatContext, cache: ThinkingCache | None = None, finish: bool = True
) -> tuple[list[bytes], ChatStreamTranslator]:
    tr = ChatStreamTranslator(c, created=1700000000, thinking_cache=cache)
    frames: list[bytes] = []
    for name, data in events:
        frames += tr.feed(name, orjson.dumps(data))
    if finish:
        frames += tr.finish()
    return frames, tr


def parse(frames: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """→ (chunk dicts, ended with [DONE]). Checks SSE framing and that [DONE] is last."""
    chunks, done = [], False
    for f in frames:
        assert f.startswith(b"data: ") and f.endswith(b"\n\n") and f.count(b"\n\n") == 1
        assert not done, "nothing may follow [DONE]"
        payload = f[6:-2]
        if payload == b"[DONE]":
            done = True
            continue
        chunks.append(orjson.loads(payload))
    return chunks, done


def check_and_accumulate(chunks: list[dict[str, Any]], include_usage: bool = False) -> Any:
    """Validate every chunk with the SDK type, check what openai-python relies on, accumulate with its helper."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    ids, createds, roles, finishes = set(), set(), 0, []
    first_seen: set[int] = set()
    for i, raw in enumerate(chunks):
        chunk = ChatCompletionChunk.model_validate(raw)
        assert raw["object"] == "chat.completion.chunk"  # the SDK's stream helper skips any other
        ids.add(raw["id"])
        createds.add(raw["created"])
        if include_usage:
            assert "usage" in raw
            if raw["choices"]:
                assert raw["usage"] is None  # only the final chunk carries usage
        else:
            assert "usage" not in raw and raw["choices"], "no usage chunk unless asked"
        for ch in raw["choices"]:
            d = ch["delta"]
            roles += "role" in d
            if i == 0:
                assert d.get("role") == "assistant"
            assert ch["finish_reason"] != ""  # null or a reason, never ""
            if ch["finish_reason"] is not None:
                finishes.append(i)
            for call in d.get("tool_calls", []):
                k = call["index"]
                assert "function" in call
                if k in first_seen:  # id/type/name only in the first delta of a call
                    assert "id" not in call and "type" not in call and "name" not in call["function"]
                    assert call["function"]["arguments"] != ""
                else:
                    assert k == len(first_seen), "tool indices are 0-based and contiguous"
                    assert call["id"] and call["type"] == "function" and call["function"]["name"]
                    first_seen.add(k)
        state.handle_chunk(chunk)
    assert len(ids) == 1 and len(createds) == 1
    assert roles == 1  # accumulate_delta would concatenate a repeated role
    assert len(finishes) == 1, "exactly one final choice chunk"
    last_choice_chunk = max(i for i, c in enumerate(chunks) if c["choices"])
    assert finishes[0] == last_choice_chunk  # null until the final choice chunk
    try:
        return state.get_final_completion()
    except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError):
        # The SDK refuses to "parse" truncated/filtered completions (as with real OpenAI); the
        # accumulated snapshot is what a client still sees.
        snap = state.current_completion_snapshot
        assert snap.choices[0].finish_reason in ("length", "content_filter")
        return snap


def sdk_stream(frames: list[bytes]) -> Any:
    """Serve the frames over HTTP to the real openai client and let its stream helper consume them."""
    body = b"".join(frames)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = openai.OpenAI(
        api_key="k",
        base_url="http://dario.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "x"}]) as s:
        return s.get_final_completion()


ARGS_1 = {"location": "San Francisco, CA", "unit": "celsius"}
ARGS_2 = {"query": 'news "today"', "n": [1, 2, {"deep": True}]}


def text_then_two_tools() -> list[Event]:
    a1 = orjson.dumps(ARGS_1).decode()
    a2 = orjson.dumps(ARGS_2).decode()
    return [
        message_start(cache_read_input_tokens=1000, cache_creation_input_tokens=20),
        *text_block(0, "Let me ", "check."),
        PING,
        *tool_block(1, "toolu_01A", "get_weather", "", a1[:7], a1[7:20], "", a1[20:]),
        *tool_block(2, "toolu_01B", "search", a2[:1], a2[1:5], a2[5:]),
        *end("tool_use"),
    ]


@pytest.mark.parametrize("include_usage", [False, True])
def test_text_then_two_tool_calls(include_usage: bool) -> None:
    frames, tr = run(text_then_two_tools(), ctx(include_usage=include_usage))
    chunks, done = parse(frames)
    assert done
    final = check_and_accumulate(chunks, include_usage)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [c.id for c in calls] == ["toolu_01A", "toolu_01B"]
    assert [c.function.name for c in calls] == ["get_weather", "search"]
    assert orjson.loads(calls[0].function.arguments) == ARGS_1
    assert orjson.loads(calls[1].function.arguments) == ARGS_2
    assert final.id == "msg_1" and final.model == "gpt-4o" and final.created == 1700000000
    # the same frames through the real SDK client's stream helper
    via_sdk = sdk_stream(frames)
    assert [orjson.loads(c.function.arguments) for c in via_sdk.choices[0].message.tool_calls] == [
        ARGS_1,
        ARGS_2,
    ]
    assert via_sdk.choices[0].finish_reason == "tool_calls"
    # usage: once, complete, with choices: []
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == [] and usage_chunks[0] is chunks[-1]
        assert usage_chunks[0]["usage"] == {
            "prompt_tokens": 472 + 1000 + 20,
            "completion_tokens": 89,
            "total_tokens": 472 + 1000 + 20 + 89,
            "prompt_tokens_details": {"cached_tokens": 1000},
        }
        assert final.usage is not None and final.usage.total_tokens == 1581
    else:
        assert usage_chunks == []
    assert tr.usage is not None and tr.usage["input_tokens"] == 472 and tr.usage["output_tokens"] == 89
    assert tr.usage["cache_read_input_tokens"] == 1000


def test_tool_index_is_ordinal_not_block_index() -> None:
    frames, _ = run(text_then_two_tools(), ctx())
    chunks, _ = parse(frames)
    indices = [c["index"] for ch in chunks for c in ch["choices"][0]["delta"].get("tool_calls", [])]
    assert set(indices) == {0, 1}  # Anthropic block indices were 1 and 2


def test_empty_fragments_skipped() -> None:
    frames, _ = run(text_then_two_tools(), ctx())
    for ch in parse(frames)[0]:
        for call in ch["choices"][0]["delta"].get("tool_calls", []):
            if "id" not in call:
                assert call["function"]["arguments"]


def test_thinking_then_text() -> None:
    events = [
        message_start(),
        *thinking_block(0, "First, ", "consider."),
        *text_block(1, "Answer."),
        *end("end_turn"),
    ]
    frames, _ = run(events, ctx(thinking=True))
    chunks, done = parse(frames)
    final = check_and_accumulate(chunks)
    msg = final.choices[0].message
    assert msg.content == "Answer." and final.choices[0].finish_reason == "stop"
    assert msg.model_extra["reasoning_content"] == "First, consider."
    assert done and sdk_stream(frames).choices[0].message.content == "Answer."


def test_thinking_with_tool_call_is_cached() -> None:
    cache = ThinkingCache()
    events = [
        message_start(),
        *thinking_block(0, "Need ", "weather.", signature="SIG"),
        start(1, {"type": "redacted_thinking", "data": "opaque"}),
        stop(1),
        *tool_block(2, "toolu_T", "get_weather", '{"city":"SF"}'),
        *end("tool_use"),
    ]
    frames, _ = run(events, ctx(thinking=True), cache)
    check_and_accumulate(parse(frames)[0])
    assert cache.recall("toolu_T") == [
        {"type": "thinking", "thinking": "Need weather.", "signature": "SIG"},
        {"type": "redacted_thinking", "data": "opaque"},
    ]


def test_tool_call_with_no_args_emits_empty_object() -> None:
    events = [message_start(), *tool_block(0, "toolu_N", "now"), *end("tool_use")]
    frames, _ = run(events, ctx())
    final = check_and_accumulate(parse(frames)[0])
    call = final.choices[0].message.tool_calls[0]
    assert call.function.arguments == "{}" and call.function.name == "now"
    assert final.choices[0].finish_reason == "tool_calls"
    assert sdk_stream(frames).choices[0].message.tool_calls[0].function.arguments == "{}"


def test_only_empty_fragment_counts_as_no_args() -> None:
    events = [message_start(), *tool_block(0, "toolu_N", "now", ""), *end("tool_use")]
    final = check_and_accumulate(parse(run(events, ctx())[0])[0])
    assert final.choices[0].message.tool_calls[0].function.arguments == "{}"


def test_error_event_mid_stream() -> None:
    events = [
        message_start(),
        *text_block(0, "partial"),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        *text_block(1, "never"),
    ]
    frames, tr = run(events, ctx(include_usage=True))
    assert frames[-1].startswith(b'data: {"error"')
    assert b"[DONE]" not in b"".join(frames)  # no [DONE] after an error
    err = orjson.loads(frames[-1][6:])["error"]
    assert err["message"] == "Overloaded" and err["type"] == "server_error" and err["code"] == "overloaded"
    assert all(b"never" not in f for f in frames)
    assert tr.finish() == []
    with pytest.raises(openai.APIError, match="Overloaded"):
        sdk_stream(frames)


def test_error_frame_helper() -> None:
    tr = ChatStreamTranslator(ctx(), created=1)
    f = tr.error_frame("api_error", "upstream went away")
    assert f.startswith(b"data: ") and f.endswith(b"\n\n")
    assert orjson.loads(f[6:])["error"] == {
        "message": "upstream went away",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert tr.feed(*("message_stop", b"{}")) == [] and tr.finish() == []


def test_stop_reasons_and_multiple_message_deltas() -> None:
    events = [
        message_start(),
        *text_block(0, "cut"),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 10}},
        ),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 20}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    frames, tr = run(events, ctx(include_usage=True))
    chunks, _ = parse(frames)
    final = check_and_accumulate(chunks, include_usage=True)
    assert final.choices[0].finish_reason == "length"
    assert tr.usage is not None and tr.usage["output_tokens"] == 20  # cumulative: last value, not summed
    assert chunks[-1]["usage"]["completion_tokens"] == 20


def test_finish_without_message_stop_still_finishes() -> None:
    events = [message_start(), *text_block(0, "hi")]
    chunks, done = parse(run(events, ctx())[0])
    assert done and check_and_accumulate(chunks).choices[0].finish_reason == "stop"


def test_json_mode_streams_content() -> None:
    c = ctx(json_tool="json_response")
    events = [message_start(), *tool_block(0, "t", "json_response", '{"a":', " 1}"), *end("tool_use")]
    final = check_and_accumulate(parse(run(events, c)[0])[0])
    assert orjson.loads(final.choices[0].message.content) == {"a": 1}
    assert final.choices[0].message.tool_calls is None and final.choices[0].finish_reason == "stop"


def test_json_mode_unwrap() -> None:
    c = ctx(json_tool="json_response", json_unwrap="value")
    events = [
        message_start(),
        *tool_block(0, "t", "json_response", '{"value"', ': [1, "x"]}'),
        *end("tool_use"),
    ]
    final = check_and_accumulate(parse(run(events, c)[0])[0])
    assert orjson.loads(final.choices[0].message.content) == [1, "x"]


def test_unknown_and_malformed_events() -> None:
    tr = ChatStreamTranslator(ctx(), created=1)
    assert tr.feed("some_future_event", b'{"type":"some_future_event"}') == []
    assert tr.feed("ping", b"not json") == []
    out = tr.feed("content_block_delta", b"{broken")
    assert len(out) == 1 and b'"error"' in out[0]


# --- property: any well-formed Anthropic stream yields a valid OpenAI stream ------------------------

block_spec = st.one_of(
    st.tuples(st.just("text"), st.lists(st.text(max_size=6), max_size=4)),
    st.tuples(
        st.just("tool"),
        st.dictionaries(
            st.text(max_size=4), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4), max_size=3
        ),
    ),
    st.tuples(st.just("thinking"), st.lists(st.text(max_size=6), max_size=3)),
)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(block_spec, max_size=6),
    st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal"]),
    st.booleans(),
    st.integers(1, 7),
)
def test_random_streams_accumulate(
    blocks: list[Any], stop_reason: str, include_usage: bool, cut: int
) -> None:
    events: list[Event] = [message_start()]
    expected_args = []
    for i, (kind, payload) in enumerate(blocks):
        if kind == "text":
            events += text_block(i, *payload)
        elif kind == "thinking":
            events += thinking_block(i, *payload)
        else:
            s = orjson.dumps(payload).decode()
            pieces = [s[j : j + cut] for j in range(0, len(s), cut)] if payload else []
            events += tool_block(i, f"toolu_{i}", f"fn{i}", *pieces)
            expected_args.append(payload)
    events += end(stop_reason)
    frames, _ = run(events, ctx(include_usage=include_usage), ThinkingCache())
    chunks, done = parse(frames)
    assert done
    final = check_and_accumulate(chunks, include_usage)
    calls = final.choices[0].message.tool_calls or []
    assert [orjson.loads(c.function.arguments) for c in calls] == expected_args
    if expected_args:
        assert final.choices[0].finish_reason == "tool_calls"
    texts = "".join("".join(p) for k, p in blocks if k == "text")
    assert (final.choices[0].message.content or "") == texts
