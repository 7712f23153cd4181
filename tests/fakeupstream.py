"""A fake Anthropic Messages API upstream: a real HTTP server for dario's tests and benchmarks.

Run it:   python -m tests.fakeupstream [--host 127.0.0.1] [--port 0] [--key KEY ...]
It prints one line, ``READY http://HOST:PORT``, once bound, and serves until SIGTERM/SIGINT.

What a /v1/messages reply contains is chosen by directives in the text of the last user message:
``[[tool]]`` ``[[tools]]`` ``[[thinking]]`` ``[[long:N]]`` ``[[echo]]`` ``[[cache]]`` ``[[stop:XYZ]]``
``[[max]]``. Faults are queued with ``POST /_fake/script`` (see ``_ACTION_KEYS``), rate-limit windows
are set with ``POST /_fake/limits``, ``POST /_fake/clock {"offset": s}`` makes the ``Date`` header run
``s`` seconds off, and ``GET /_fake/requests`` returns what was received.
``POST /_fake/headers {"key": k, "ratelimit": false}`` makes answers to key ``k`` carry no
``anthropic-ratelimit-*`` headers at all, as Bedrock and Vertex answer; a scripted
``{"status": 429, "retry_after": null}`` then throttles with no reset named anywhere (Bedrock's
ThrottlingException names none).

Prompt-cache mode (``--prompt-cache``, ``FakeUpstream(prompt_cache=True)`` or ``POST /_fake/cache
{"enabled": true}``) keeps one prompt cache per API key with the API's rules (see ``_PromptCache``)
and reports ``cache_read_input_tokens``/``cache_creation_input_tokens`` from it instead of the
``[[cache]]`` directive's fixed numbers. ``POST /_fake/clock {"advance": s}`` moves the fake's own
clock (which cache entries expire by) s seconds forward, so tests expire entries without sleeping.

Hostile upstream actions (each a key of a scripted action; they combine):

``truncate: N``
    stream: send the first N events, then end the chunked body cleanly (a terminated body, no
    ``message_stop``): an answer cut off by a proxy or a crashed server, with nothing wrong at the
    HTTP level.
``drip: N`` (with ``drip_delay: S``)
    send the body (the SSE bytes, or the JSON of a whole answer) in N-byte pieces, one HTTP chunk
    (one socket write) each, sleeping S seconds between pieces. A stream without ``drip_delay`` is
    sent as N-byte HTTP chunks packed as tightly as the socket takes them (thousands of chunks per
    TCP segment), as a fast hostile server would.
``malformed: N``
    stream: after N events, one ``content_block_delta`` event whose ``data`` is not JSON (an
    unterminated string), then the rest of the stream as normal. Without ``drip``, these stream
    actions send one HTTP chunk per event, ``event_delay`` seconds apart.
``late_bytes: true | "text"`` (with ``late_delay: S``)
    after the complete response, S seconds later, write unsolicited bytes on the idle keep-alive
    connection (by default a whole second HTTP response with a ``{"late": true}`` body). A client
    that reused the connection would hand that response to its next request.
``huge_event: N`` (with ``huge_event_open: true``)
    stream: after the first text block starts, one text delta of N bytes; with ``huge_event_open``
    it is an N-byte ``data:`` line that never ends (no newline, no blank line) and the body then
    ends.
``huge_body: N`` (with ``huge_body_chunked: true``)
    non-streaming: the answer's text is N bytes of ``x``, sent in 1 MiB pieces with Content-Length
    set (or chunked, with no length announced).

The server is deliberately independent of dario's own code so that the two cannot share a bug.
It is also the "direct path" floor in benchmarks, so the per-request work is kept small: a plain
ASGI callable, orjson, and pre-encoded SSE fragments.

In tests, use ``FakeUpstream`` (a subprocess handle) or ``fixture()``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import math
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any, Literal
from wsgiref.handlers import format_date_time

import orjson
import trio

from tests.fakeserve import FakeProcess, answer_lifespan, serve_until_signal

Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ---------------------------------------------------------------------------------------------
# Static protocol data
# ---------------------------------------------------------------------------------------------

WINDOWS = ("requests", "tokens", "input-tokens", "output-tokens")
DEFAULT_LIMITS: dict[str, int] = {
    "requests": 1000,
    "tokens": 1_000_000,
    "input-tokens": 800_000,
    "output-tokens": 200_000,
}
DEFAULT_RESET_IN = 60.0
MAX_BODY = 32 * 1024 * 1024  # the real API's cap for messages and count_tokens (https://docs.anthropic.com/en/api/overview)
ORG_ID = b"00000000-0000-4000-8000-00000000fa4e"

# Real ids look like msg_01…/toolu_01…; keeping a "fake" marker makes leaks into logs obvious.
DEFAULT_TEXT = ("Hello", " from the fake", " upstream.")
TOOL_INTRO_TEXT = ("I'll use", " a tool", " for that.")
THINKING_TEXT = ("Let me think", " about this", " request carefully.")
LONG_WORDS = (" lorem", " ipsum", " dolor", " sit", " amet")

STATUS_ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request (scripted by the fake upstream).",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "conflict_error": "Conflict",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": (
        "This request would exceed the rate limit for your organization; see the response headers "
        "for current usage. Please try again later."
    ),
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}
SPEND_LIMIT_MESSAGE = (
    "You have reached your specified workspace API usage limits (enforced spend limit). "
    "You will regain access on the first day of next month."
)

# Top-level request fields the real API accepts; anything else is a 400 "Extra inputs are not
# permitted", which is exactly what catches a translator leaking OpenAI-only fields.
_COMMON_FIELDS = frozenset(
    {
        "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
        "cache_control", "speed", "mcp_servers", "context_management", "compaction",
        "billing_policy", "user_profile_id", "workspace_id",
    }
)  # fmt: skip
MESSAGES_FIELDS = _COMMON_FIELDS | {
    "max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata",
    "service_tier", "container", "inference_geo", "diagnostics", "fallbacks",
    "fallback_credit_token", "thread",
}  # fmt: skip
COUNT_FIELDS = _COMMON_FIELDS

# (id, display name, release date, context window, max output, line, retires_at); newest first, as
# the real list endpoint orders them. Ids follow the anthropic SDK's Model literal (newer models
# have undated ids); dates are approximate, nothing depends on them.
_MODEL_ROWS: tuple[tuple[str, str, str, int, int, str, str | None], ...] = (
    ("claude-fable-5-2", "Claude Fable 5.2", "2026-11-10", 1_000_000, 128_000, "fable", None),
    ("claude-mythos-5-2", "Claude Mythos 5.2", "2026-11-10", 1_000_000, 128_000, "mythos", None),
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-10-20", 1_000_000, 128_000, "opus", None),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-10-20", 1_000_000, 128_000, "sonnet", None),
    ("claude-haiku-5-5", "Claude Haiku 5.5", "2026-10-20", 200_000, 64_000, "haiku", None),
    ("claude-fable-5-1", "Claude Fable 5.1", "2026-09-15", 1_000_000, 128_000, "fable", None),
    ("claude-mythos-5-1", "Claude Mythos 5.1", "2026-09-15", 1_000_000, 128_000, "mythos", None),
    ("claude-fable-5", "Claude Fable 5", "2026-08-04", 1_000_000, 128_000, "fable", None),
    ("claude-mythos-5", "Claude Mythos 5", "2026-08-04", 1_000_000, 128_000, "mythos", None),
    ("claude-opus-5", "Claude Opus 5", "2026-08-04", 1_000_000, 128_000, "opus", None),
    ("claude-sonnet-5", "Claude Sonnet 5", "2026-08-04", 1_000_000, 128_000, "sonnet", None),
    ("claude-opus-4-8", "Claude Opus 4.8", "2026-06-02", 1_000_000, 128_000, "opus", None),
    ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16", 1_000_000, 128_000, "opus", None),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17", 1_000_000, 128_000, "sonnet", None),
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05", 1_000_000, 128_000, "opus", None),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24", 200_000, 64_000, "opus", "2027-01-22"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15", 200_000, 64_000, "haiku", None),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29",
        200_000,
        64_000,
        "sonnet",
        "2026-11-30",
    ),
)
MODELS: list[dict[str, Any]] = [
    {
        "type": "model",
        "id": mid,
        "display_name": name,
        "created_at": f"{created}T00:00:00Z",
        "max_input_tokens": ctx,
        "max_tokens": out,
        "line": line,
        "lifecycle": "deprecated" if retires else "active",
        "deprecated_at": f"{created}T00:00:00Z" if retires else None,
        "retires_at": f"{retires}T00:00:00Z" if retires else None,
    }
    for mid, name, created, ctx, out, line, retires in _MODEL_ROWS
]
MODEL_IDS = [m["id"] for m in MODELS]
# The real API resolves an undated alias to the dated model.
MODEL_ALIASES: dict[str, dict[str, Any]] = {}
for _m in MODELS:
    MODEL_ALIASES[_m["id"]] = _m
    MODEL_ALIASES.setdefault(re.sub(r"-\d{8}$", "", _m["id"]), _m)

# Recognised script action keys; anything else is rejected so a typo fails the test loudly.
_ACTION_KEYS = frozenset(
    {
        "status", "retry_after", "spend_limit", "error_type", "message", "headers",
        "stream_error", "after_events", "cut_after_events", "delay", "event_delay", "stall",
        "reset_connection", "echo_key",
        "models",  # true: consumed by GET /v1/models (a key check) instead of a messages request
        # hostile upstream (streaming part): see App._messages
        "truncate", "drip", "drip_delay", "malformed", "late_bytes", "late_delay", "huge_event",
        "huge_event_open", "huge_body", "huge_body_chunked",
    }
)  # fmt: skip

_HOSTILE_STREAM = frozenset({"truncate", "drip", "malformed", "late_bytes", "huge_event"})
_HOSTILE_BODY = frozenset({"drip", "late_bytes", "huge_body"})
_LATE_BODY = b'{"late":true,"note":"unsolicited bytes from the fake upstream"}'
LATE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(_LATE_BODY) + _LATE_BODY
)

# ---------------------------------------------------------------------------------------------
# Pre-encoded SSE fragments
# ---------------------------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    name: str = payload["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


PING = _sse({"type": "ping"})
MESSAGE_STOP = _sse({"type": "message_stop"})
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_DELTA_KIND = {
    "text": b',"delta":{"type":"text_delta","text":',
    "thinking": b',"delta":{"type":"thinking_delta","thinking":',
    "tool_use": b',"delta":{"type":"input_json_delta","partial_json":',
}


@lru_cache(maxsize=64)
def _block_stop(index: int) -> bytes:
    return _sse({"type": "content_block_stop", "index": index})


def _delta(index: int, kind: str, piece: str) -> bytes:
    return _DELTA_HEAD + b"%d" % index + _DELTA_KIND[kind] + orjson.dumps(piece) + b"}}\n\n"


# ---------------------------------------------------------------------------------------------
# Server state
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _http_date(second: int) -> bytes:
    # Formatted once per second, not per response: the fake is the benchmarks' floor.
    return format_date_time(second).encode()


def _rfc3339(ts: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)).encode()


_RL_NAMES = {
    w: tuple(f"anthropic-ratelimit-{w}-{part}".encode() for part in ("limit", "remaining", "reset")) for w in WINDOWS
}


class _Window:
    __slots__ = ("limit", "remaining", "reset_at", "reset_b", "reset_in")

    def __init__(self, limit: int, remaining: int, reset_in: float, now: float) -> None:
        self.limit = limit
        self.reset_in = reset_in
        self.remaining = remaining
        self._start(now)

    def _start(self, now: float) -> None:
        self.reset_at = now + self.reset_in
        self.reset_b = _rfc3339(self.reset_at)

    def roll(self, now: float) -> None:
        # A window refills when its reset time has passed; the next one starts with this request.
        if now >= self.reset_at:
            self.remaining = self.limit
            self._start(now)


class _LimitConfig:
    __slots__ = ("limits", "remaining", "reset_in")

    def __init__(self, limits: dict[str, int], reset_in: float, remaining: dict[str, int]) -> None:
        self.limits = limits
        self.reset_in = reset_in
        self.remaining = remaining  # only for the first window; later windows refill to the limit


class _Limits:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.default = _LimitConfig(dict(DEFAULT_LIMITS), DEFAULT_RESET_IN, {})
        self.per_key: dict[str, _LimitConfig] = {}
        self.state: dict[str, list[_Window]] = {}

    def configure(self, key: str | None, spec: dict[str, Any]) -> None:
        base = self.default if key is None else self.per_key.get(key, self.default)
        spec = {_window_name(k): v for k, v in spec.items()}
        limits = dict(base.limits)
        for w in WINDOWS:
            if w in spec:
                limits[w] = _nonneg_int(spec[w], w)
        reset_in = float(spec.get("reset_in", base.reset_in))
        if not reset_in > 0:
            raise ValueError("reset_in must be > 0")
        remaining_spec = spec.get("remaining") or {}
        if not isinstance(remaining_spec, dict):
            raise ValueError("remaining must be an object")
        remaining = {}
        for k, v in remaining_spec.items():
            w = _window_name(k)
            if w not in WINDOWS:
                raise ValueError(f"unknown window {k!r}")
            remaining[w] = _nonneg_int(v, w)
        unknown = set(spec) - set(WINDOWS) - {"reset_in", "remaining"}
        if unknown:
            raise ValueError(f"unknown limit fields {sorted(unknown)}")
        cfg = _LimitConfig(limits, reset_in, remaining)
        if key is None:
            self.default = cfg
            # Keys without their own config pick up the new defaults on their next request.
            for k in [k for k in self.state if k not in self.per_key]:
                del self.state[k]
        else:
            self.per_key[key] = cfg
            self.state.pop(key, None)

    def windows(self, key: str, now: float) -> list[_Window]:
        ws = self.state.get(key)
        if ws is None:
            cfg = self.per_key.get(key, self.default)
            ws = [_Window(cfg.limits[w], cfg.remaining.get(w, cfg.limits[w]), cfg.reset_in, now) for w in WINDOWS]
            self.state[key] = ws
        else:
            for w in ws:
                w.roll(now)
        return ws


def _window_name(name: str) -> str:
    return name if name == "reset_in" else name.replace("_", "-")


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


# ---------------------------------------------------------------------------------------------
# Prompt cache (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching)
# ---------------------------------------------------------------------------------------------

MAX_BREAKPOINTS = 4  # "You can define up to 4 cache breakpoints"
LOOKBACK_BLOCKS = 20  # hits are also checked at block boundaries up to ~20 blocks before a breakpoint
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


class _Prefix:
    """The request as the cache sees it: tools, then system, then messages, one entry per block."""

    __slots__ = ("breakpoints", "hashes", "tokens")

    def __init__(self, body: dict[str, Any]) -> None:
        blocks = _cacheable_blocks(body)
        h = hashlib.sha256(orjson.dumps(body.get("model")))
        self.hashes: list[str] = []
        self.tokens: list[int] = []  # tokens of the prefix ending with block i (the fake's bytes/4 estimate)
        self.breakpoints: list[tuple[int, str]] = []  # (block index, ttl name)
        size = 0
        for i, (tag, block) in enumerate(blocks):
            # The marker itself is not content: moving a breakpoint must not change the prefix.
            content = orjson.dumps({k: v for k, v in block.items() if k != "cache_control"})
            h.update(tag.encode() + b"\0" + content + b"\0")
            self.hashes.append(h.hexdigest())
            size += len(content)
            self.tokens.append(size // 4)
            cc = block.get("cache_control")
            if isinstance(cc, dict):
                self.breakpoints.append((i, "1h" if cc.get("ttl") == "1h" else "5m"))
        top = body.get("cache_control")
        # Automatic caching: a top-level marker puts the breakpoint on the last cacheable block.
        if isinstance(top, dict) and blocks and (not self.breakpoints or self.breakpoints[-1][0] != len(blocks) - 1):
            self.breakpoints.append((len(blocks) - 1, "1h" if top.get("ttl") == "1h" else "5m"))


def _cacheable_blocks(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("tools", t) for t in body.get("tools") or [] if isinstance(t, dict)]
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        out += [("system", b) for b in system if isinstance(b, dict)]
    for m in body.get("messages") or []:
        role, content = str(m.get("role")), m.get("content")
        if isinstance(content, str):
            out.append((role, {"type": "text", "text": content}))
        elif isinstance(content, list):
            out += [(role, b) for b in content if isinstance(b, dict)]
    return out


class CacheUsage:
    __slots__ = ("created_1h", "created_5m", "read")

    def __init__(self, read: int = 0, created_5m: int = 0, created_1h: int = 0) -> None:
        self.read = read
        self.created_5m = created_5m
        self.created_1h = created_1h

    @property
    def created(self) -> int:
        return self.created_5m + self.created_1h


class _PromptCache:
    """One cache per API key: prefix hash -> (expires at, ttl name).

    For each breakpoint the longest cached prefix is looked for at that breakpoint and at the block
    boundaries up to LOOKBACK_BLOCKS before it; the longest hit over all breakpoints is read (and
    its entry refreshed), and every breakpoint past it is written, so a conversation whose
    breakpoint moves to the newest message each turn reads its history from the last turn's entry.
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, tuple[float, str]]] = {}

    def clear(self) -> None:
        self.entries.clear()

    def apply(self, key: str, prefix: _Prefix, now: float) -> CacheUsage:
        if not prefix.breakpoints:
            return CacheUsage()
        cache = self.entries.setdefault(key, {})
        for h in [h for h, (exp, _) in cache.items() if exp <= now]:
            del cache[h]
        hit = self._longest_hit(cache, prefix)
        read = prefix.tokens[hit] if hit >= 0 else 0
        if hit >= 0:  # a hit refreshes the entry for its own lifetime
            ttl_name = cache[prefix.hashes[hit]][1]
            cache[prefix.hashes[hit]] = (now + TTL_SECONDS[ttl_name], ttl_name)
        usage = CacheUsage(read)
        done = read
        for i, ttl in prefix.breakpoints:
            if i <= hit:
                continue
            written = prefix.tokens[i] - done
            if ttl == "1h":
                usage.created_1h += written
            else:
                usage.created_5m += written
            done = prefix.tokens[i]
            cache[prefix.hashes[i]] = (now + TTL_SECONDS[ttl], ttl)
        return usage

    @staticmethod
    def _longest_hit(cache: dict[str, tuple[float, str]], prefix: _Prefix) -> int:
        best = -1
        for i, _ in prefix.breakpoints:
            for j in range(i, max(-1, i - LOOKBACK_BLOCKS - 1), -1):
                if j <= best:
                    break
                if prefix.hashes[j] in cache:
                    best = j
                    break
        return best


