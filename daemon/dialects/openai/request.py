"""OpenAI Chat Completions request (https://platform.openai.com/docs/api-reference/chat/create) → Anthropic
Messages request (https://docs.anthropic.com/en/api/messages).

Every malformed input becomes DarioError(400) naming the field; nothing else escapes, for any JSON value.

History repair. Anthropic requires strict alternation and that every tool_use is answered, results
first, in the very next user turn. OpenAI clients break this in practice, so we repair rather than reject:
- consecutive same-role turns are merged; tool messages become user turns, so a tool message and the user
  text that follows it end up in ONE user turn, and that turn is reordered to put tool_results first
  (in the order of the tool_use blocks);
- a tool_use with no result gets a synthetic is_error result ("no result was provided");
- a tool result that answers no tool_use of the previous assistant turn becomes plain user text;
- a conversation that starts with an assistant turn, or has only system messages, gets a "Continue." user
  turn, because Anthropic needs a user turn first and rejects empty text.

Thinking with tool loops (see thinking.py). Choice: server-side cache. Clients drop Anthropic's signed thinking blocks,
but with thinking on, the last assistant turn of a tool loop must start with them. The response/stream
translators store each tool-calling turn's thinking blocks in a ThinkingCache keyed by tool-call id; here,
when thinking is enabled, every assistant turn with tool_use gets its cached blocks re-inserted at its
start. Blocks the client itself sends back (LiteLLM-style `thinking_blocks` on the assistant message) are
used first. If the latest assistant turn has tool_use and no thinking can be found for it (cache miss,
restart, another gateway), thinking is dropped for this request: a reply without thinking beats a 400.
Thinking is also dropped when the client forces a tool (tool_choice required/function) or ends with an
assistant prefill, both of which Anthropic rejects with thinking; the client's explicit instruction wins
over the reasoning hint. When thinking is off, thinking blocks are stripped from the history.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dario.daemon.dialects.model import model_to_ask, resolve_model
from dario.daemon.errors import DarioError
from dario.daemon.routing.models import model_id_ok

if TYPE_CHECKING:
    from dario.daemon.dialects.openai.thinking import ThinkingCache
    from dario.daemon.routing.models import ModelTable

# reasoning_effort → thinking budget_tokens (Anthropic's minimum budget is 1024).
THINKING_BUDGETS: dict[str, int] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}
MIN_THINKING_BUDGET = 1024
# Bounds numbers we emit ourselves so they always serialise (orjson refuses ints beyond 64 bits).
MAX_TOKENS_CAP = 2**31 - 1
JSON_TOOL_NAME = "json_response"
PLACEHOLDER_USER_TEXT = "Continue."
MISSING_RESULT_TEXT = "No result was provided for this tool call."

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"^\+?[\d\s().\-/]{7,}$")
_OPEN_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(slots=True)
class ChatContext:
    """What the response side needs to know about the request."""

    requested_model: str  # as the client sent it; echoed back in responses, as OpenAI does
    model: str  # resolved Claude id
    stream: bool = False
    include_usage: bool = False
    json_tool: str | None = None  # name of the injected JSON-mode tool, if response_format was emulated
    json_unwrap: str | None = None  # key wrapping a non-object JSON schema inside the tool input
    thinking: bool = False  # thinking was enabled upstream for this request
    thinking_owner: str = ""  # whose thinking cache entries this request may read and write


def _bad(message: str, param: str | None) -> DarioError:
    return DarioError(400, "invalid_request_error", message, param=param)


def sanitize_tool_id(raw: object, fallback: str) -> str:
    """Anthropic tool ids must match ^[A-Za-z0-9_-]+$; OpenAI clients send anything (call_…, fc.1:2)."""
    if isinstance(raw, str) and raw:
        return _ID_BAD.sub("_", raw)
    return fallback


def _parse_args(raw: object) -> dict[str, Any]:
    # OpenAI carries arguments as a JSON string; invalid or non-object → {} (CLIProxyAPI), since
    # rejecting a whole history over one truncated call helps nobody.
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str | bytes) and raw:
        try:
            val = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        if isinstance(val, dict):
            return val
    return {}


def _int_param(body: dict[str, Any], key: str, *, minimum: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f"`{key}` must be an integer.", key)
    if v < minimum:
        raise _bad(f"`{key}` must be at least {minimum}, got {v}.", key)
    return min(v, MAX_TOKENS_CAP)


def _float_param(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise _bad(f"`{key}` must be a number.", key)
    # Anthropic's range is 0–1 where OpenAI's temperature is 0–2; clamp like Anthropic's own compat layer.
    return min(max(float(v), 0.0), 1.0)


# --- content parts ---------------------------------------------------------------------------------


def _from_data_url(url: str, param: str, title: str | None = None) -> dict[str, Any]:
    comma = url.find(",")
    if comma < 0:
        raise _bad(f"`{param}` is not a valid data: URL.", param)
    meta = url[5:comma].split(";")
    media = meta[0].strip().lower()
    if not any(m.strip().lower() == "base64" for m in meta[1:]):
        raise _bad(f"`{param}`: only base64 data: URLs are supported.", param)
    data = url[comma + 1 :]
    if not data:
        raise _bad(f"`{param}`: the data: URL is empty.", param)
    if media == "image/jpg":
        media = "image/jpeg"
    if media in _IMAGE_TYPES:
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    block: dict[str, Any]
    if media == "application/pdf":
        block = {"type": "document", "source": {"type": "base64", "media_type": media, "data": data}}
    elif media == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _bad(f"`{param}`: text/plain data is not valid base64-encoded UTF-8.", param) from None
        block = {"type": "document", "source": {"type": "text", "media_type": media, "data": text}}
    else:
        raise _bad(
            f"`{param}`: unsupported media type {media!r}; supported are image/jpeg, image/png, "
            "image/gif, image/webp, application/pdf and text/plain.",
            param,
        )
    if title:
        block["title"] = title
    return block


def _image_block(url: object, param: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise _bad(f"`{param}` must be a non-empty URL string.", param)
    if url[:5].lower() == "data:":
        return _from_data_url(url, param)
    low = url[:8].lower()
    if low.startswith("https://") or low.startswith("http://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(f"`{param}` must be an http(s) URL or a base64 data: URL.", param)


# Which part types each role may carry.
_SYSTEM, _USER, _ASSISTANT, _TOOL = "system", "user", "assistant", "tool"


def _parts(content: object, param: str, kind: str) -> list[dict[str, Any]]:
    """OpenAI message content (string or parts) → Anthropic blocks. Empty/whitespace text is skipped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise _bad(f"`{param}` must be a string or an array of content parts.", param)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if isinstance(part, str):  # some clients send bare strings
            if part.strip():
                out.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict):
            raise _bad(f"`{p}` must be an object.", p)
        t = part.get("type")
        block: dict[str, Any] | None
        if t == "text" or (t == "refusal" and kind == _ASSISTANT):
            key = "text" if t == "text" else "refusal"
            text = part.get(key)
            if not isinstance(text, str):
                raise _bad(f"`{p}.{key}` must be a string.", f"{p}.{key}")
            block = {"type": "text", "text": text} if text.strip() else None
        elif kind in (_USER, _TOOL) and t == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            block = _image_block(url, f"{p}.image_url")
        elif kind in (_USER, _TOOL) and t == "file":
            f = part.get("file")
            if not isinstance(f, dict):
                raise _bad(f"`{p}.file` must be an object.", f"{p}.file")
            fd = f.get("file_data")
            if isinstance(fd, str) and fd[:5].lower() == "data:":
                fname = f.get("filename")
                block = _from_data_url(fd, f"{p}.file.file_data", fname if isinstance(fname, str) else None)
            elif isinstance(fd, str) and fd:
                # Bare base64 without a data: prefix: the OpenAI file part is PDF-only.
                block = {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": fd},
                }
            else:
                raise _bad(
                    f"`{p}.file`: only inline `file_data` is supported (no uploaded file_id).", f"{p}.file"
                )
        elif kind in (_USER, _TOOL) and t in ("input_audio", "audio"):
            continue  # Claude takes no audio input; dropped rather than failing the whole request.
        else:
            allowed = {
                _SYSTEM: "text",
                _ASSISTANT: "text, refusal",
                _USER: "text, image_url, file, input_audio",
                _TOOL: "text, image_url, file",
            }[kind]
            raise _bad(f"`{p}.type` {t!r} is not supported here; expected one of: {allowed}.", f"{p}.type")
        if block is None:
            continue
        cc = part.get("cache_control")
        if isinstance(cc, dict):
            block["cache_control"] = cc
        out.append(block)
    return out


