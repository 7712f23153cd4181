"""OpenAI chat request → Anthropic Messages request (dario.daemon.dialects.openai.request)."""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dario.daemon.dialects.openai.request import (
    JSON_TOOL_NAME,
    MISSING_RESULT_TEXT,
    PLACEHOLDER_USER_TEXT,
    THINKING_BUDGETS,
    chat_to_messages,
)
from dario.daemon.dialects.openai.thinking import ThinkingCache
from dario.daemon.errors import DarioError, openai_error_status_and_body
from dario.daemon.routing.models import HAIKU, OPUS, SONNET, ModelTable

MODELS = ModelTable()


def conv(body: Any, **kw: Any) -> tuple[dict[str, Any], Any]:
    return chat_to_messages(body, MODELS, **kw)


def req(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "sonnet", "messages": messages, **extra}


def bad(body: Any, param: str | None = None, **kw: Any) -> DarioError:
    with pytest.raises(DarioError) as ei:
        conv(body, **kw)
    assert ei.value.status == 400
    assert ei.value.type == "invalid_request_error"
    if param is not None:
        assert ei.value.param == param
    return ei.value


def tc(id: str, name: str = "f", args: Any = "{}") -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- basics ------------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    out, ctx = conv(req([user("hello")]))
    assert out == {
        "model": SONNET,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }
    assert ctx.requested_model == "sonnet" and ctx.model == SONNET
    assert not ctx.stream and not ctx.include_usage and ctx.json_tool is None and not ctx.thinking


@pytest.mark.parametrize("body", [None, [], "x", 3, True])
def test_non_object_body(body: Any) -> None:
    bad(body)


@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}])
def test_messages_required(messages: Any) -> None:
    bad({"model": "sonnet", "messages": messages}, "messages")


def test_model_required() -> None:
    bad({"messages": [user()]}, "model")
    bad({"model": 4, "messages": [user()]}, "model")


def test_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(DarioError) as ei:
        conv({"model": "llama-3", "messages": [user()]})
    e = ei.value
    assert (e.status, e.type, e.openai_code, e.param) == (404, "not_found_error", "model_not_found", "model")
    assert "`llama-3`" in e.message
    status, body = openai_error_status_and_body(
        e.status, e.type, e.message, code=e.openai_code, param=e.param
    )
    err = orjson.loads(body)["error"]
    assert status == 404 and err["code"] == "model_not_found" and err["param"] == "model"


def test_model_aliases_and_passthrough() -> None:
    assert conv({"model": "gpt-4o-mini", "messages": [user()]})[0]["model"] == HAIKU
    assert conv({"model": "openai/o3", "messages": [user()]})[0]["model"] == OPUS
    out, ctx = conv({"model": "claude-3-opus-20240229", "messages": [user()]})
    assert out["model"] == "claude-3-opus-20240229" and ctx.requested_model == "claude-3-opus-20240229"


@pytest.mark.parametrize("n", [2, 0, -1, "1", 1.5, True])
def test_n_other_than_one_rejected(n: Any) -> None:
    bad(req([user()], n=n), "n")


def test_n_one_accepted() -> None:
    assert conv(req([user()], n=1))[0]["messages"]


def test_ignored_params_silently() -> None:
    out, _ = conv(
        req(
            [user()],
            logprobs=False,
            logit_bias={"1": 2},
            presence_penalty=1,
            frequency_penalty=1,
            seed=7,
            store=True,
            metadata={"a": "b"},
            service_tier="auto",
            modalities=["text"],
            verbosity="low",
        )
    )
    assert set(out) == {"model", "max_tokens", "messages"}


# --- system / developer ------------------------------------------------------------------------------


def test_system_and_developer_hoisted_in_order() -> None:
    out, _ = conv(
        req(
            [
                {"role": "system", "content": "A"},
                user("q"),
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}],
                },
                {"role": "system", "content": "   "},
            ]
        )
    )
    assert out["system"] == [
        {"type": "text", "text": "A"},
        {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}},
    ]
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_only_system_adds_user_turn() -> None:
    out, _ = conv(req([{"role": "system", "content": "You are terse."}]))
    assert out["system"] == [{"type": "text", "text": "You are terse."}]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]}]


