"""Automatic prompt-cache breakpoints for OpenAI-dialect clients, which have no way to mark their own.

Opt-in (`DARIO_AUTO_CACHE=1`, `--auto-cache`, or a client key created with `--auto-cache`): the
translated request gets `cache_control: {"type": "ephemeral"}` on the latest message's last block,
at the end of the system prompt and at the end of the tool definitions, in that order of value,
never past the API's limit of four breakpoints per request (the client's own count first).
https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching

The latest message's breakpoint is the one a conversation lives on: the next turn finds this
turn's prefix within the API's lookback of about 20 blocks and reads it at 0.1x the input price.
Writes cost 1.25x, so a breakpoint never read again costs 25% more than no cache at all: hence
opt-in, for clients that hold conversations.
"""

from __future__ import annotations

from typing import Any

MAX_BREAKPOINTS = 4  # "You can define up to 4 cache breakpoints" (the API answers 400 beyond)
# Thinking blocks cannot carry cache_control, and an empty text block with one is rejected.
_UNCACHEABLE = frozenset({"thinking", "redacted_thinking"})


def count_breakpoints(body: dict[str, Any]) -> int:
    """Blocks with cache_control in tools, system and messages (the API's count), plus a top-level one."""
    blocks = [*_as_list(body.get("tools")), *_as_list(body.get("system"))]
    for message in _as_list(body.get("messages")):
        if isinstance(message, dict):
            blocks += _as_list(message.get("content"))
    found = sum(1 for b in blocks if isinstance(b, dict) and "cache_control" in b)
    return found + (1 if "cache_control" in body else 0)


def add_breakpoints(body: dict[str, Any]) -> dict[str, Any]:
    """Mark the latest message, the system prompt and the tools, while the budget of four lasts."""
    budget = MAX_BREAKPOINTS - count_breakpoints(body)
    for blocks in (_latest_message_blocks(body), _system_blocks(body), _as_list(body.get("tools"))):
        if budget <= 0:
            break
        if blocks and _mark_last(blocks):
            budget -= 1
    return body


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _latest_message_blocks(body: dict[str, Any]) -> list[Any]:
    messages = _as_list(body.get("messages"))
    if not messages or not isinstance(messages[-1], dict):
        return []
    latest = messages[-1]
    if isinstance(latest.get("content"), str) and latest["content"]:
        latest["content"] = [{"type": "text", "text": latest["content"]}]
    return _as_list(latest.get("content"))


def _system_blocks(body: dict[str, Any]) -> list[Any]:
    if isinstance(body.get("system"), str) and body["system"]:
        body["system"] = [{"type": "text", "text": body["system"]}]
    return _as_list(body.get("system"))


def _mark_last(blocks: list[Any]) -> bool:
    """Put a breakpoint on the last block that can carry one; False if it has one already or none can."""
    for i in range(len(blocks) - 1, -1, -1):
        block = blocks[i]
        if not isinstance(block, dict) or block.get("type") in _UNCACHEABLE:
            continue
        if block.get("type") == "text" and not block.get("text"):
            continue
        if "cache_control" in block:
            return False
        # A new dict: the translated blocks may be shared with caches that outlive this request.
        blocks[i] = {**block, "cache_control": {"type": "ephemeral"}}
        return True
    return False