# --- messages --------------------------------------------------------------------------------------


def _thinking_blocks(raw: object) -> list[dict[str, Any]]:
    # LiteLLM-style round trip: assistant messages may carry the signed blocks back.
    if not isinstance(raw, list):
        return []
    out = []
    for b in raw:
        if not isinstance(b, dict):
            continue
        t = b.get("type")
        if t == "thinking" and isinstance(b.get("thinking"), str) and isinstance(b.get("signature"), str):
            out.append({"type": "thinking", "thinking": b["thinking"], "signature": b["signature"]})
        elif t == "redacted_thinking" and isinstance(b.get("data"), str):
            out.append({"type": "redacted_thinking", "data": b["data"]})
    return out


def _tool_use(name: object, args: object, tid: str, param: str) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise _bad(f"`{param}.name` must be a non-empty string.", f"{param}.name")
    return {"type": "tool_use", "id": tid, "name": name, "input": _parse_args(args)}


def _unique_id(tid: str, seen: set[str]) -> str:
    # Duplicate tool_use ids are a 400 upstream; a renamed duplicate just gets a synthetic result.
    if tid in seen:
        n = 2
        while f"{tid}_{n}" in seen:
            n += 1
        tid = f"{tid}_{n}"
    seen.add(tid)
    return tid