def test_system_rejects_images() -> None:
    bad(
        req(
            [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                },
                user(),
            ]
        )
    )


# --- user content parts ------------------------------------------------------------------------------


def user_parts(parts: list[Any]) -> list[dict[str, Any]]:
    out, _ = conv(req([{"role": "user", "content": parts}]))
    return out["messages"][0]["content"]


def test_image_data_url_to_base64() -> None:
    blocks = user_parts(
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}}]
    )
    assert blocks == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    ]


def test_image_jpg_normalised_and_string_url_form() -> None:
    blocks = user_parts([{"type": "image_url", "image_url": "data:image/jpg;base64,QUJD"}])
    assert blocks[0]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}


def test_image_http_url() -> None:
    blocks = user_parts([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])
    assert blocks == [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]


def test_pdf_data_url_in_image_url_becomes_document() -> None:
    blocks = user_parts([{"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERi0="}}])
    assert blocks == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_file_part_becomes_document_with_title() -> None:
    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}
    assert user_parts([part]) == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        }
    ]


def test_text_plain_file_decoded() -> None:
    data = base64.b64encode(b"hello notes").decode()
    part = {"type": "file", "file": {"file_data": f"data:text/plain;base64,{data}"}}
    assert user_parts([part])[0]["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": "hello notes",
    }


def test_input_audio_dropped() -> None:
    blocks = user_parts(
        [
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
            {"type": "text", "text": "t"},
        ]
    )
    assert blocks == [{"type": "text", "text": "t"}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}},
        {"type": "image_url", "image_url": {}},
        {"type": "file", "file": {"file_id": "file-123"}},
        {"type": "video", "video": {}},
        {"type": "text", "text": 5},
        7,
    ],
)
def test_bad_parts_are_400(part: Any) -> None:
    e = bad(req([{"role": "user", "content": [part]}]))
    assert e.param is not None and e.param.startswith("messages[0].content[0]")


def test_empty_text_skipped_and_empty_user_turn_dropped() -> None:
    out, _ = conv(
        req(
            [
                user(""),
                {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]},
                {"role": "assistant", "content": "  "},
                user("y"),
            ]
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}
    ]


def test_part_cache_control_and_message_cache_control() -> None:
    out, _ = conv(
        req(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "b"},
                    ],
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ]
        )
    )
    content = out["messages"][0]["content"]
    assert content[0]["cache_control"] == {"type": "ephemeral"}
    assert content[1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


# --- assistant / tool turns: history repair ----------------------------------------------------------


def test_tool_calls_become_tool_use_with_sanitised_ids_and_parsed_args() -> None:
    out, _ = conv(
        req(
            [
                user(),
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        tc("call.abc:1", "get_weather", '{"city": "SF"}'),
                        tc("call_2", "g", "not json"),
                        tc("call_3", "h", "[1, 2]"),
                        tc("", "k", ""),
                    ],
                },
                {"role": "tool", "tool_call_id": "call.abc:1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
                {"role": "tool", "tool_call_id": "call_3", "content": "ok"},
            ]
        )
    )
    asst = out["messages"][1]
    assert asst["role"] == "assistant"
    assert asst["content"][0] == {"type": "text", "text": "Let me check."}
    uses = asst["content"][1:]
    assert [u["id"] for u in uses][:3] == ["call_abc_1", "call_2", "call_3"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", uses[3]["id"])
    assert [u["input"] for u in uses] == [{"city": "SF"}, {}, {}, {}]
    results = out["messages"][2]["content"]
    assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
    assert results[0]["content"] == "sunny"
    # the unnamed call had no tool message: it gets a synthetic error result
    assert results[3]["is_error"] is True and results[3]["content"] == MISSING_RESULT_TEXT


def test_tool_results_merged_with_following_user_text_results_first() -> None:
    out, _ = conv(
        req(
            [
                user("q"),
                {"role": "assistant", "tool_calls": [tc("a"), tc("b")]},
                {"role": "tool", "tool_call_id": "b", "content": "rb"},
                user("also this"),
                {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "ra"}]},
            ]
        )
    )
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]
    content = out["messages"][2]["content"]
    assert [b["type"] for b in content] == ["tool_result", "tool_result", "text"]
    # results follow the tool_use order, whatever order the tool messages came in
    assert [b["tool_use_id"] for b in content[:2]] == ["a", "b"]
    assert content[0]["content"] == [{"type": "text", "text": "ra"}]
    assert "is_error" not in content[0]