def _breakpoint_error(body: dict[str, Any]) -> str | None:
    # The top-level (automatic) marker takes one of the four slots too.
    found = sum(1 for _, b in _cacheable_blocks(body) if "cache_control" in b) + ("cache_control" in body)
    if found > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
    return None


class _State:
    def __init__(self, keys: set[str] | None, log_max: int, prompt_cache: bool = False) -> None:
        self.keys = keys
        self.n = 0
        self.scripts: list[tuple[str | None, dict[str, Any]]] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=log_max)
        self.limits = _Limits()
        self.headerless: set[str] = set()  # keys whose answers carry no rate-limit headers
        self.clock_offset = 0.0  # seconds added to the Date header, for clock-skew tests
        self.clock_advance = 0.0  # seconds the fake's own clock (cache expiry) has been moved on
        self.prompt_cache_default = prompt_cache
        self.prompt_cache = prompt_cache
        self.cache = _PromptCache()
        # In-flight API requests, so tests can wait (server-side) until dario has let go of them.
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()

    def now(self) -> float:
        return time.time() + self.clock_advance

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "requests": self.n, "pending_actions": len(self.scripts)}

    def take_action(self, key: str | None, models: bool = False) -> dict[str, Any] | None:
        if not self.scripts:  # the benchmark path: nothing scripted
            return None
        for i, (k, action) in enumerate(self.scripts):
            if (k is None or k == key) and bool(action.get("models")) == models:
                del self.scripts[i]
                return action
        return None

    def key_ok(self, key: str) -> bool:
        if self.keys is not None:
            return key in self.keys
        return not key.startswith("sk-bad")