def _assistant_blocks(
    m: dict[str, Any], i: int, p: str, legacy: dict[str, str], seen_ids: set[str]
) -> list[dict[str, Any]]:
    blocks = _thinking_blocks(m.get("thinking_blocks"))
    blocks.extend(_parts(m.get("content"), f"{p}.content", _ASSISTANT))
    tool_calls = m.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise _bad(f"`{p}.tool_calls` must be an array.", f"{p}.tool_calls")
        for j, tc in enumerate(tool_calls):
            tp = f"{p}.tool_calls[{j}]"
            if not isinstance(tc, dict):
                raise _bad(f"`{tp}` must be an object.", tp)
            if tc.get("type", "function") != "function":
                raise _bad(f"`{tp}.type` must be 'function'.", f"{tp}.type")
            fn = tc.get("function")
            if not isinstance(fn, dict):
                raise _bad(f"`{tp}.function` must be an object.", f"{tp}.function")
            tid = _unique_id(sanitize_tool_id(tc.get("id"), f"toolu_dario_{i}_{j}"), seen_ids)
            blocks.append(_tool_use(fn.get("name"), fn.get("arguments"), tid, f"{tp}.function"))
    fc = m.get("function_call")
    if fc is not None:  # legacy single function call; answered by a later role "function" message
        if not isinstance(fc, dict):
            raise _bad(f"`{p}.function_call` must be an object.", f"{p}.function_call")
        tid = _unique_id(f"toolu_dario_{i}_fc", seen_ids)
        blocks.append(_tool_use(fc.get("name"), fc.get("arguments"), tid, f"{p}.function_call"))
        legacy[fc["name"]] = tid
    # A turn holding only thinking blocks (or nothing) says nothing and would be rejected.
    if all(b["type"] in ("thinking", "redacted_thinking") for b in blocks):
        return []
    return blocks


def _tool_result(m: dict[str, Any], p: str, role: str, legacy: dict[str, str]) -> dict[str, Any]:
    if role == "tool":
        raw = m.get("tool_call_id")
        if not isinstance(raw, str) or not raw:
            raise _bad(f"`{p}.tool_call_id` must be a non-empty string.", f"{p}.tool_call_id")
        tid = sanitize_tool_id(raw, "")
    else:  # legacy role "function": answers the latest function_call of that name
        name = m.get("name")
        tid = legacy.get(name, "") if isinstance(name, str) else ""
        if not tid:
            tid = "function_" + sanitize_tool_id(name, "unknown")  # matches nothing → kept as text
    content = m.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid}
    if isinstance(content, str):
        if content.strip():
            result["content"] = content
    else:
        blocks = _parts(content, f"{p}.content", _TOOL)
        if blocks:
            result["content"] = blocks
    return result