def test_orphan_tool_result_becomes_text() -> None:
    out, _ = conv(req([user("q"), {"role": "tool", "tool_call_id": "zzz", "content": "stray"}]))
    content = out["messages"][0]["content"]
    assert all(b["type"] == "text" for b in content)
    assert "stray" in content[1]["text"] and "zzz" in content[1]["text"]


def test_duplicate_tool_result_keeps_last() -> None:
    out, _ = conv(
        req(
            [
                user(),
                {"role": "assistant", "tool_calls": [tc("a")]},
                {"role": "tool", "tool_call_id": "a", "content": "first"},
                {"role": "tool", "tool_call_id": "a", "content": "second"},
            ]
        )
    )
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "a", "content": "second"}]


def test_trailing_unanswered_tool_call_gets_result_turn() -> None:
    out, _ = conv(req([user(), {"role": "assistant", "tool_calls": [tc("a")]}]))
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][2]["content"][0]["tool_use_id"] == "a"


def test_duplicate_tool_use_ids_made_unique() -> None:
    out, _ = conv(
        req(
            [
                user(),
                {"role": "assistant", "tool_calls": [tc("a"), tc("a")]},
                {"role": "tool", "tool_call_id": "a", "content": "r"},
            ]
        )
    )
    ids = [b["id"] for b in out["messages"][1]["content"]]
    assert len(set(ids)) == 2 and ids[0] == "a"


def test_legacy_function_call_and_function_role() -> None:
    out, _ = conv(
        req(
            [
                user(),
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "lookup", "arguments": '{"q": 1}'},
                },
                {"role": "function", "name": "lookup", "content": "found"},
            ]
        )
    )
    use = out["messages"][1]["content"][0]
    assert use["type"] == "tool_use" and use["name"] == "lookup" and use["input"] == {"q": 1}
    res = out["messages"][2]["content"][0]
    assert res == {"type": "tool_result", "tool_use_id": use["id"], "content": "found"}


def test_consecutive_same_role_merged_and_assistant_first_gets_user() -> None:
    out, _ = conv(
        req(
            [
                {"role": "assistant", "content": "hello"},
                {"role": "assistant", "content": "again"},
                user("a"),
                user("b"),
            ]
        )
    )
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][0]["content"] == [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]
    assert [b["text"] for b in out["messages"][1]["content"]] == ["hello", "again"]
    assert [b["text"] for b in out["messages"][2]["content"]] == ["a", "b"]


def test_final_assistant_prefill_trailing_whitespace_stripped() -> None:
    out, _ = conv(req([user(), {"role": "assistant", "content": "The answer is \n"}]))
    assert out["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "The answer is"}],
    }


def test_bad_roles_and_tool_fields() -> None:
    bad(req([{"role": "robot", "content": "x"}]), "messages[0].role")
    bad(req(["hi"]), "messages[0]")
    bad(req([user(), {"role": "tool", "content": "x"}]), "messages[1].tool_call_id")
    bad(req([user(), {"role": "assistant", "tool_calls": {"id": "a"}}]), "messages[1].tool_calls")
    bad(
        req([user(), {"role": "assistant", "tool_calls": [{"id": "a", "function": {"arguments": "{}"}}]}]),
        "messages[1].tool_calls[0].function.name",
    )


# --- sampling / limits -------------------------------------------------------------------------------


def test_max_completion_tokens_preferred_over_max_tokens() -> None:
    assert conv(req([user()], max_tokens=100, max_completion_tokens=200))[0]["max_tokens"] == 200
    assert conv(req([user()], max_tokens=100))[0]["max_tokens"] == 100
    assert conv(req([user()]), default_max_tokens=999)[0]["max_tokens"] == 999
    assert conv(req([user()], max_tokens=None, max_completion_tokens=None))[0]["max_tokens"] == 4096


