"""Anthropic Messages response → OpenAI chat.completion (https://platform.openai.com/docs/api-reference/chat/object)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from dario.daemon.dialects.openai.request import ChatContext
    from dario.daemon.dialects.openai.thinking import ThinkingCache

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


def finish_reason(stop_reason: object, has_tool_calls: bool) -> str:
    # Whenever client tools were called the loop must see "tool_calls", whatever Anthropic said: agent loops
    # (openai-agents, Copilot SDK) branch on it.
    if has_tool_calls:
        return "tool_calls"
    mapped = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    # "tool_use" with no client tool call means only the JSON-mode tool ran: that is a normal stop.
    return "stop" if mapped == "tool_calls" else mapped


def _n(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def openai_usage(usage: object) -> dict[str, Any]:
    """Anthropic usage → complete OpenAI usage (all three counts: strict validators such as the Vercel AI SDK
    reject partial usage); prompt_tokens includes cached input, as OpenAI's does."""
    u = usage if isinstance(usage, dict) else {}
    cache_read = _n(u.get("cache_read_input_tokens"))
    prompt = _n(u.get("input_tokens")) + _n(u.get("cache_creation_input_tokens")) + cache_read
    completion = _n(u.get("output_tokens"))
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }
    details = u.get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
        out["completion_tokens_details"] = {"reasoning_tokens": details["thinking_tokens"]}
    return out


def json_tool_content(tool_input: object, unwrap: str | None) -> str:
    value = tool_input
    if unwrap is not None and isinstance(tool_input, dict) and unwrap in tool_input:
        value = tool_input[unwrap]
    return orjson.dumps(value).decode()


def message_to_chat(
    message: dict[str, Any],
    ctx: ChatContext,
    *,
    created: int,
    thinking_cache: ThinkingCache | None = None,
) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    json_content: str | None = None
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        t = block.get("type")
        if t == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif t == "tool_use":
            name = block.get("name")
            if ctx.json_tool is not None and name == ctx.json_tool:
                json_content = json_tool_content(block.get("input"), ctx.json_unwrap)
                continue
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(block.get("input", {})).decode()},
                }
            )
        elif t == "thinking":
            thinking_blocks.append(block)
            th = block.get("thinking")
            if isinstance(th, str):
                reasoning.append(th)
        elif t == "redacted_thinking":
            thinking_blocks.append(block)
        # server-tool blocks (server_tool_use, web_search_tool_result, …) have no OpenAI equivalent.

    if json_content is not None:
        # JSON mode: the client asked for JSON only, so surrounding prose would break its parser.
        text_out: str | None = json_content
    elif texts:
        text_out = "".join(texts)
    else:
        text_out = None if tool_calls else ""
    msg: dict[str, Any] = {"role": "assistant", "content": text_out, "refusal": None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        msg["tool_calls"] = tool_calls
        if thinking_cache is not None and thinking_blocks:
            thinking_cache.remember([tc["id"] for tc in tool_calls], thinking_blocks, ctx.thinking_owner)

    mid = message.get("id")
    return {
        "id": mid if isinstance(mid, str) and mid else f"chatcmpl-{created}",
        "object": "chat.completion",
        "created": created,
        "model": ctx.requested_model,
        "choices": [
            {
                "index": 0,
                "message": msg,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason"), bool(tool_calls)),
            }
        ],
        "usage": openai_usage(message.get("usage")),
    }