def _orphan_to_text(block: dict[str, Any]) -> list[dict[str, Any]]:
    # A result answering no tool_use of the previous turn would be a 400; keep its information as text.
    head = f"Tool result ({block.get('tool_use_id')}):"
    content = block.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": f"{head}\n{content}"}]
    if isinstance(content, list) and content:
        return [{"type": "text", "text": head}, *content]
    return [{"type": "text", "text": f"{head} (empty)"}]


def _repair_user_turn(blocks: list[dict[str, Any]], expected: list[str]) -> list[dict[str, Any]]:
    """tool_results first, in tool_use order, one per expected id; orphans → text; others keep order."""
    results: dict[str, dict[str, Any]] = {}
    rest: list[dict[str, Any]] = []
    want = set(expected)
    for b in blocks:
        if b.get("type") == "tool_result":
            tid = b["tool_use_id"]
            if tid in want:
                results[tid] = b  # a repeated tool_call_id: the last answer wins (CLIProxyAPI)
            else:
                rest.extend(_orphan_to_text(b))
        else:
            rest.append(b)
    ordered = [
        results.get(tid)
        or {"type": "tool_result", "tool_use_id": tid, "content": MISSING_RESULT_TEXT, "is_error": True}
        for tid in expected
    ]
    return ordered + rest


def _tool_use_ids(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["id"] for b in blocks if b.get("type") == "tool_use"]


def _convert_messages(
    messages: list[Any],
) -> tuple[list[dict[str, Any]], list[list[Any]], bool]:
    """→ (system blocks, [[role, blocks], …] alternating, starting with user; client sent thinking?)"""
    system: list[dict[str, Any]] = []
    turns: list[list[Any]] = []
    legacy: dict[str, str] = {}
    seen_ids: set[str] = set()
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"`{p}` must be an object.", p)
        role = m.get("role")
        if role in ("system", "developer"):
            blocks = _parts(m.get("content"), f"{p}.content", _SYSTEM)
            out_role = "system"
        elif role == "user":
            blocks = _parts(m.get("content"), f"{p}.content", _USER)
            out_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(m, i, p, legacy, seen_ids)
            out_role = "assistant"
        elif role in ("tool", "function"):
            blocks = [_tool_result(m, p, role, legacy)]
            out_role = "user"
        else:
            raise _bad(
                f"`{p}.role` must be one of system, developer, user, assistant, tool; got {role!r}.",
                f"{p}.role",
            )
        if not blocks:
            continue
        cc = m.get("cache_control")  # non-standard message-level marker: goes on its last block
        if isinstance(cc, dict):
            blocks[-1] = {**blocks[-1], "cache_control": cc}
        if out_role == "system":
            system.extend(blocks)
        elif turns and turns[-1][0] == out_role:
            turns[-1][1].extend(blocks)
        else:
            turns.append([out_role, blocks])

    if not turns or turns[0][0] != "user":
        turns.insert(0, ["user", [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]])

    client_thinking = False
    n = len(turns)
    for k in range(n):
        role, blocks = turns[k]
        if role == "assistant":
            if not client_thinking:
                client_thinking = any(b["type"] in ("thinking", "redacted_thinking") for b in blocks)
            if k == n - 1 and _tool_use_ids(blocks):
                # Trailing unanswered tool calls: answer them so the history stays valid.
                turns.append(["user", _repair_user_turn([], _tool_use_ids(blocks))])
        elif any(b.get("type") == "tool_result" for b in blocks) or (
            k > 0 and _tool_use_ids(turns[k - 1][1])
        ):
            expected = _tool_use_ids(turns[k - 1][1]) if k > 0 else []
            turns[k][1] = _repair_user_turn(blocks, expected)

    # A final assistant turn is a prefill; Anthropic rejects trailing whitespace there.
    last = turns[-1]
    if last[0] == "assistant":
        blocks = last[1]
        if blocks and blocks[-1]["type"] == "text":
            text = blocks[-1]["text"].rstrip()
            if text:
                blocks[-1] = {**blocks[-1], "text": text}
            else:
                blocks.pop()
        if not any(b["type"] not in ("thinking", "redacted_thinking") for b in blocks):
            turns.pop()
    return system, turns, client_thinking


