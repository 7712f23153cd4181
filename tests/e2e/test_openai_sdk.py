"""The official openai SDK against dariod and the fake Anthropic upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest

from tests.support import Dariod

KEY = "sk-openai-e2e"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


@pytest.fixture
def live(dariod: Dariod, upstream: Any) -> tuple[Dariod, Any, openai.OpenAI]:
    dariod.login("work", KEY, upstream.url)
    client = openai.OpenAI(base_url=dariod.url + "/v1", api_key="anything", max_retries=0)
    return dariod, upstream, client


def upstream_messages(upstream: Any) -> list[dict[str, Any]]:
    return [r for r in upstream.requests() if r["path"] == "/v1/messages"]


def streamed_tool_inputs(upstream: Any) -> list[dict[str, Any]]:
    """What the fake streamed as tool input for the last request, read from its own reply."""
    import anthropic

    last = upstream_messages(upstream)[-1]["body"]
    direct = anthropic.Anthropic(base_url=upstream.url, api_key=KEY, max_retries=0)
    message = direct.messages.create(**{k: v for k, v in last.items() if k != "stream"})
    return [b.input for b in message.content if b.type == "tool_use"]


def test_create_non_streaming(live: Any) -> None:
    _, upstream, client = live
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage and completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    sent = upstream_messages(upstream)[-1]["body"]
    assert sent["system"][0]["text"] == "Be brief."
    assert sent["model"].startswith("claude-")  # gpt-4o was mapped to a Claude model
    assert sent["max_tokens"] == 4096


def test_stream_true_text_and_usage(live: Any) -> None:
    _, _, client = live
    chunks = list(client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "Hi [[long:5]]"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_stream_helper_text_then_two_tool_calls(live: Any) -> None:
    _, upstream, client = live
    with client.chat.completions.stream(
        model="gpt-4.1", messages=[{"role": "user", "content": "Weather and time? [[tools]]"}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "I'll use a tool for that."
    calls = message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    expected = streamed_tool_inputs(upstream)
    assert [json.loads(c.function.arguments) for c in calls] == expected


def test_single_tool_call_with_usage_in_stream(live: Any) -> None:
    _, upstream, client = live
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "[[tool]]"}], tools=[WEATHER],  # type: ignore[list-item]
        stream=True, stream_options={"include_usage": True},
    ))
    tool_deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert tool_deltas[0].id and tool_deltas[0].function and tool_deltas[0].function.name == "get_weather"
    assert all(tc.id is None and tc.index == 0 for tc in tool_deltas[1:])
    arguments = "".join(tc.function.arguments or "" for tc in tool_deltas if tc.function)
    assert json.loads(arguments) == streamed_tool_inputs(upstream)[0]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_tool_history_round_trip_is_valid_for_anthropic(live: Any) -> None:
    _, upstream, client = live
    first = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "[[tools]]"}], tools=[WEATHER, TIME],  # type: ignore[list-item]
    )
    calls = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        {"role": "user", "content": "[[tools]]"},
        {
            "role": "assistant",
            "content": first.choices[0].message.content,
            "tool_calls": [c.model_dump() for c in calls],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
        {"role": "user", "content": "thanks"},
    ]
    second = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER, TIME])  # type: ignore[list-item]
    assert second.choices[0].message.content
    sent = upstream_messages(upstream)[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    results = sent[2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in results[:2]] == [c.id for c in calls]


def test_thinking_survives_a_tool_loop_through_a_client_that_drops_it(live: Any) -> None:
    _, upstream, client = live
    first = client.chat.completions.create(
        model="sonnet", reasoning_effort="high", messages=[{"role": "user", "content": "[[thinking]] [[tool]]"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    signature_sent = upstream_messages(upstream)[-1]
    assert signature_sent["body"]["thinking"]["type"] in ("enabled", "adaptive")
    client.chat.completions.create(
        model="sonnet", reasoning_effort="high", tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "[[thinking]] [[tool]]"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # thinking dropped
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    sent = upstream_messages(upstream)[-1]["body"]
    assistant = sent["messages"][1]
    if "thinking" in sent:
        # Thinking stayed on, so the assistant turn must start with its signed thinking block.
        assert assistant["content"][0]["type"] == "thinking"
        assert assistant["content"][0]["signature"]


@pytest.mark.parametrize("stream", [False, True])
def test_one_client_cannot_get_anothers_thinking_back_by_its_tool_call_id(live: Any, stream: bool) -> None:
    dariod, upstream, _ = live
    alice = openai.OpenAI(base_url=dariod.url + "/v1", api_key="anything", max_retries=0,
                          default_headers={"User-Agent": "tool-a/1.0"})
    mallory = openai.OpenAI(base_url=dariod.url + "/v1", api_key="anything", max_retries=0,
                            default_headers={"User-Agent": "tool-b/1.0"})
    ask: Any = {"model": "sonnet", "reasoning_effort": "high", "tools": [WEATHER],
                "messages": [{"role": "user", "content": "[[thinking]] [[tool]]"}]}
    if stream:
        calls = [tc for chunk in alice.chat.completions.create(**ask, stream=True)
                 for choice in chunk.choices for tc in choice.delta.tool_calls or [] if tc.id]
        call_id, name = calls[0].id, (calls[0].function.name if calls[0].function else "")
    else:
        call = (alice.chat.completions.create(**ask).choices[0].message.tool_calls or [])[0]
        call_id, name = call.id, call.function.name
    history: Any = [
        {"role": "user", "content": "[[thinking]]"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    mallory.chat.completions.create(model="sonnet", reasoning_effort="high", tools=[WEATHER],  # type: ignore[list-item]
                                    messages=history)
    sent = upstream_messages(upstream)[-1]["body"]
    assert "thinking" not in sent
    assert all(b["type"] not in ("thinking", "redacted_thinking") for m in sent["messages"] for b in m["content"])
    alice.chat.completions.create(model="sonnet", reasoning_effort="high", tools=[WEATHER],  # type: ignore[list-item]
                                  messages=history)
    sent = upstream_messages(upstream)[-1]["body"]
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0]["type"] == "thinking"


def test_unknown_model_is_a_404_in_openai_shape(live: Any) -> None:
    _, _, client = live
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    body: Any = info.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert info.value.response.headers.get("x-request-id")


def test_model_with_control_characters_is_a_400_and_not_recorded(live: Any) -> None:
    dariod, upstream, client = live
    before = len(upstream_messages(upstream))
    for model in ("gpt-4o\x1b[2J", "\x1b]0;pwned\x07sonnet", "claude-sonnet-4-6\r\n"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        body: Any = info.value.body
        assert body["param"] == "model" and "control characters" in body["message"]
    assert len(upstream_messages(upstream)) == before
    usage = dariod.ctl("usage", "--json")
    assert usage.returncode == 0 and "\\u001b" not in usage.stdout and "\x1b" not in usage.stdout


def test_n_greater_than_one_is_a_400(live: Any) -> None:
    _, upstream, client = live
    before = len(upstream_messages(upstream))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", n=2, messages=[{"role": "user", "content": "hi"}])
    assert len(upstream_messages(upstream)) == before


def test_models_list_and_retrieve(live: Any) -> None:
    _, _, client = live
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o", "sonnet"} <= ids
    assert any(i.startswith("claude-") for i in ids)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_upstream_overload_maps_to_503_and_failover_applies(dariod: Dariod, upstream: Any) -> None:
    dariod.login("a", "sk-oa-a", upstream.url)
    client = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    upstream.script({"status": 529}, key="sk-oa-a")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    # With a second account the same failure is invisible to the client.
    dariod.login("b", "sk-oa-b", upstream.url)
    dariod.ctl("accounts", "prefer", "a")
    upstream.script({"status": 529}, key="sk-oa-a")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-dario-account"] == "b"
    assert raw.parse().choices[0].message.content


def test_mid_stream_error_arrives_as_an_openai_error(live: Any) -> None:
    _, upstream, client = live
    upstream.script({"stream_error": "overloaded_error", "after_events": 4}, key=KEY)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "[[long:6]]"}], stream=True
        ):
            pass


def test_malformed_json_is_a_400_in_openai_shape(live: Any) -> None:
    dariod, _, _ = live
    import urllib.error
    import urllib.request

    req = urllib.request.Request(dariod.url + "/v1/chat/completions", data=b"{not json", method="POST",
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    body = orjson.loads(info.value.read())
    assert body["error"]["type"] == "invalid_request_error"


def test_forced_model_applies_whatever_name_the_client_sends(dariod_factory: Any, upstream: Any) -> None:
    # --model means "send every request to this model": the same for Chat Completions as for Messages,
    # even for a name dario's alias table does not know (it would be a 404 otherwise).
    forced = "claude-haiku-4-5-20251001"
    d = dariod_factory(args=["--model", forced])
    d.login("work", KEY, upstream.url)
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="anything", max_retries=0)
    completion = client.chat.completions.create(
        model="some-tool-default-model", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.model == "some-tool-default-model"  # echoed as asked, as OpenAI does
    chunks = list(client.chat.completions.create(model="gpt-4o", stream=True,
                                                 messages=[{"role": "user", "content": "Hi"}]))
    assert chunks and all(c.model == "gpt-4o" for c in chunks)
    assert [r["body"]["model"] for r in upstream_messages(upstream)] == [forced, forced]