@pytest.mark.parametrize("v", [0, -5, "100", 1.5, True])
def test_bad_max_tokens(v: Any) -> None:
    bad(req([user()], max_tokens=v), "max_tokens")
    bad(req([user()], max_completion_tokens=v), "max_completion_tokens")


def test_temperature_clamped_and_top_p() -> None:
    assert conv(req([user()], temperature=1.7))[0]["temperature"] == 1.0
    assert conv(req([user()], temperature=0.3, top_p=0.9))[0] | {} == {
        **conv(req([user()]))[0],
        "temperature": 0.3,
        "top_p": 0.9,
    }
    assert conv(req([user()], temperature=-1))[0]["temperature"] == 0.0
    bad(req([user()], temperature="hot"), "temperature")
    bad(req([user()], temperature=float("nan")), "temperature")


def test_stop_sequences() -> None:
    assert conv(req([user()], stop="END"))[0]["stop_sequences"] == ["END"]
    assert conv(req([user()], stop=["\n", " ", "###", ""]))[0]["stop_sequences"] == ["###"]
    assert "stop_sequences" not in conv(req([user()], stop=["\n\n"]))[0]
    bad(req([user()], stop=[1]), "stop")
    bad(req([user()], stop=5), "stop")


def test_user_metadata() -> None:
    assert conv(req([user()], user="user-1234abcd"))[0]["metadata"] == {"user_id": "user-1234abcd"}
    for pii in ("jane@example.com", "+1 (415) 555-0100", "4155550100"):
        assert "metadata" not in conv(req([user()], user=pii))[0]


def test_stream_and_include_usage() -> None:
    out, ctx = conv(req([user()], stream=True, stream_options={"include_usage": True}))
    assert out["stream"] is True and ctx.stream and ctx.include_usage
    out, ctx = conv(req([user()], stream=False, stream_options={"include_usage": True}))
    assert "stream" not in out and not ctx.include_usage
    bad(req([user()], stream="yes"), "stream")


# --- tools -------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_mapping_and_missing_parameters() -> None:
    out, _ = conv(req([user()], tools=[WEATHER, {"type": "function", "function": {"name": "now"}}]))
    assert out["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"], "description": "Weather"},  # type: ignore[index]
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert conv(req([user()], tools=[WEATHER], tool_choice=choice))[0]["tool_choice"] == expected