# ---------------------------------------------------------------------------------------------
# Request validation (a subset of the real API's checks that gateways commonly trip on)
# ---------------------------------------------------------------------------------------------


def _validate(body: dict[str, Any], count: bool) -> str | None:
    """Return the real-API-style error message for an invalid body, or None."""
    allowed = COUNT_FIELDS if count else MESSAGES_FIELDS
    for name in body:
        if name not in allowed:
            return f"{name}: Extra inputs are not permitted"
    model = body.get("model")
    if model is None:
        return "model: Field required"
    if not isinstance(model, str) or not model:
        return "model: Input should be a valid string"
    if not count:
        mt = body.get("max_tokens")
        if mt is None:
            return "max_tokens: Field required"
        if isinstance(mt, bool) or not isinstance(mt, int):
            return "max_tokens: Input should be a valid integer"
        if mt < 0:
            return "max_tokens: Input should be greater than or equal to 0"
        if "stream" in body and not isinstance(body["stream"], bool):
            return "stream: Input should be a valid boolean"
        temp = body.get("temperature")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, int | float)):
            return "temperature: Input should be a valid number"
        if temp is not None and not 0 <= temp <= 1:
            return "temperature: range: 0..1"
        stops = body.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                return "stop_sequences: Input should be a valid list of strings"
            if any(not s.strip() for s in stops):
                return "stop_sequences: each stop sequence must contain non-whitespace"
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            return "thinking: Input tag does not match any of the expected tags: 'enabled', 'adaptive', ..."
        if thinking["type"] == "enabled":
            budget = thinking.get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int):
                return "thinking.enabled.budget_tokens: Field required"
            if budget < 1024:
                return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            if not count and budget >= body["max_tokens"]:
                return "`max_tokens` must be greater than `thinking.budget_tokens`."
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        return "tools: Input should be a valid list"
    return _validate_messages(body.get("messages"))