# --- tools -----------------------------------------------------------------------------------------


def _convert_tools(raw: object, param: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(f"`{param}` must be an array.", param)
    out = []
    for j, t in enumerate(raw):
        p = f"{param}[{j}]"
        if not isinstance(t, dict):
            raise _bad(f"`{p}` must be an object.", p)
        if param == "tools":
            if t.get("type", "function") != "function":
                raise _bad(f"`{p}.type` {t.get('type')!r} is not supported; only 'function' tools are.", p)
            fn = t.get("function")
            fp = f"{p}.function"
        else:  # legacy `functions`: the function object itself
            fn, fp = t, p
        if not isinstance(fn, dict):
            raise _bad(f"`{fp}` must be an object.", fp)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"`{fp}.name` must be a non-empty string.", f"{fp}.name")
        params = fn.get("parameters")
        if params is None:
            schema: dict[str, Any] = _OPEN_OBJECT
        elif isinstance(params, dict):
            # Anthropic requires type "object" at the root; OpenAI clients sometimes omit it.
            schema = params if params.get("type") == "object" else {**params, "type": "object"}
        else:
            raise _bad(f"`{fp}.parameters` must be a JSON Schema object.", f"{fp}.parameters")
        tool: dict[str, Any] = {"name": name, "input_schema": schema}
        desc = fn.get("description")
        if isinstance(desc, str) and desc:
            tool["description"] = desc
        cc = t.get("cache_control")
        if isinstance(cc, dict):
            tool["cache_control"] = cc
        out.append(tool)
    return out