def test_tool_choice_errors_and_no_tools() -> None:
    bad(
        req([user()], tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice",
    )
    bad(req([user()], tools=[WEATHER], tool_choice="sometimes"), "tool_choice")
    bad(req([user()], tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name")
    bad(req([user()], tools=[{"type": "web_search"}]), "tools[0]")
    # tool_choice without tools is dropped rather than sent upstream to fail
    assert "tool_choice" not in conv(req([user()], tool_choice="required"))[0]


def test_parallel_tool_calls_false() -> None:
    out, _ = conv(req([user()], tools=[WEATHER], parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out, _ = conv(req([user()], tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    out, _ = conv(req([user()], tools=[WEATHER], tool_choice="none", parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "none"}


def test_legacy_functions() -> None:
    out, _ = conv(req([user()], functions=[WEATHER["function"]], function_call={"name": "get_weather"}))
    assert out["tools"][0]["name"] == "get_weather"
    assert out["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_allowed_tools_filters() -> None:
    other = {"type": "function", "function": {"name": "other"}}
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "other"}}]},
    }
    out, _ = conv(req([user()], tools=[WEATHER, other], tool_choice=choice))
    assert [t["name"] for t in out["tools"]] == ["other"] and out["tool_choice"] == {"type": "any"}


# --- response_format ---------------------------------------------------------------------------------


def test_json_schema_forced_tool() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out, ctx = conv(
        req([user()], response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    )
    assert ctx.json_tool == JSON_TOOL_NAME and ctx.json_unwrap is None
    assert out["tools"][-1]["name"] == JSON_TOOL_NAME and out["tools"][-1]["input_schema"] is schema
    assert out["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}


def test_json_schema_non_object_root_is_wrapped() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    out, ctx = conv(
        req([user()], response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    )
    assert ctx.json_unwrap == "value"
    assert out["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"value": schema},
        "required": ["value"],
    }


def test_json_object_open_schema() -> None:
    out, ctx = conv(req([user()], response_format={"type": "json_object"}))
    assert out["tools"][0]["input_schema"]["type"] == "object"
    assert out["tools"][0]["input_schema"]["additionalProperties"] is True
    assert out["tool_choice"] == {"type": "tool", "name": ctx.json_tool}


def test_response_format_text_and_errors() -> None:
    assert "tools" not in conv(req([user()], response_format={"type": "text"}))[0]
    bad(req([user()], response_format={"type": "xml"}), "response_format.type")
    bad(req([user()], response_format="json"), "response_format")


def test_json_mode_with_thinking_instructs_instead_of_forcing() -> None:
    out, ctx = conv(req([user()], response_format={"type": "json_object"}, reasoning_effort="low"))
    assert ctx.thinking and out["thinking"]["type"] == "enabled"
    assert out.get("tool_choice", {"type": "auto"})["type"] == "auto"
    assert any(JSON_TOOL_NAME in b["text"] for b in out["system"])


def test_json_mode_with_client_tools_does_not_force() -> None:
    out, ctx = conv(req([user()], tools=[WEATHER], response_format={"type": "json_object"}))
    assert ctx.json_tool == JSON_TOOL_NAME
    assert [t["name"] for t in out["tools"]] == ["get_weather", JSON_TOOL_NAME]
    assert "tool_choice" not in out
    assert any(JSON_TOOL_NAME in b["text"] for b in out["system"])


def test_json_tool_name_avoids_client_tool_clash() -> None:
    clash = {"type": "function", "function": {"name": JSON_TOOL_NAME}}
    out, ctx = conv(req([user()], tools=[clash], tool_choice="none", response_format={"type": "json_object"}))
    assert ctx.json_tool != JSON_TOOL_NAME and ctx.json_tool == out["tools"][-1]["name"]
    assert out["tool_choice"] == {"type": "tool", "name": ctx.json_tool}


# --- thinking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget"), [("minimal", 1024), ("low", 1024), ("medium", 4096), ("high", 16384)]
)
def test_reasoning_effort_budgets(effort: str, budget: int) -> None:
    out, ctx = conv(req([user()], reasoning_effort=effort, temperature=0.2, top_p=0.5))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert THINKING_BUDGETS[effort] == budget
    assert out["max_tokens"] > budget
    assert "temperature" not in out and "top_p" not in out
    assert ctx.thinking


def test_reasoning_effort_none_and_invalid() -> None:
    out, ctx = conv(req([user()], reasoning_effort="none", temperature=0.5))
    assert "thinking" not in out and out["temperature"] == 0.5 and not ctx.thinking
    bad(req([user()], reasoning_effort="extreme"), "reasoning_effort")


def test_max_tokens_raised_above_budget_only_without_a_client_cap() -> None:
    assert conv(req([user()], reasoning_effort="high"))[0]["max_tokens"] == 16384 + 4096
    assert conv(req([user()], reasoning_effort="high", max_completion_tokens=30000))[0]["max_tokens"] == 30000
    assert conv(req([user()], reasoning_effort="low"))[0]["max_tokens"] == 4096


@pytest.mark.parametrize("key", ["max_completion_tokens", "max_tokens"])
def test_client_max_tokens_is_a_hard_cap_with_reasoning_effort(key: str) -> None:
    # Too small for the 1,024 minimum budget: thinking goes off, the cap stays.
    out, ctx = conv(req([user()], reasoning_effort="high", **{key: 1000}))
    assert out["max_tokens"] == 1000 and "thinking" not in out and not ctx.thinking
    out, ctx = conv(req([user()], reasoning_effort="high", **{key: 2000}))
    assert out["max_tokens"] == 2000 and "thinking" not in out
    # Room for a smaller budget: it shrinks to half the cap, the cap stays.
    out, ctx = conv(req([user()], reasoning_effort="high", **{key: 4000}))
    assert out["max_tokens"] == 4000 and out["thinking"]["budget_tokens"] == 2000 and ctx.thinking
    out, _ = conv(req([user()], thinking={"type": "enabled", "budget_tokens": 8000}, **{key: 3000}))
    assert out["max_tokens"] == 3000 and out["thinking"]["budget_tokens"] == 1500
    # A budget that already fits is left alone.
    out, _ = conv(req([user()], reasoning_effort="medium", **{key: 5000}))
    assert out["max_tokens"] == 5000 and out["thinking"]["budget_tokens"] == 4096


def test_capped_thinking_off_strips_client_thinking_blocks() -> None:
    body = tool_loop(reasoning_effort="high", max_completion_tokens=1000)
    body["messages"][1]["thinking_blocks"] = [SIGNED]
    out, ctx = conv(body)
    assert not ctx.thinking and out["max_tokens"] == 1000
    assert all(b["type"] != "thinking" for m in out["messages"] for b in m["content"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"logprobs": True}, "logprobs"), ({"top_logprobs": 5}, "top_logprobs"),
     ({"logprobs": True, "top_logprobs": 3}, "logprobs"), ({"logprobs": 1}, "logprobs"),
     ({"logprobs": "yes"}, "logprobs"), ({"top_logprobs": False}, "top_logprobs")],
)
def test_logprobs_refused_with_a_clear_400(extra: dict[str, Any], param: str) -> None:
    err = bad(req([user()], **extra), param)
    assert "log probabilities" in err.message


def test_logprobs_off_is_accepted() -> None:
    conv(req([user()], logprobs=False, top_logprobs=None))
    conv(req([user()], logprobs=None, top_logprobs=0))


@pytest.mark.parametrize("model", ["sonnet\x1b[31m", "\x1b]0;title\x07claude-x", "claude-\x00", "gpt-4o\x7f"])
def test_model_with_control_characters_refused(model: str) -> None:
    err = bad({"model": model, "messages": [user()]}, "model")
    assert "control characters" in err.message


def test_forced_tool_choice_drops_thinking() -> None:
    out, ctx = conv(req([user()], tools=[WEATHER], tool_choice="required", reasoning_effort="high"))
    assert "thinking" not in out and not ctx.thinking and out["tool_choice"] == {"type": "any"}


def test_prefill_drops_thinking() -> None:
    out, ctx = conv(req([user(), {"role": "assistant", "content": "Sure:"}], reasoning_effort="low"))
    assert "thinking" not in out and not ctx.thinking


SIGNED = {"type": "thinking", "thinking": "hmm", "signature": "sig=="}


def tool_loop(**extra: Any) -> dict[str, Any]:
    return req(
        [
            user("weather?"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [tc("toolu_01", "get_weather", '{"city":"SF"}')],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"},
        ],
        tools=[WEATHER],
        **extra,
    )


def test_e12_cached_thinking_reinserted_at_start() -> None:
    cache = ThinkingCache()
    cache.remember(["toolu_01"], [SIGNED, {"type": "redacted_thinking", "data": "opaque"}])
    out, ctx = conv(tool_loop(reasoning_effort="medium"), thinking_cache=cache)
    assert ctx.thinking and out["thinking"]["budget_tokens"] == 4096
    content = out["messages"][1]["content"]
    assert content[0] == SIGNED and content[1] == {"type": "redacted_thinking", "data": "opaque"}
    assert content[2]["type"] == "tool_use"


def test_e12_cache_miss_drops_thinking() -> None:
    out, ctx = conv(tool_loop(reasoning_effort="medium"), thinking_cache=ThinkingCache())
    assert "thinking" not in out and not ctx.thinking
    assert all(b["type"] != "thinking" for m in out["messages"] for b in m["content"])
    out, ctx = conv(tool_loop(reasoning_effort="medium"))  # no cache at all
    assert "thinking" not in out


def test_e12_only_latest_assistant_tool_turn_matters() -> None:
    body = tool_loop(reasoning_effort="low")
    body["messages"] += [{"role": "assistant", "content": "It is sunny."}, user("thanks")]
    out, ctx = conv(body, thinking_cache=ThinkingCache())
    assert ctx.thinking and out["thinking"]["budget_tokens"] == 1024


def test_e12_client_thinking_blocks_used_and_stripped_when_off() -> None:
    body = tool_loop(reasoning_effort="low")
    body["messages"][1]["thinking_blocks"] = [SIGNED]
    out, ctx = conv(body)
    assert ctx.thinking and out["messages"][1]["content"][0] == SIGNED
    body.pop("reasoning_effort")
    out, ctx = conv(body)
    assert not ctx.thinking and out["messages"][1]["content"][0]["type"] == "tool_use"


def test_thinking_param_passthrough() -> None:
    out, _ = conv(req([user()], thinking={"type": "enabled", "budget_tokens": 500}))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "thinking" not in conv(req([user()], thinking={"type": "disabled"}, reasoning_effort="high"))[0]
    bad(req([user()], thinking="on"), "thinking")


# --- properties --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)
TOP_KEYS = [
    "model", "messages", "n", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "tools", "tool_choice", "functions", "function_call",
    "parallel_tool_calls", "response_format", "reasoning_effort", "thinking", "user",
]  # fmt: skip
MSG_KEYS = [
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "name",
    "thinking_blocks",
    "cache_control",
]
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])

fuzzy_messages = st.lists(
    st.dictionaries(st.sampled_from(MSG_KEYS), json_values, max_size=4).map(lambda d: d)
    | st.fixed_dictionaries({"role": ROLES, "content": json_values}),
    min_size=1,
    max_size=4,
)
fuzzy_bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(TOP_KEYS), json_values, max_size=6),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["sonnet", "gpt-4o", "claude-x", "nope"]), "messages": fuzzy_messages},
        optional={k: json_values for k in TOP_KEYS[2:]},
    ),
)