def _validate_messages(messages: Any) -> str | None:
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    # The real API merges consecutive same-role turns before checking tool pairing.
    merged: list[tuple[str, int, list[Any]]] = []
    last = len(messages) - 1
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = m.get("role")
        if role not in ("user", "assistant", "system"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if isinstance(content, str):
            if not content and not (i == last and role == "assistant"):
                return (
                    f"messages.{i}: all messages must have non-empty content except for the "
                    "optional final assistant message"
                )
            blocks: list[Any] = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            for j, b in enumerate(content):
                if not isinstance(b, dict) or not isinstance(b.get("type"), str):
                    return f"messages.{i}.content.{j}: Input should be a valid dictionary"
                if b["type"] == "text" and not b.get("text"):
                    return f"messages.{i}.content.{j}.text: text content blocks must be non-empty"
            blocks = content
        else:
            return f"messages.{i}.content: Input should be a valid string or list"
        if merged and merged[-1][0] == role:
            merged[-1][2].extend(blocks)
        else:
            merged.append((role, i, list(blocks)))
    prev_ids: set[str] = set()
    for k, (role, i, blocks) in enumerate(merged):
        if role == "user":
            for b in blocks:
                if b.get("type") == "tool_result" and (
                    not isinstance(b.get("tool_use_id"), str) or b.get("tool_use_id") not in prev_ids
                ):
                    return (
                        f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
        ids = [b.get("id") for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
        if ids and k + 1 < len(merged):
            _, ni, nblocks = merged[k + 1]
            got = {b.get("tool_use_id") for b in nblocks if b.get("type") == "tool_result"}
            missing = [str(x) for x in ids if x not in got]
            if missing:
                return (
                    f"messages.{ni}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
        prev_ids = {str(x) for x in ids}
    return None


# ---------------------------------------------------------------------------------------------
# Reply planning
# ---------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::([^\]]*))?\]\]")


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        parts: list[str] = []
        for b in content:
            if b.get("type") == "text":
                parts.append(str(b.get("text", "")))
            elif b.get("type") == "tool_result":
                # Directives inside tool results let tests drive a multi-step tool loop.
                inner = b.get("content")
                if isinstance(inner, str):
                    parts.append(inner)
                elif isinstance(inner, list):
                    parts.extend(str(x.get("text", "")) for x in inner if isinstance(x, dict))
        return "\n".join(parts)
    return ""


def _sample(schema: Any, name: str, i: int) -> Any:
    if not isinstance(schema, dict):
        return f"fake-{name}-{i + 1}"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[i % len(enum)]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "integer":
        return i + 1
    if t == "number":
        return i + 1.5
    if t == "boolean":
        return i % 2 == 0
    if t == "array":
        return []
    if t == "object":
        return {}
    if t == "null":
        return None
    return f"fake-{name}-{i + 1}"


def _tool_input(tool: dict[str, Any] | None, i: int) -> dict[str, Any]:
    if tool is None:
        return {"location": ("San Francisco, CA", "Paris, France")[i % 2], "unit": "celsius"}
    schema = tool.get("input_schema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return {}
    return {name: _sample(sub, name, i) for name, sub in props.items()}


def _json_fragments(value: dict[str, Any]) -> list[str]:
    # The real API's first input_json_delta is often "", and the rest split mid-token.
    s = orjson.dumps(value).decode()
    step = max(1, math.ceil(len(s) / 3))
    return ["", *(s[k : k + step] for k in range(0, len(s), step))]


def _chunks(text: str, size: int) -> list[str]:
    return [text[k : k + size] for k in range(0, len(text), size)] or [""]


class _Block:
    __slots__ = ("extra", "kind", "pieces")

    def __init__(self, kind: str, pieces: list[str], extra: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.pieces = pieces
        self.extra = extra or {}

    def start(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": ""}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        return {"type": "tool_use", "id": self.extra["id"], "name": self.extra["name"], "input": {}}

    def final(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": "".join(self.pieces)}
        if self.kind == "thinking":
            return {
                "type": "thinking",
                "thinking": "".join(self.pieces),
                "signature": self.extra["signature"],
            }
        return {
            "type": "tool_use",
            "id": self.extra["id"],
            "name": self.extra["name"],
            "input": self.extra["input"],
        }


class _Plan:
    __slots__ = (
        "blocks", "cache", "cache_usage", "input_tokens", "model", "msg_id", "output_tokens", "stop_reason",
        "stop_sequence",
    )  # fmt: skip

    def __init__(self, n: int, body: dict[str, Any], size: int) -> None:
        self.model = body["model"]
        self.msg_id = f"msg_fake_{n}"
        self.input_tokens = max(1, size // 4)
        text = _last_user_text(body["messages"])
        d: dict[str, str] = {}
        for m in _DIRECTIVE.finditer(text):
            d.setdefault(m.group(1), m.group(2) or "")
        self.cache = "cache" in d
        self.cache_usage = CacheUsage(100, 50) if self.cache else CacheUsage()
        blocks: list[_Block] = []
        if "thinking" in d:
            sig = base64.b64encode(hashlib.sha256(b"fake-signature-%d" % n).digest() * 3).decode()
            blocks.append(_Block("thinking", list(THINKING_TEXT), {"signature": sig}))
        ntools = 2 if "tools" in d else 1 if "tool" in d else 0
        if "echo" in d:
            pieces = _chunks(orjson.dumps(body).decode(), 256)
        elif "long" in d:
            count = min(int(d["long"]), 1_000_000) if d["long"].isdigit() else 0
            pieces = [LONG_WORDS[k % len(LONG_WORDS)] for k in range(count)]
        else:
            pieces = list(TOOL_INTRO_TEXT if ntools else DEFAULT_TEXT)
        blocks.append(_Block("text", pieces))
        if ntools:
            custom = [t for t in body.get("tools") or [] if t.get("type") in (None, "custom") and "name" in t]
            for i in range(ntools):
                tool = custom[min(i, len(custom) - 1)] if custom else None
                args = _tool_input(tool, i)
                name = tool["name"] if tool else "get_weather"
                extra = {"id": f"toolu_fake_{n}_{i}", "name": name, "input": args}
                blocks.append(_Block("tool_use", _json_fragments(args), extra))
        self.blocks = blocks
        self.output_tokens = max(1, sum(1 for b in blocks for p in b.pieces if p))
        self.stop_sequence: str | None = None
        if "max" in d:
            self.stop_reason = "max_tokens"
        elif "stop" in d:
            self.stop_reason, self.stop_sequence = "stop_sequence", d["stop"]
        elif ntools:
            self.stop_reason = "tool_use"
        else:
            self.stop_reason = "end_turn"

    def use_prompt_cache(self, usage: CacheUsage) -> None:
        """Report a real cache lookup: input_tokens is then what was neither read nor written."""
        self.cache_usage = usage
        self.input_tokens = max(0, self.input_tokens - usage.read - usage.created)

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        c = self.cache_usage
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": c.created,
            "cache_read_input_tokens": c.read,
            "cache_creation": {"ephemeral_5m_input_tokens": c.created_5m, "ephemeral_1h_input_tokens": c.created_1h},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self) -> bytes:
        usage = self._usage(self.output_tokens)
        usage["server_tool_use"] = None
        return orjson.dumps(
            {
                "id": self.msg_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [b.final() for b in self.blocks],
                "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence,
                "usage": usage,
            }
        )

    def events(self) -> list[bytes]:
        start = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(1),
        }
        out = [_sse({"type": "message_start", "message": start})]
        for i, b in enumerate(self.blocks):
            out.append(_sse({"type": "content_block_start", "index": i, "content_block": b.start()}))
            if i == 0:
                out.append(PING)
            out.extend(_delta(i, b.kind, p) for p in b.pieces)
            if b.kind == "thinking":
                sig = {"type": "signature_delta", "signature": b.extra["signature"]}
                out.append(_sse({"type": "content_block_delta", "index": i, "delta": sig}))
            out.append(_block_stop(i))
        # Usage here is cumulative, and newer APIs repeat input/cache counts (https://docs.anthropic.com/en/api/messages-streaming).
        final_usage = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_usage.created,
            "cache_read_input_tokens": self.cache_usage.read,
            "output_tokens": self.output_tokens,
        }
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        out.append(_sse({"type": "message_delta", "delta": delta, "usage": final_usage}))
        out.append(MESSAGE_STOP)
        return out


# ---------------------------------------------------------------------------------------------
# ASGI plumbing
# ---------------------------------------------------------------------------------------------


def _error_body(etype: str, message: str, n: int, details: dict[str, Any] | None = None) -> bytes:
    err: dict[str, Any] = {"type": etype, "message": message}
    if details is not None:
        err["details"] = details
    return orjson.dumps({"type": "error", "error": err, "request_id": f"req_fake_{n}"})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sleep_unless_disconnected(receive: Receive, seconds: float) -> bool:
    """Sleep; return False early if the client went away (so slow scenarios stop promptly)."""
    with trio.move_on_after(seconds):
        await _wait_disconnect(receive)
        return False
    return True


def _transport_of(send: Send) -> trio.SocketStream | None:
    # ASGI has no way to reset a connection, so follow hypercorn's bound `send` methods
    # (HTTPStream → H11Protocol → TCPServer) down to the trio socket stream.
    obj = getattr(send, "__self__", None)
    for _ in range(8):
        if obj is None:
            return None
        stream = getattr(obj, "stream", None)
        if isinstance(stream, trio.SocketStream):
            return stream
        obj = getattr(getattr(obj, "send", None), "__self__", None)
    return None


async def _reset_connection(send: Send, receive: Receive) -> None:
    transport = _transport_of(send)
    if transport is None:
        raise RuntimeError("reset_connection: cannot reach the socket (hypercorn internals changed?)")
    with contextlib.suppress(OSError):
        # Linger 0 makes close() send a TCP RST instead of a FIN: a true "connection reset".
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await transport.aclose()
    # Wait until hypercorn has noticed, so it does not try to answer with a 500 afterwards.
    await _wait_disconnect(receive)


class _Req:
    __slots__ = ("body", "entry", "headers", "key", "method", "n", "path", "query", "raw", "receive", "send")

    def __init__(
        self,
        n: int,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        key: str | None,
        raw: bytes,
        body: Any,
        receive: Receive,
        send: Send,
        entry: dict[str, Any],
    ) -> None:
        self.entry = entry  # this request's log entry; "status" and "disconnected" are filled in
        self.n = n
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.key = key
        self.raw = raw
        self.body = body
        self.receive = receive
        self.send = send


_BAD_JSON = object()


def _api_key(headers: dict[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return None


class App:
    """The ASGI application. One instance holds all the fake's state (single trio thread)."""

    def __init__(self, keys: set[str] | None = None, log_max: int = 10_000, prompt_cache: bool = False) -> None:
        self.s = _State(keys, log_max, prompt_cache)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before sending the whole request
        path: str = scope["path"]
        if path.startswith("/_fake/"):
            await self._admin(scope["method"], path, raw, send)
            return
        s = self.s
        s.n += 1
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name, value = k.decode("latin-1").lower(), v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        key = _api_key(headers)
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _BAD_JSON
        query = scope["query_string"].decode("latin-1")
        entry = {
            "n": s.n,
            "method": scope["method"],
            "path": path,
            "query": query,
            "headers": headers,
            "body": None if body is _BAD_JSON else body,
            "size": len(raw),
            "key": key,
            "time": time.time(),
            "status": None,
            "disconnected": False,
        }
        s.log.append(entry)
        req = _Req(s.n, scope["method"], path, query, headers, key, raw, body, receive, send, entry)
        if s.in_flight == 0:
            s.idle = trio.Event()
        s.in_flight += 1
        try:
            await self._route(req)
        finally:
            s.in_flight -= 1
            if s.in_flight == 0:
                s.idle.set()

    # -- responses -----------------------------------------------------------------------------

    def _headers(
        self, req: _Req, content_type: bytes, windows: list[_Window] | None = None
    ) -> list[tuple[bytes, bytes]]:
        ws = windows if windows is not None else self.s.limits.windows(req.key or "", time.time())
        h = [
            (b"content-type", content_type),
            (b"request-id", b"req_fake_%d" % req.n),
            (b"anthropic-organization-id", ORG_ID),
            (b"date", _http_date(int(time.time() + self.s.clock_offset))),
        ]
        if self.s.headerless and req.key in self.s.headerless:
            return h
        for name, w in zip(WINDOWS, ws, strict=True):
            lim, rem, rst = _RL_NAMES[name]
            h += ((lim, b"%d" % w.limit), (rem, b"%d" % max(0, w.remaining)), (rst, w.reset_b))
        return h

    async def _json(
        self,
        req: _Req,
        status: int,
        payload: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        cut: bool = False,
    ) -> None:
        h = headers if headers is not None else self._headers(req, b"application/json")
        h.append((b"content-length", b"%d" % len(payload)))
        req.entry["status"] = status
        await req.send({"type": "http.response.start", "status": status, "headers": h})
        if cut:
            # Half a body, then return: hypercorn closes the connection mid-message.
            await req.send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            return
        await req.send({"type": "http.response.body", "body": payload})

    async def _error(
        self,
        req: _Req,
        status: int,
        etype: str,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        details: dict[str, Any] | None = None,
        windows: list[_Window] | None = None,
    ) -> None:
        h = self._headers(req, b"application/json", windows)
        if extra:
            h += extra
        await self._json(req, status, _error_body(etype, message, req.n, details), h)

    # -- routing -------------------------------------------------------------------------------

    async def _route(self, req: _Req) -> None:
        path, method = req.path, req.method
        handler: Callable[[_Req], Awaitable[None]]
        if path == "/v1/messages":
            want, handler = "POST", self._messages
        elif path == "/v1/messages/count_tokens":
            want, handler = "POST", self._count_tokens
        elif path == "/v1/models":
            want, handler = "GET", self._models_list
        elif path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            want, handler = "GET", self._model_get
        else:
            await self._error(req, 404, "not_found_error", "Not Found")
            return
        if method != want:
            await self._error(req, 405, "invalid_request_error", f"Method Not Allowed: {method} {path}")
            return
        if not req.key:
            await self._error(req, 401, "authentication_error", "x-api-key header is required")
            return
        if not self.s.key_ok(req.key):
            await self._error(req, 401, "authentication_error", "invalid x-api-key")
            return
        # Only presence is checked: SDKs move on (anthropic 2.14 sends 2026-10-21, not 2023-06-01).
        if not req.headers.get("anthropic-version"):
            await self._error(req, 400, "invalid_request_error", "anthropic-version: header is required")
            return
        if method == "POST":
            if len(req.raw) > MAX_BODY:
                await self._error(req, 413, "request_too_large", ERROR_MESSAGES["request_too_large"])
                return
            if req.body is _BAD_JSON or req.body is None:
                await self._error(
                    req, 400, "invalid_request_error", "There was an error parsing the body of your request."
                )
                return
            if not isinstance(req.body, dict):
                await self._error(req, 400, "invalid_request_error", "Input should be a valid dictionary")
                return
        await handler(req)

    # -- scripted actions ----------------------------------------------------------------------

    async def _pre_action(self, req: _Req, action: dict[str, Any], stream: bool) -> bool:
        """Apply the parts of an action that come before a normal reply. True = done already."""
        delay = action.get("delay")
        if delay and not await _sleep_unless_disconnected(req.receive, float(delay)):
            req.entry["disconnected"] = True
            return True
        if action.get("reset_connection"):
            await _reset_connection(req.send, req.receive)
            return True
        if action.get("stall"):
            await _wait_disconnect(req.receive)
            req.entry["disconnected"] = True
            return True
        status = action.get("status")
        if action.get("echo_key"):
            # A hostile upstream: its error (HTTP, default 401, or an in-stream `stream_error`)
            # quotes the x-api-key it was sent. In place, so the streaming reply sees it too.
            default = ERROR_MESSAGES.get(str(action.get("stream_error")), "invalid x-api-key")
            action["message"] = f"{action.get('message') or default}: {req.key}"
            if status is None and not action.get("stream_error"):
                status = 401
        if status is None and action.get("stream_error") and not stream:
            # There is no mid-body error without SSE; answer with the matching HTTP error.
            etype = str(action["stream_error"])
            status = ERROR_TYPE_STATUS.get(etype, 500)
            action = {**action, "error_type": etype}
        if status is None:
            return False
        status = int(status)
        etype = action.get("error_type") or STATUS_ERROR_TYPE.get(
            status, "invalid_request_error" if status < 500 else "api_error"
        )
        message = action.get("message") or ERROR_MESSAGES.get(etype, "Error")
        extra = [(k.lower().encode(), str(v).encode()) for k, v in (action.get("headers") or {}).items()]
        windows = self.s.limits.windows(req.key or "", time.time())
        details = None
        if status == 429 and action.get("spend_limit"):
            message = action.get("message") or SPEND_LIMIT_MESSAGE
            details = {"error_code": "enforced_spend_limit_reached"}
        elif status == 429 and action.get("retry_after", 1) is not None:
            ra = float(action.get("retry_after", 1))
            extra.append((b"retry-after", b"%d" % math.ceil(ra)))
            # Show the requests window as exhausted until the advertised retry time.
            shown = _Window(windows[0].limit, 0, ra, time.time())
            windows = [shown, *windows[1:]]
        await self._error(req, status, etype, message, extra, details, windows)
        return True

    # -- endpoints -----------------------------------------------------------------------------

    async def _messages(self, req: _Req) -> None:
        body: dict[str, Any] = req.body
        err = _validate(body, count=False) or (_breakpoint_error(body) if self.s.prompt_cache else None)
        if err:
            await self._error(req, 400, "invalid_request_error", err)
            return
        stream = bool(body.get("stream"))
        action = self.s.take_action(req.key)
        if action is not None and await self._pre_action(req, action, stream):
            return
        plan = _Plan(req.n, body, len(req.raw))
        now = time.time()
        ws = self.s.limits.windows(req.key or "", now)
        costs = (1, plan.input_tokens + plan.output_tokens, plan.input_tokens, plan.output_tokens)
        over = [(name, w) for name, w, c in zip(WINDOWS, ws, costs, strict=True) if w.remaining - c < 0]
        if over:
            wait = max(w.reset_at for _, w in over) - now
            name, w = over[0]
            msg = (
                f"This request would exceed your organization's rate limit of {w.limit} {name} per "
                f"{w.reset_in:g}s; see the response headers for current usage. Please try again later."
            )
            extra = [(b"retry-after", b"%d" % max(1, math.ceil(wait)))]
            await self._error(req, 429, "rate_limit_error", msg, extra, windows=ws)
            return
        for w, c in zip(ws, costs, strict=True):
            w.remaining -= c
        if self.s.prompt_cache:
            plan.use_prompt_cache(self.s.cache.apply(req.key or "", _Prefix(body), self.s.now()))
        action = action or {}
        if not stream:
            if _HOSTILE_BODY & action.keys():
                await self._hostile_json(req, plan, self._headers(req, b"application/json", ws), action)
                return
            await self._json(req, 200, plan.message(), self._headers(req, b"application/json", ws),
                             cut="cut_after_events" in action)  # fmt: skip
            return
        h = self._headers(req, b"text/event-stream", ws)
        h.append((b"cache-control", b"no-cache"))
        send = req.send
        req.entry["status"] = 200
        await send({"type": "http.response.start", "status": 200, "headers": h})
        events = plan.events()
        if "cut_after_events" in action:
            events = events[: int(action["cut_after_events"])]
        elif action.get("stream_error"):
            events = events[: int(action.get("after_events", 0))]
            etype = str(action["stream_error"])
            err_payload = {
                "type": etype,
                "message": action.get("message") or ERROR_MESSAGES.get(etype, "Error"),
            }
            events.append(_sse({"type": "error", "error": err_payload}))
        if _HOSTILE_STREAM & action.keys():
            await self._hostile_stream(req, events, action)
            return
        gap = float(action.get("event_delay") or 0)
        for i, ev in enumerate(events):
            if gap and i and not await _sleep_unless_disconnected(req.receive, gap):
                req.entry["disconnected"] = True
                return
            # One ASGI message per event, so clients (and dario) can observe the timing.
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        if "cut_after_events" in action:
            return  # leave the chunked body unterminated; hypercorn then drops the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- hostile upstream ------------------------------------------------------------------------

    async def _hostile_stream(self, req: _Req, events: list[bytes], action: dict[str, Any]) -> None:
        """The SSE body under the hostile actions (truncate, malformed, huge_event, drip, late_bytes)."""
        open_tail = b""
        if "huge_event" in action:
            size = int(action["huge_event"])
            if action.get("huge_event_open"):
                # A line that never ends: everything after it is never reached.
                events, open_tail = events[:3], b"data: " + b"x" * size
            else:
                events = [*events[:3], _delta(0, "text", "x" * size), *events[3:]]
        if "malformed" in action:
            k = int(action["malformed"])
            bad = _DELTA_HEAD + b'0,"delta":{"type":"text_delta","text":"unterminated\n\n'
            events = [*events[:k], bad, *events[k:]]
        if "truncate" in action:
            events = events[: int(action["truncate"])]
        if open_tail:
            events.append(open_tail)
        if action.get("drip"):
            body = b"".join(events)
            if action.get("drip_delay"):
                if not await self._send_pieces(req, body, action):
                    return
            else:
                await self._fast_drip(req, body, int(action["drip"]))
        else:
            gap = float(action.get("event_delay") or 0)
            for i, ev in enumerate(events):  # one HTTP chunk per event, as in a normal stream
                if gap and i and not await _sleep_unless_disconnected(req.receive, gap):
                    req.entry["disconnected"] = True
                    return
                await req.send({"type": "http.response.body", "body": ev, "more_body": True})
        await req.send({"type": "http.response.body", "body": b"", "more_body": False})
        await self._late_bytes(req, action)

    async def _hostile_json(self, req: _Req, plan: _Plan, h: list[tuple[bytes, bytes]], action: dict[str, Any]) -> None:
        """A whole answer under the hostile actions (huge_body, drip, late_bytes)."""
        req.entry["status"] = 200
        if "huge_body" in action:
            size = int(action["huge_body"])
            head, _, tail = plan.message().partition(b'"content":[')
            head += b'"content":[{"type":"text","text":"'
            tail = b'"}],' + tail.split(b"],", 1)[1]
            if not action.get("huge_body_chunked"):
                h.append((b"content-length", b"%d" % (len(head) + size + len(tail))))
            await req.send({"type": "http.response.start", "status": 200, "headers": h})
            await req.send({"type": "http.response.body", "body": head, "more_body": True})
            piece = b"x" * (1 << 20)
            left = size
            while left > 0:
                part = piece[: min(left, len(piece))]
                await req.send({"type": "http.response.body", "body": part, "more_body": True})
                left -= len(part)
            await req.send({"type": "http.response.body", "body": tail, "more_body": False})
        else:
            payload = plan.message()
            h.append((b"content-length", b"%d" % len(payload)))
            await req.send({"type": "http.response.start", "status": 200, "headers": h})
            if not await self._send_pieces(req, payload, action):
                return
            await req.send({"type": "http.response.body", "body": b"", "more_body": False})
        await self._late_bytes(req, action)

    async def _send_pieces(self, req: _Req, body: bytes, action: dict[str, Any]) -> bool:
        """Send `body` in `drip`-sized pieces (or whole); False if the client left meanwhile."""
        size = int(action.get("drip") or 0) or max(1, len(body))
        gap = float(action.get("drip_delay") or 0)
        for k in range(0, len(body), size):
            if gap and k and not await _sleep_unless_disconnected(req.receive, gap):
                req.entry["disconnected"] = True
                return False
            await req.send({"type": "http.response.body", "body": body[k : k + size], "more_body": True})
        return True

    async def _fast_drip(self, req: _Req, body: bytes, size: int) -> None:
        """A chunked body as `size`-byte HTTP chunks, written as fast as the socket takes them.

        Sent through hypercorn, each chunk would cost a write (and the fake's CPU would set the
        pace); a fast hostile server packs thousands of tiny chunks into each TCP segment, so
        the framing is written straight to the socket here, between hypercorn's first and last
        body messages (hypercorn then ends the body with its own zero-size chunk).
        """
        await req.send({"type": "http.response.body", "body": body[:size], "more_body": True})
        transport = _transport_of(req.send)
        if transport is None:
            raise RuntimeError("drip: cannot reach the socket (hypercorn internals changed?)")
        batch: list[bytes] = []
        framed = 0
        for k in range(size, len(body), size):
            piece = body[k : k + size]
            batch.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            framed += len(batch[-1])
            if framed >= 65536:
                await transport.send_all(b"".join(batch))
                batch, framed = [], 0
        if batch:
            await transport.send_all(b"".join(batch))

    async def _late_bytes(self, req: _Req, action: dict[str, Any]) -> None:
        late = action.get("late_bytes")
        if not late:
            return
        data = LATE_RESPONSE if late is True else str(late).encode()
        delay = float(action.get("late_delay") or 0)
        if delay:
            await trio.sleep(delay)
        transport = _transport_of(req.send)
        if transport is None:
            raise RuntimeError("late_bytes: cannot reach the socket (hypercorn internals changed?)")
        try:
            await transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client already closed the connection: nothing to be late on
        req.entry["late_bytes_sent"] = True

    async def _count_tokens(self, req: _Req) -> None:
        err = _validate(req.body, count=True)
        if err:
            await self._error(req, 400, "invalid_request_error", err)
            return
        action = self.s.take_action(req.key)
        if action is not None and await self._pre_action(req, action, stream=False):
            return
        payload = b'{"input_tokens":%d}' % max(1, len(req.raw) // 4)
        await self._json(req, 200, payload, cut=bool(action and "cut_after_events" in action))

    async def _models_list(self, req: _Req) -> None:
        action = self.s.take_action(req.key, models=True)
        if action is not None and await self._pre_action(req, action, stream=False):
            return
        q = urllib.parse.parse_qs(req.query)
        try:
            limit = int(q.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            await self._error(req, 400, "invalid_request_error", "limit: Input should be between 1 and 1000")
            return
        after, before = q.get("after_id", [None])[0], q.get("before_id", [None])[0]
        if after and before:
            await self._error(req, 400, "invalid_request_error", "Only one of after_id and before_id may be set")
            return
        for cursor in (after, before):
            if cursor and cursor not in MODEL_IDS:
                await self._error(req, 400, "invalid_request_error", f"Invalid cursor: {cursor}")
                return
        if before:
            end = MODEL_IDS.index(before)
            start = max(0, end - limit)
            page, has_more = MODELS[start:end], start > 0
        else:
            start = MODEL_IDS.index(after) + 1 if after else 0
            page, has_more = MODELS[start : start + limit], start + limit < len(MODELS)
        payload = {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        await self._json(req, 200, orjson.dumps(payload))

    async def _model_get(self, req: _Req) -> None:
        mid = req.path[len("/v1/models/") :]
        model = MODEL_ALIASES.get(mid)
        if model is None:
            await self._error(req, 404, "not_found_error", f"model: {mid}")
            return
        await self._json(req, 200, orjson.dumps(model))

    # -- admin ---------------------------------------------------------------------------------

    async def _admin(self, method: str, path: str, raw: bytes, send: Send) -> None:
        s = self.s
        status, out = 200, b'{"ok":true}'
        try:
            body = orjson.loads(raw) if raw else {}
            if (method, path) == ("POST", "/_fake/script"):
                key, actions = body.get("key"), body.get("actions")
                if key is not None and not isinstance(key, str):
                    raise ValueError("key must be a string or null")
                if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
                    raise ValueError("actions must be a list of objects")
                for a in actions:
                    unknown = set(a) - _ACTION_KEYS
                    if unknown:
                        raise ValueError(f"unknown action fields {sorted(unknown)}")
                s.scripts.extend((key, a) for a in actions)
                out = orjson.dumps({"pending": len(s.scripts)})
            elif (method, path) == ("GET", "/_fake/script"):
                out = orjson.dumps([{"key": k, "action": a} for k, a in s.scripts])
            elif (method, path) == ("POST", "/_fake/limits"):
                key = body.pop("key", None)
                s.limits.configure(key, body)
            elif (method, path) == ("GET", "/_fake/requests"):
                out = orjson.dumps(list(s.log))
            elif (method, path) == ("GET", "/_fake/stats"):
                out = orjson.dumps(s.stats())
            elif (method, path) == ("POST", "/_fake/wait_idle"):
                # Blocks until no API request is in flight (or the timeout), then reports stats.
                with trio.move_on_after(float(body.get("timeout", 10))):
                    await s.idle.wait()
                out = orjson.dumps(s.stats())
            elif (method, path) == ("POST", "/_fake/clock"):
                if "advance" in body:
                    s.clock_advance += float(body["advance"])
                if "offset" in body or "advance" not in body:
                    s.clock_offset = float(body.get("offset", 0))
            elif (method, path) == ("POST", "/_fake/headers"):
                key = body.get("key")
                if not isinstance(key, str) or not isinstance(body.get("ratelimit"), bool):
                    raise ValueError("key must be a string and ratelimit true or false")
                if body["ratelimit"]:
                    s.headerless.discard(key)
                else:
                    s.headerless.add(key)
            elif (method, path) == ("POST", "/_fake/cache"):
                if "enabled" in body:
                    s.prompt_cache = bool(body["enabled"])
                if body.get("clear"):
                    s.cache.clear()
                out = orjson.dumps({"enabled": s.prompt_cache})
            elif (method, path) == ("POST", "/_fake/reset"):
                s.clock_offset = 0.0
                s.clock_advance = 0.0
                s.prompt_cache = s.prompt_cache_default
                s.cache.clear()
                s.scripts.clear()
                s.log.clear()
                s.limits.reset()
                s.headerless.clear()
            else:
                status, out = 404, orjson.dumps({"error": f"no admin endpoint {method} {path}"})
        except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as e:
            status, out = 400, orjson.dumps({"error": str(e)})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


async def _serve(app: App, host: str, port: int) -> None:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0  # stalled scenarios must not hold up shutdown for long
    config.keep_alive_timeout = 75.0  # pooled client connections outlive hypercorn's 5 s default
    config.keep_alive_max_requests = 1_000_000  # hypercorn closes after 1000 by default; benches would churn
    config.include_server_header = False
    config.include_date_header = False  # the app sends its own, which /_fake/clock can skew
    await serve_until_signal(app, config)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fakeupstream", description="Fake Anthropic upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--key", action="append", default=[], help="accepted API key (repeatable)")
    p.add_argument("--log-max", type=int, default=10_000, help="request log entries kept")
    p.add_argument("--prompt-cache", action="store_true", help="keep a prompt cache per key (see _PromptCache)")
    args = p.parse_args(argv)
    app = App(set(args.key) if args.key else None, args.log_max, args.prompt_cache)
    trio.run(_serve, app, args.host, args.port)


# ---------------------------------------------------------------------------------------------
# Test-side handle
# ---------------------------------------------------------------------------------------------


class FakeUpstream(FakeProcess):
    """Runs the fake in a subprocess and drives its admin API (synchronously, via urllib)."""

    name = "fake upstream"

    def __init__(
        self, keys: list[str] | None = None, *, log_max: int | None = None, prompt_cache: bool = False
    ) -> None:
        super().__init__()
        self.keys = list(keys or [])
        self.prompt_cache = prompt_cache  # keep a prompt cache per key from the start (and after clear())
        self.log_max = log_max  # request-log entries the server keeps (its default: 10,000)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.fakeupstream", "--host", "127.0.0.1", "--port", "0"]
        for k in self.keys:
            cmd += ["--key", k]
        if self.log_max is not None:
            cmd += ["--log-max", str(self.log_max)]
        if self.prompt_cache:
            cmd.append("--prompt-cache")
        return cmd

    def _call(self, method: str, path: str, payload: Any = None, timeout: float = 10.0) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"fake upstream admin {method} {path}: {e.code} {e.read().decode()}") from None

    def script(self, *actions: dict[str, Any], key: str | None = None) -> None:
        """Queue actions; each matching /v1/messages or count_tokens request consumes one."""
        self._call("POST", "/_fake/script", {"key": key, "actions": list(actions)})

    def pending(self) -> list[dict[str, Any]]:
        """Queued, not yet consumed actions: [{"key": ..., "action": {...}}]."""
        result: list[dict[str, Any]] = self._call("GET", "/_fake/script")
        return result

    def set_limits(self, key: str | None = None, **windows: Any) -> None:
        """E.g. set_limits("k", requests=2, input_tokens=5000, remaining={"requests": 0}, reset_in=5)."""
        spec = {_window_name(k): v for k, v in windows.items()}
        if isinstance(spec.get("remaining"), dict):
            spec["remaining"] = {_window_name(k): v for k, v in spec["remaining"].items()}
        self._call("POST", "/_fake/limits", {"key": key, **spec})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests")
        return result

    def stats(self) -> dict[str, int]:
        """{"in_flight", "requests" (API requests seen so far), "pending_actions"}."""
        result: dict[str, int] = self._call("GET", "/_fake/stats")
        return result

    def wait_idle(self, timeout: float = 10.0) -> dict[str, int]:
        """Block until no API request is in flight on the server (or timeout); returns stats()."""
        result: dict[str, int] = self._call("POST", "/_fake/wait_idle", {"timeout": timeout}, timeout + 5)
        return result

    def set_clock(self, offset: float) -> None:
        """Make the Date header `offset` seconds off local time (clear() puts it back)."""
        self._call("POST", "/_fake/clock", {"offset": offset})

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's own clock (prompt-cache expiry) forward; the Date header is unaffected."""
        self._call("POST", "/_fake/clock", {"advance": seconds})

    def set_ratelimit_headers(self, key: str, enabled: bool) -> None:
        """Whether answers to `key` carry anthropic-ratelimit-* headers (clear() puts them back)."""
        self._call("POST", "/_fake/headers", {"key": key, "ratelimit": enabled})

    def set_prompt_cache(self, enabled: bool, clear: bool = False) -> None:
        """Turn the per-key prompt cache on or off (clear=True also forgets every entry)."""
        self._call("POST", "/_fake/cache", {"enabled": enabled, "clear": clear})

    def clear(self) -> None:
        self._call("POST", "/_fake/reset", {})


@contextlib.contextmanager
def running(keys: list[str] | None = None) -> Iterator[FakeUpstream]:
    with FakeUpstream(keys) as fake:
        yield fake


def fixture(
    name: str = "fake_upstream",
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    keys: list[str] | None = None,
    prompt_cache: bool = False,
) -> Any:
    """A pytest fixture yielding a started FakeUpstream; assign it to a module-level name.

    Example: ``fake_upstream = fakeupstream.fixture()``. The server is shared for the scope, so
    call ``clear()`` where a test must not see earlier scripts, limits or log entries.
    """
    import pytest  # only the test side needs pytest

    def _fixture() -> Iterator[FakeUpstream]:
        with FakeUpstream(keys, prompt_cache=prompt_cache) as fake:
            yield fake

    return pytest.fixture(_fixture, scope=scope, name=name)


if __name__ == "__main__":
    main()
