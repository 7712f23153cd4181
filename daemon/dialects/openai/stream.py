"""Anthropic SSE events (https://docs.anthropic.com/en/api/messages-streaming) → OpenAI
chat.completion.chunk SSE frames (https://platform.openai.com/docs/api-reference/chat-streaming).

Invariants the OpenAI SDK's stream helper relies on:
- every chunk has object "chat.completion.chunk" (openai-python's ChatCompletionStream skips any other,
  `_is_valid_chat_completion_chunk_weak`) and the same id/created/model;
- role "assistant" appears once, in the first chunk (openai-python's `accumulate_delta` concatenates
  every string field it sees again);
- a tool call's id/type/name appear only in its first delta, for the same reason, and its `index` is the
  0-based ordinal among tool calls in this response, not Anthropic's block index (the stream helper
  indexes its tool-call list with it);
- finish_reason is null on every chunk but the final choice chunk, and is "tool_calls" whenever a client
  tool was called (the API reference's `finish_reason`; agent loops branch on it);
- usage appears once, complete, in a `choices: []` chunk, and only when include_usage was asked (the API
  reference's `stream_options.include_usage`);
- the stream ends with [DONE], or with an error frame and nothing after it (openai-python's Stream stops
  at [DONE] and raises APIError on a data payload with an `error` key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from dario.daemon.dialects.openai.response import finish_reason, json_tool_content, openai_usage
from dario.daemon.errors import ANTHROPIC_STATUS, openai_error_status_and_body

if TYPE_CHECKING:
    from dario.daemon.dialects.openai.request import ChatContext
    from dario.daemon.dialects.openai.thinking import ThinkingCache

DONE = b"data: [DONE]\n\n"
_END_NULL = b',"logprobs":null,"finish_reason":null}]'


class _Block:
    """State of one Anthropic content block while it streams."""

    __slots__ = ("args", "initial", "kind", "parts", "raw", "signature", "tool_index")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # text | tool | json | thinking | redacted | other
        self.tool_index = -1
        self.args = False  # any non-empty input fragment seen
        self.initial: Any = None  # input given in content_block_start (normally {})
        self.parts: list[str] = []  # thinking text, or buffered JSON-mode input
        self.signature = ""
        self.raw: dict[str, Any] | None = None  # redacted_thinking block, complete at start


class ChatStreamTranslator:
    def __init__(
        self, ctx: ChatContext, *, created: int, thinking_cache: ThinkingCache | None = None
    ) -> None:
        self.ctx = ctx
        self.created = created
        self.usage: dict[str, Any] | None = None  # Anthropic-style, cumulative; for the daemon's accounting
        self._cache = thinking_cache
        self._id = f"chatcmpl-{created}"
        self._prefix: bytes | None = None
        self._role_sent = False
        self._blocks: dict[int, _Block] = {}
        self._order: list[_Block] = []  # thinking blocks in stream order, for the cache
        self._tool_ids: list[str] = []
        self._stop_reason: object = None
        self._finish_sent = False
        self._closed = False
        self._usage_null = b',"usage":null' if ctx.include_usage else b""

    # --- frame building ----------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        if self._prefix is None:
            # Built once, so id/created/model are byte-identical in every chunk.
            self._prefix = (
                b'data: {"id":'
                + orjson.dumps(self._id)
                + b',"object":"chat.completion.chunk","created":'
                + str(self.created).encode()
                + b',"model":'
                + orjson.dumps(self.ctx.requested_model)
                + b',"choices":[{"index":0,"delta":'
            )
        end = (
            _END_NULL if finish is None else b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]'
        )
        return self._prefix + orjson.dumps(delta) + end + self._usage_null + b"}\n\n"

    def _finish_chunk(self) -> list[bytes]:
        if self._finish_sent:
            return []
        self._finish_sent = True
        if self._cache is not None and self._tool_ids:
            blocks: list[dict[str, Any]] = []
            for b in self._order:
                if b.kind == "thinking":
                    blocks.append(
                        {"type": "thinking", "thinking": "".join(b.parts), "signature": b.signature}
                    )
                elif b.raw is not None:
                    blocks.append(b.raw)
            if blocks:
                self._cache.remember(self._tool_ids, blocks, self.ctx.thinking_owner)
        return [self._chunk({}, finish_reason(self._stop_reason, bool(self._tool_ids)))]

    def _block(self, ev: dict[str, Any]) -> _Block | None:
        idx = ev.get("index")
        return self._blocks.get(idx) if isinstance(idx, int) else None

    def _tool_args(self, b: _Block, fragment: str) -> bytes:
        return self._chunk({"tool_calls": [{"index": b.tool_index, "function": {"arguments": fragment}}]})

    # --- public API --------------------------------------------------------------------------------

    def feed(self, event: str, data: bytes) -> list[bytes]:
        """One Anthropic SSE event (name, raw JSON of its data) → zero or more complete SSE frames."""
        if self._closed:
            return []
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError:
            ev = None
        if not isinstance(ev, dict):
            if event in ("ping", "") or event not in _KNOWN:
                return []
            return [self.error_frame("api_error", "Malformed event from upstream.")]
        name = event or ev.get("type")
        handler = _HANDLERS.get(name) if isinstance(name, str) else None
        return handler(self, ev) if handler is not None else []  # unknown events are ignored

    def finish(self) -> list[bytes]:
        """Upstream ended normally: final choice chunk if not sent, usage chunk (if asked), [DONE]."""
        if self._closed:
            return []
        self._closed = True
        frames = self._finish_chunk()
        if self.ctx.include_usage:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.ctx.requested_model,
                "choices": [],
                "usage": openai_usage(self.usage),
            }
            frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        frames.append(DONE)
        return frames

    def error_frame(self, type: str, message: str) -> bytes:
        """Mid-stream error in OpenAI's shape; the stream is over after it (no [DONE])."""
        self._closed = True
        if type in ANTHROPIC_STATUS:
            body = openai_error_status_and_body(500, type, message)[1]
        else:  # already an OpenAI-side type
            body = orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": None}})
        return b"data: " + body + b"\n\n"

    # --- event handlers ----------------------------------------------------------------------------

    def _on_message_start(self, ev: dict[str, Any]) -> list[bytes]:
        msg = ev.get("message")
        if isinstance(msg, dict):
            mid = msg.get("id")
            if isinstance(mid, str) and mid and self._prefix is None:
                self._id = mid
            u = msg.get("usage")
            if isinstance(u, dict):
                self.usage = {k: v for k, v in u.items() if v is not None}
        if self._role_sent:
            return []
        return [self._chunk({"content": ""})]

    def _on_block_start(self, ev: dict[str, Any]) -> list[bytes]:
        idx, cb = ev.get("index"), ev.get("content_block")
        if not isinstance(idx, int) or not isinstance(cb, dict):
            return []
        t = cb.get("type")
        if t == "text":
            self._blocks[idx] = _Block("text")
            text = cb.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if t == "tool_use":
            name = cb.get("name")
            json_mode = self.ctx.json_tool is not None and name == self.ctx.json_tool
            b = _Block("json" if json_mode else "tool")
            b.initial = cb.get("input")
            self._blocks[idx] = b
            if json_mode:
                return []
            b.tool_index = len(self._tool_ids)
            tid = cb.get("id")
            tid = tid if isinstance(tid, str) else f"toolu_dario_{b.tool_index}"
            self._tool_ids.append(tid)
            call = {"index": b.tool_index, "id": tid, "type": "function"}
            call["function"] = {"name": name if isinstance(name, str) else "", "arguments": ""}
            return [self._chunk({"tool_calls": [call]})]
        if t == "thinking":
            b = _Block("thinking")
            self._blocks[idx] = b
            self._order.append(b)
            th, sig = cb.get("thinking"), cb.get("signature")
            if isinstance(sig, str):
                b.signature = sig
            if isinstance(th, str) and th:
                b.parts.append(th)
                return [self._chunk({"reasoning_content": th})]
            return []
        if t == "redacted_thinking":
            b = _Block("redacted")
            b.raw = cb
            self._blocks[idx] = b
            self._order.append(b)
            return []
        self._blocks[idx] = _Block("other")  # server-tool blocks have no OpenAI equivalent
        return []

    def _on_block_delta(self, ev: dict[str, Any]) -> list[bytes]:
        delta = ev.get("delta")
        if not isinstance(delta, dict):
            return []
        b = self._block(ev)
        dt = delta.get("type")
        if dt == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if dt == "input_json_delta":
            frag = delta.get("partial_json")
            if b is None or not isinstance(frag, str) or not frag:
                return []  # "" fragments are skipped: nothing to accumulate
            b.args = True
            if b.kind == "tool":
                return [self._tool_args(b, frag)]
            if b.kind == "json":
                if self.ctx.json_unwrap is not None:
                    b.parts.append(frag)  # must see the whole object to unwrap it
                    return []
                return [self._chunk({"content": frag})]
            return []
        if dt == "thinking_delta":
            th = delta.get("thinking")
            if not isinstance(th, str) or not th:
                return []
            if b is not None and b.kind == "thinking":
                b.parts.append(th)
            return [self._chunk({"reasoning_content": th})]
        if dt == "signature_delta":
            sig = delta.get("signature")
            if b is not None and isinstance(sig, str):
                b.signature += sig
        return []

    def _on_block_stop(self, ev: dict[str, Any]) -> list[bytes]:
        b = self._block(ev)
        if b is None:
            return []
        if b.kind == "tool" and not b.args:
            # No fragments: send the start-event input, normally empty → "{}" (LiteLLM), never nothing.
            init = b.initial if isinstance(b.initial, dict) else {}
            return [self._tool_args(b, orjson.dumps(init).decode())]
        if b.kind == "json":
            if self.ctx.json_unwrap is not None:
                try:
                    value = orjson.loads("".join(b.parts)) if b.parts else b.initial
                except orjson.JSONDecodeError:
                    return [self._chunk({"content": "".join(b.parts)})]
                return [self._chunk({"content": json_tool_content(value, self.ctx.json_unwrap)})]
            if not b.args:
                init = b.initial if isinstance(b.initial, dict) else {}
                return [self._chunk({"content": orjson.dumps(init).decode()})]
        return []

    def _on_message_delta(self, ev: dict[str, Any]) -> list[bytes]:
        delta = ev.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason") is not None:
            self._stop_reason = delta["stop_reason"]
        u = ev.get("usage")
        if isinstance(u, dict):
            # Cumulative values: the latest wins, never summed.
            if self.usage is None:
                self.usage = {}
            self.usage.update({k: v for k, v in u.items() if v is not None})
        return []  # the finish chunk waits for message_stop: there may be several message_delta events

    def _on_message_stop(self, ev: dict[str, Any]) -> list[bytes]:
        return self._finish_chunk()

    def _on_error(self, ev: dict[str, Any]) -> list[bytes]:
        err = ev.get("error")
        t = err.get("type") if isinstance(err, dict) else None
        m = err.get("message") if isinstance(err, dict) else None
        return [
            self.error_frame(
                t if isinstance(t, str) else "api_error",
                m if isinstance(m, str) else "Upstream stream error.",
            )
        ]

    def _on_ping(self, ev: dict[str, Any]) -> list[bytes]:
        return []


_HANDLERS = {
    "message_start": ChatStreamTranslator._on_message_start,
    "content_block_start": ChatStreamTranslator._on_block_start,
    "content_block_delta": ChatStreamTranslator._on_block_delta,
    "content_block_stop": ChatStreamTranslator._on_block_stop,
    "message_delta": ChatStreamTranslator._on_message_delta,
    "message_stop": ChatStreamTranslator._on_message_stop,
    "error": ChatStreamTranslator._on_error,
    "ping": ChatStreamTranslator._on_ping,
}
_KNOWN = frozenset(_HANDLERS)