def assert_only_dario_errors(body: Any) -> dict[str, Any] | None:
    try:
        out, _ = chat_to_messages(body, MODELS, thinking_cache=ThinkingCache())
    except DarioError as e:
        assert e.status in (400, 404)
        assert e.message
        return None
    orjson.dumps(out)  # the relay must be able to serialise it
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzy_bodies)
def test_any_json_returns_or_raises_dario_error(body: Any) -> None:
    assert_only_dario_errors(body)


# Schema-shaped requests: valid-ish chat histories that exercise every repair path.
ids = st.sampled_from(["call_1", "call_2", "call.3", "toolu_X", ""])
text = st.sampled_from(["", " ", "\n", "hi", "ok then ", "x"])
part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
    st.just({"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}),
    st.just({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}),
)
content = st.one_of(st.none(), text, st.lists(part, max_size=3))
tool_call = st.builds(
    lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}},
    ids,
    st.sampled_from(["get_weather", "now"]),
    st.sampled_from(["{}", '{"city":"SF"}', "bad", "[1]", ""]),
)
message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, content),
    st.builds(lambda c: {"role": "system", "content": c}, text),
    st.builds(lambda c: {"role": "developer", "content": c}, text),
    st.builds(
        lambda c, t: {"role": "assistant", "content": c, **({"tool_calls": t} if t else {})},
        st.one_of(st.none(), text),
        st.lists(tool_call, max_size=3),
    ),
    st.builds(lambda i, c: {"role": "tool", "tool_call_id": i or "call_1", "content": c}, ids, text),
)
chat_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["sonnet", "gpt-4o-mini", "claude-opus-4-5-20251101"]),
        "messages": st.lists(message, min_size=1, max_size=8),
    },
    optional={
        "tools": st.just([WEATHER, {"type": "function", "function": {"name": "now"}}]),
        "tool_choice": st.sampled_from(
            ["auto", "required", "none", {"type": "function", "function": {"name": "now"}}]
        ),
        "parallel_tool_calls": st.booleans(),
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}},
            ]
        ),
        "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
        "n": st.sampled_from([1, 2]),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
        "max_tokens": st.integers(1, 40000),
        "max_completion_tokens": st.integers(1, 40000),
        "stream": st.booleans(),
        "user": st.sampled_from(["u-1", "a@b.co", "5551234567"]),
    },
)