def _convert_tool_choice(
    raw: object, tools: list[dict[str, Any]], param: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """→ (Anthropic tool_choice or None, possibly filtered tools)."""
    if raw is None:
        return None, tools
    names = {t["name"] for t in tools}
    if raw == "auto":
        return {"type": "auto"}, tools
    if raw == "required" or raw == "any":
        return {"type": "any"}, tools
    if raw == "none":
        return {"type": "none"}, tools
    if isinstance(raw, dict):
        t = raw.get("type")
        fn = raw.get("function") if t == "function" else raw if param == "function_call" else None
        if isinstance(fn, dict):
            name = fn.get("name")
            if not isinstance(name, str) or name not in names:
                raise _bad(f"`{param}` names function {name!r}, which is not in the tools list.", param)
            return {"type": "tool", "name": name}, tools
        if t == "allowed_tools" and isinstance(raw.get("allowed_tools"), dict):
            at = raw["allowed_tools"]
            mode, listed = at.get("mode", "auto"), at.get("tools")
            if mode in ("auto", "required") and isinstance(listed, list):
                keep = set()
                for entry in listed:
                    f = entry.get("function") if isinstance(entry, dict) else None
                    if isinstance(f, dict) and isinstance(f.get("name"), str):
                        keep.add(f["name"])
                filtered = [tool for tool in tools if tool["name"] in keep]
                return ({"type": "any"} if mode == "required" else {"type": "auto"}), filtered
    raise _bad(
        f"`{param}` must be 'auto', 'required', 'none' or "
        '{"type": "function", "function": {"name": …}}.',
        param,
    )


def _json_mode(rf: object) -> tuple[dict[str, Any], str | None, str] | None:
    """response_format → (input_schema, unwrap key, description), or None for plain text."""
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise _bad("`response_format` must be an object.", "response_format")
    t = rf.get("type")
    if t == "text":
        return None
    if t == "json_object":
        return {"type": "object", "additionalProperties": True}, None, "Respond with a JSON object."
    if t == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise _bad("`response_format.json_schema` must be an object.", "response_format.json_schema")
        schema = js.get("schema")
        desc = js.get("description")
        desc = desc if isinstance(desc, str) and desc else "Respond with JSON matching this schema."
        if schema is None:
            return {"type": "object", "additionalProperties": True}, None, desc
        if not isinstance(schema, dict):
            raise _bad(
                "`response_format.json_schema.schema` must be an object.", "response_format.json_schema"
            )
        if schema.get("type") == "object":
            return schema, None, desc
        if "type" not in schema and "properties" in schema:
            return {**schema, "type": "object"}, None, desc
        # Tool input must be an object: wrap other roots (array, string, anyOf…) and unwrap the answer.
        return {"type": "object", "properties": {"value": schema}, "required": ["value"]}, "value", desc
    raise _bad(
        "`response_format.type` must be 'text', 'json_object' or 'json_schema'.", "response_format.type"
    )


# --- thinking --------------------------------------------------------------------------------------


def _thinking_budget(body: dict[str, Any]) -> int | None:
    th = body.get("thinking")  # non-standard Anthropic-style passthrough some OpenAI clients send
    if th is not None:
        if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled"):
            raise _bad('`thinking` must be {"type": "enabled", "budget_tokens": N} or disabled.', "thinking")
        if th["type"] == "disabled":
            return None
        b = th.get("budget_tokens")
        if not isinstance(b, int) or isinstance(b, bool):
            raise _bad("`thinking.budget_tokens` must be an integer.", "thinking.budget_tokens")
        return min(max(b, MIN_THINKING_BUDGET), MAX_TOKENS_CAP // 2)
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise _bad(
            "`reasoning_effort` must be one of none, minimal, low, medium, high, xhigh.", "reasoning_effort"
        )
    return THINKING_BUDGETS[effort]


def _fit_budget(budget: int, client_max: int | None) -> int | None:
    """The client's max tokens is a hard cap that includes reasoning (OpenAI's max_completion_tokens
    counts reasoning tokens; Anthropic's max_tokens counts thinking and needs budget_tokens < max_tokens).
    A budget that does not fit shrinks to half the cap, leaving the other half for the answer; below
    Anthropic's 1,024-token minimum, thinking is turned off (→ None)."""
    if client_max is None or budget < client_max:
        return budget
    fitted = client_max // 2
    return fitted if fitted >= MIN_THINKING_BUDGET else None


def _refuse_logprobs(body: dict[str, Any]) -> None:
    # Claude returns no token log probabilities; an answer with `logprobs: null` would crash a client
    # that asked for them and reads `choices[0].logprobs.content`, so say so up front.
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and logprobs is not False:
        raise _bad("`logprobs` is not supported: Claude does not return token log probabilities.", "logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int | float) or top != 0):
        raise _bad(
            "`top_logprobs` is not supported: Claude does not return token log probabilities.", "top_logprobs"
        )


def _apply_thinking(turns: list[list[Any]], cache: ThinkingCache | None, owner: str) -> bool:
    """Re-insert cached thinking; → False if the latest assistant tool turn still has none."""
    last_assistant = None
    for turn in turns:
        if turn[0] != "assistant":
            continue
        last_assistant = turn
        blocks = turn[1]
        if blocks[0]["type"] in ("thinking", "redacted_thinking") or cache is None:
            continue
        for tid in _tool_use_ids(blocks):
            cached = cache.recall(tid, owner)
            if cached:
                turn[1] = cached + blocks
                break
    if last_assistant is None or not _tool_use_ids(last_assistant[1]):
        return True
    return last_assistant[1][0]["type"] in ("thinking", "redacted_thinking")


def _strip_thinking(turns: list[list[Any]]) -> None:
    for turn in turns:
        if turn[0] == "assistant":
            turn[1] = [b for b in turn[1] if b["type"] not in ("thinking", "redacted_thinking")]


# --- request-level parameters ----------------------------------------------------------------------


def _model(body: dict[str, Any], models: ModelTable, force_model: str | None) -> tuple[str, str]:
    """→ (the name the client asked for, the Claude id the request goes to)."""
    requested = body.get("model")
    if not isinstance(requested, str) or not requested.strip():
        raise _bad("`model` is required and must be a non-empty string.", "model")
    if not model_id_ok(requested):
        # Model ids are echoed in headers and shown by `dario-ctl usage`; escape sequences have no place.
        raise _bad("`model` must not contain control characters.", "model")
    model = resolve_model(requested, models, force_model)
    if model is None:
        raise DarioError(
            404,
            "not_found_error",
            f"The model `{model_to_ask(requested, force_model)}` does not exist or you do not have access to "
            "it. Use a Claude model id (claude-…) or a configured alias.",
            openai_code="model_not_found",
            param="model",
        )
    return requested, model


def _refuse_n(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise _bad("`n` must be exactly 1: Claude returns a single choice per request.", "n")


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty array.", "messages")
    return messages


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """→ (stream, include a usage chunk)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean.", "stream")
    stream = bool(stream)
    so = body.get("stream_options")
    if so is None:
        return stream, False
    if not isinstance(so, dict):
        raise _bad("`stream_options` must be an object.", "stream_options")
    return stream, stream and so.get("include_usage") is True


@dataclass(slots=True)
class _Sampling:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop_sequences: list[str]


def _sampling(body: dict[str, Any]) -> _Sampling:
    # max_completion_tokens is what newer clients send; max_tokens is the legacy name, deprecated in the
    # API reference (https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_tokens).
    max_tokens = _int_param(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _int_param(body, "max_tokens", minimum=1)
    temperature = _float_param(body, "temperature")
    top_p = _float_param(body, "top_p")
    return _Sampling(max_tokens, temperature, top_p, _stop_sequences(body.get("stop")))


def _stop_sequences(stop: object) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        return []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("`stop` must be a string or an array of strings.", "stop")
    return [s for s in stop if s.strip()]  # Anthropic rejects whitespace-only stop sequences


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """→ (Anthropic tools, tool_choice), from `tools` or the legacy `functions` / `function_call`."""
    if body.get("tools") is not None:
        tools = _convert_tools(body.get("tools"), "tools")
        tool_choice, tools = _convert_tool_choice(body.get("tool_choice"), tools, "tool_choice")
    else:
        tools = _convert_tools(body.get("functions"), "functions")
        tool_choice, tools = _convert_tool_choice(body.get("function_call"), tools, "function_call")
    return tools, tool_choice if tools else None


def _parallel_tool_calls(body: dict[str, Any]) -> bool | None:
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise _bad("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")
    return ptc


def _forces_tool(tool_choice: dict[str, Any] | None) -> bool:
    return tool_choice is not None and tool_choice["type"] in ("any", "tool")


def _thinking_on(budget: int | None, tool_choice: dict[str, Any] | None, turns: list[list[Any]],
                 cache: ThinkingCache | None, owner: str) -> bool:
    """Whether thinking goes upstream; cached thinking is re-inserted into `turns` when it does."""
    if budget is None or _forces_tool(tool_choice):
        return False  # forced tool use is rejected with thinking
    if turns[-1][0] == "assistant":
        return False  # so is an assistant prefill
    return _apply_thinking(turns, cache, owner)


def _json_tool_name(tools: list[dict[str, Any]]) -> str:
    names = {t["name"] for t in tools}
    name, k = JSON_TOOL_NAME, 1
    while name in names:
        k += 1
        name = f"{JSON_TOOL_NAME}_{k}"
    return name


def _add_json_tool(
    json_spec: tuple[dict[str, Any], str | None, str], tools: list[dict[str, Any]],
    tool_choice: dict[str, Any] | None, system: list[dict[str, Any]], *, thinking: bool, user_tools: bool,
    ctx: ChatContext,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """JSON mode as a tool the model must call → (tools, tool_choice, system)."""
    schema, unwrap, desc = json_spec
    name = _json_tool_name(tools)
    tools = [*tools, {"name": name, "description": desc, "input_schema": schema}]
    ctx.json_tool, ctx.json_unwrap = name, unwrap
    choice_none = tool_choice is not None and tool_choice["type"] == "none"
    if not thinking and (not user_tools or choice_none):
        return tools, {"type": "tool", "name": name}, system
    # Forcing is impossible (thinking) or would block the client's own tools: instruct instead.
    system = [
        *system,
        {
            "type": "text",
            "text": f"When you give your final answer, call the `{name}` tool with the answer as its "
            "input instead of replying in plain text.",
        },
    ]
    return tools, {"type": "auto"} if choice_none else tool_choice, system


def _no_parallel_tool_use(
    ptc: bool | None, tools: list[dict[str, Any]], tool_choice: dict[str, Any] | None
) -> dict[str, Any] | None:
    if ptc is not False or not tools:
        return tool_choice
    if tool_choice is None:
        tool_choice = {"type": "auto"}
    if tool_choice["type"] == "none":
        return tool_choice
    return {**tool_choice, "disable_parallel_tool_use": True}


def _opaque_user(user: object) -> str | None:
    # metadata.user_id must be opaque: Anthropic rejects emails and phone numbers there.
    if isinstance(user, str) and user.strip() and not _EMAIL.search(user) and not _PHONE.match(user.strip()):
        return user
    return None


def _messages_body(
    model: str, turns: list[list[Any]], system: list[dict[str, Any]], sampling: _Sampling, *,
    budget: int | None, thinking: bool, tools: list[dict[str, Any]], tool_choice: dict[str, Any] | None,
    user: object, stream: bool, default_max_tokens: int,
) -> dict[str, Any]:
    """The Anthropic Messages body: thinking, or else the client's sampling parameters."""
    max_tokens = sampling.max_tokens if sampling.max_tokens is not None else default_max_tokens
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": r, "content": b} for r, b in turns],
    }
    if system:
        out["system"] = system
    if thinking and budget is not None:
        if max_tokens <= budget:
            out["max_tokens"] = budget + default_max_tokens
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        # Thinking forbids changing temperature/top_p, so they only go out without it.
        if sampling.temperature is not None:
            out["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            out["top_p"] = sampling.top_p
    if sampling.stop_sequences:
        out["stop_sequences"] = sampling.stop_sequences
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    user_id = _opaque_user(user)
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}
    if stream:
        out["stream"] = True
    return out


# --- entry point -----------------------------------------------------------------------------------


def chat_to_messages(
    body: object,
    models: ModelTable,
    *,
    thinking_cache: ThinkingCache | None = None,
    thinking_owner: str = "",
    default_max_tokens: int = 4096,
    force_model: str | None = None,
) -> tuple[dict[str, Any], ChatContext]:
    """Parsed /v1/chat/completions JSON → (Anthropic /v1/messages body, ChatContext).

    Parameters are checked in a fixed order, so a request with several faults is told about the
    same one every time."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None)
    requested, model = _model(body, models, force_model)
    _refuse_n(body)
    messages = _messages(body)
    stream, include_usage = _stream(body)
    sampling = _sampling(body)
    tools, tool_choice = _tools(body)
    user_tools = bool(tools)
    ptc = _parallel_tool_calls(body)
    json_spec = _json_mode(body.get("response_format"))
    _refuse_logprobs(body)
    wanted = _thinking_budget(body)
    budget = None if wanted is None else _fit_budget(wanted, sampling.max_tokens)

    system, turns, client_thinking = _convert_messages(messages)
    thinking = _thinking_on(budget, tool_choice, turns, thinking_cache, thinking_owner)
    if not thinking and (client_thinking or wanted is not None):
        _strip_thinking(turns)

    ctx = ChatContext(
        requested_model=requested, model=model, stream=stream, include_usage=include_usage, thinking=thinking,
        thinking_owner=thinking_owner,
    )
    if json_spec is not None:
        tools, tool_choice, system = _add_json_tool(json_spec, tools, tool_choice, system, thinking=thinking,
                                                    user_tools=user_tools, ctx=ctx)
    tool_choice = _no_parallel_tool_use(ptc, tools, tool_choice)
    out = _messages_body(model, turns, system, sampling, budget=budget, thinking=thinking, tools=tools,
                         tool_choice=tool_choice, user=body.get("user"), stream=stream,
                         default_max_tokens=default_max_tokens)
    return out, ctx
