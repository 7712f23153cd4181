"""Automatic cache breakpoints on translated OpenAI requests (dario.daemon.dialects.openai.autocache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dario.daemon.dialects.openai.autocache import MAX_BREAKPOINTS, add_breakpoints, count_breakpoints
from dario.daemon.dialects.openai.request import chat_to_messages
from dario.daemon.routing.models import ModelTable
from dario.daemon.settings import from_args

EPHEMERAL = {"type": "ephemeral"}
TOOL = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}}


def translated(messages: list[Any], **extra: Any) -> dict[str, Any]:
    body, _ = chat_to_messages({"model": "sonnet", "messages": messages, **extra}, ModelTable())
    return body


def marked(body: dict[str, Any]) -> list[str]:
    """Where the breakpoints are: "tools", "system", or "messages.I.J"."""
    out = ["tools" for t in body.get("tools") or [] if "cache_control" in t]
    out += ["system" for b in body.get("system") or [] if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        out += [f"messages.{i}.{j}" for j, b in enumerate(m["content"]) if "cache_control" in b]
    return out


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "third"}]},
    ]


def test_marks_system_tools_and_the_latest_messages_last_block() -> None:
    body = add_breakpoints(translated(conversation(), tools=[TOOL, {**TOOL, "function": {"name": "b"}}]))
    assert sorted(marked(body)) == ["messages.2.1", "system", "tools"]
    assert body["tools"][-1]["cache_control"] == EPHEMERAL and "cache_control" not in body["tools"][0]
    assert body["system"][-1]["cache_control"] == EPHEMERAL
    assert body["messages"][2]["content"][1] == {"type": "text", "text": "third", "cache_control": EPHEMERAL}


def test_nothing_to_mark_without_system_or_tools() -> None:
    body = add_breakpoints(translated([{"role": "user", "content": "hi"}]))
    assert marked(body) == ["messages.0.0"]
    assert "system" not in body and "tools" not in body


def test_never_more_than_four_counting_the_clients_own() -> None:
    own = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(3)]
    messages = [
        {"role": "system", "content": "s"}, {"role": "user", "content": own},
        {"role": "assistant", "content": "a"}, {"role": "user", "content": "latest"},
    ]  # fmt: skip
    body = add_breakpoints(translated(messages, tools=[TOOL]))
    assert count_breakpoints(body) == MAX_BREAKPOINTS
    assert "messages.2.0" in marked(body)  # the one left goes to the latest message, the most valuable
    full = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(4)]
    body = add_breakpoints(translated([{"role": "system", "content": "s"}, {"role": "user", "content": full}]))
    assert count_breakpoints(body) == MAX_BREAKPOINTS and "cache_control" not in body["system"][0]


def test_an_existing_breakpoint_is_not_doubled_and_thinking_is_skipped() -> None:
    body = translated([{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": EPHEMERAL}]}])
    assert marked(add_breakpoints(body)) == ["messages.0.0"]
    raw = {
        "model": "m", "max_tokens": 5, "system": "plain string",
        "messages": [{"role": "user", "content": "q"},
                     {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                       {"type": "thinking", "thinking": "t", "signature": "s"}]}],
    }  # fmt: skip
    out = add_breakpoints(raw)
    assert out["system"] == [{"type": "text", "text": "plain string", "cache_control": EPHEMERAL}]
    assert out["messages"][1]["content"][0]["cache_control"] == EPHEMERAL
    assert "cache_control" not in out["messages"][1]["content"][1]


def test_top_level_cache_control_counts() -> None:
    body = {"model": "m", "max_tokens": 5, "cache_control": EPHEMERAL, "messages": [{"role": "user", "content": "q"}]}
    assert count_breakpoints(body) == 1


def test_settings_flag_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("DARIO_AUTO_CACHE", raising=False)
    assert from_args([]).auto_cache is False
    assert from_args(["--auto-cache"]).auto_cache is True
    monkeypatch.setenv("DARIO_AUTO_CACHE", "1")
    assert from_args([]).auto_cache is True
    monkeypatch.setenv("DARIO_AUTO_CACHE", "0")
    assert from_args([]).auto_cache is False