def check_anthropic_rules(out: dict[str, Any]) -> None:
    msgs = out["messages"]
    assert msgs and msgs[0]["role"] == "user"
    for a, b in itertools.pairwise(msgs):
        assert a["role"] != b["role"], "roles must alternate"
    for m in msgs:
        assert m["content"], "no empty turns"
        for blk in m["content"]:
            if blk["type"] == "text":
                assert blk["text"].strip(), "no empty text blocks"
            if blk["type"] == "tool_use":
                assert m["role"] == "assistant"
                assert re.fullmatch(r"[A-Za-z0-9_-]+", blk["id"])
                assert isinstance(blk["input"], dict)
            if blk["type"] == "tool_result":
                assert m["role"] == "user"
    for blk in out.get("system", []):
        assert blk["type"] == "text" and blk["text"].strip()
    for i, m in enumerate(msgs):
        uses = [b["id"] for b in m["content"] if b["type"] == "tool_use"]
        nxt = msgs[i + 1]["content"] if i + 1 < len(msgs) else None
        results = (
            [b["tool_use_id"] for b in (nxt or []) if b["type"] == "tool_result"]
            if m["role"] == "assistant"
            else []
        )
        if uses:
            assert nxt is not None, "tool_use must be answered"
            assert results == uses, "one result per tool_use, in order"
            assert all(b["type"] == "tool_result" for b in nxt[: len(uses)]), "results first"
        if m["role"] == "assistant":
            assert len(uses) == len({*uses}), "unique tool_use ids"
        if m["role"] == "user":
            prev = msgs[i - 1]["content"] if i else []
            answered = {b["id"] for b in prev if b["type"] == "tool_use"}
            assert {b["tool_use_id"] for b in m["content"] if b["type"] == "tool_result"} <= answered
    if msgs[-1]["role"] == "assistant":
        last = msgs[-1]["content"][-1]
        assert last["type"] != "text" or last["text"] == last["text"].rstrip()
    th = out.get("thinking")
    if th is not None:
        assert th["budget_tokens"] >= 1024 and out["max_tokens"] > th["budget_tokens"]
        assert "temperature" not in out and "top_p" not in out
        assert out.get("tool_choice", {"type": "auto"})["type"] in ("auto", "none")
        assert msgs[-1]["role"] == "user"
    if "temperature" in out:
        assert 0 <= out["temperature"] <= 1
    for s in out.get("stop_sequences", []):
        assert s.strip()
    if "tool_choice" in out:
        assert out.get("tools")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests)
def test_valid_histories_obey_anthropic_rules(body: dict[str, Any]) -> None:
    out = assert_only_dario_errors(body)
    if body.get("n", 1) != 1:
        assert out is None
        return
    assert out is not None, "schema-shaped requests must translate"
    check_anthropic_rules(out)


def test_e12_thinking_is_only_recalled_by_the_client_that_received_it() -> None:
    from dario.daemon.dialects.openai.thinking import thinking_owner

    alice = thinking_owner(None, "tool-a", "127.0.0.1")
    cache = ThinkingCache()
    cache.remember(["toolu_01"], [SIGNED], alice)
    for other in (
        thinking_owner(None, "tool-b", "127.0.0.1"),
        thinking_owner(None, "tool-a", "10.0.0.2"),
        thinking_owner("bob", "tool-a", "127.0.0.1"),
        thinking_owner(None, "tool-a", "127.0.0.1", peer_uid=1001),
    ):
        out, ctx = conv(tool_loop(reasoning_effort="medium"), thinking_cache=cache, thinking_owner=other)
        assert not ctx.thinking and "thinking" not in out
        assert all(b["type"] != "thinking" for m in out["messages"] for b in m["content"])
    out, ctx = conv(tool_loop(reasoning_effort="medium"), thinking_cache=cache, thinking_owner=alice)
    assert ctx.thinking and out["messages"][1]["content"][0] == SIGNED
    # A client key names its holder wherever it connects from.
    cache.remember(["toolu_01"], [SIGNED], thinking_owner("bob", "curl", "127.0.0.1"))
    out, ctx = conv(tool_loop(reasoning_effort="medium"), thinking_cache=cache,
                    thinking_owner=thinking_owner("bob", "python", "::1"))
    assert ctx.thinking
