"""A fake upstream that enforces ONE shared request limit per API key, across everyone who calls it.

Run it:   python -m tests.fakeshared [--port 0]     (prints ``READY http://HOST:PORT``)

Each key may make `limit` ``POST /v1/messages`` requests per window of `window` whole seconds
(windows aligned to the epoch, so the reset it announces is exact to the second). An admitted
request answers 200 after `delay` seconds with the real ``anthropic-ratelimit-requests-*`` headers
(remaining after it, reset); one over the limit answers 429 with ``retry-after`` and the same
headers, as the Anthropic API does (https://docs.anthropic.com/en/api/rate-limits#response-headers).
With `hide_headers` a 200 carries no rate-limit headers, so a caller learns of the limit only from
a 429. ``GET /v1/models`` (a key check) always answers 200 and counts nothing.

It counts what the team-mode tests judge dario by, per key:

- ``over_admission``: requests that arrived when the window had nothing left (each answered 429).
  A gateway that knew the remaining budget and kept to it sends none.
- ``violations``: requests that arrived after this fake answered a 429 for the key and before
  that 429's reset (the caller was told to stay away).
- ``violation_delays``: for each violation, seconds since the window's first 429 (the propagation time).

``POST /_fake/config {"limit", "window", "delay", "hide_headers"}`` sets the rules and clears the
counts; ``GET /_fake/stats`` returns them. Independent of dario's code, like tests/fakeupstream.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from hypercorn.config import Config

from tests.fakeserve import FakeProcess, answer_lifespan, serve_until_signal

Message = dict[str, Any]


@dataclass
class _KeyState:
    window_index: int = -1
    used: int = 0
    ok: int = 0
    rejected: int = 0
    over_admission: int = 0
    violations: int = 0
    blocked_until: float = 0.0  # the reset of the latest 429 this key was sent
    first_429_at: float | None = None
    last_429_at: float = 0.0
    # Per violation: seconds since the 429 that told callers to stay away (the propagation it allowed).
    violation_delays: list[float] = field(default_factory=list)


class SharedLimitFake:
    def __init__(self) -> None:
        self.limit = 10
        self.window = 2
        self.delay = 0.05
        self.hide_headers = False
        self.keys: dict[str, _KeyState] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        if (method, path) == ("POST", "/v1/messages"):
            await self.messages(headers.get("x-api-key", ""), send)
        elif (method, path) == ("GET", "/v1/models"):
            await _json(send, 200, {"data": [{"id": "claude-fake", "type": "model"}], "has_more": False})
        elif (method, path) == ("POST", "/_fake/config"):
            cfg = orjson.loads(body or b"{}")
            self.limit = int(cfg.get("limit", self.limit))
            self.window = int(cfg.get("window", self.window))
            self.delay = float(cfg.get("delay", self.delay))
            self.hide_headers = bool(cfg.get("hide_headers", self.hide_headers))
            self.keys.clear()
            await _json(send, 200, {"ok": True})
        elif (method, path) == ("GET", "/_fake/stats"):
            await _json(send, 200, {k: vars(v) for k, v in self.keys.items()})
        else:
            await _json(send, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}})

    async def messages(self, key: str, send: Callable[[Message], Awaitable[None]]) -> None:
        now = time.time()
        st = self.keys.setdefault(key, _KeyState())
        index = math.floor(now / self.window)
        if index != st.window_index:
            st.window_index, st.used = index, 0
        reset = (index + 1) * self.window
        if now < st.blocked_until:
            st.violations += 1
            st.violation_delays.append(round(now - st.last_429_at, 4))
        admitted = st.used < self.limit
        if admitted:
            st.used += 1
            st.ok += 1
        else:
            st.rejected += 1
            st.over_admission += 1
            if now >= st.blocked_until:
                st.last_429_at = now  # the first 429 of this window: callers were told here
            st.blocked_until = max(st.blocked_until, reset)
            if st.first_429_at is None:
                st.first_429_at = now
        limit_headers = [
            (b"anthropic-ratelimit-requests-limit", str(self.limit).encode()),
            (b"anthropic-ratelimit-requests-remaining", str(self.limit - st.used).encode()),
            (b"anthropic-ratelimit-requests-reset",
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)).encode()),
        ]
        if not admitted:
            await _json(send, 429, {"type": "error", "error": {"type": "rate_limit_error",
                                                                "message": "shared request limit reached"}},
                        [*limit_headers, (b"retry-after", str(max(1, math.ceil(reset - now))).encode())])
            return
        await trio.sleep(self.delay)
        await _json(send, 200, {
            "id": f"msg_{st.ok}", "type": "message", "role": "assistant", "model": "claude-fake",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }, [] if self.hide_headers else limit_headers)


async def _json(send: Callable[[Message], Awaitable[None]], status: int, obj: object,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class FakeShared(FakeProcess):
    """The fake in a subprocess: `start()`, `configure(...)`, `stats()`, `stop()`."""

    name = "shared-limit fake upstream"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.fakeshared", "--port", "0"]

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with self._opener.open(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    def configure(self, **cfg: Any) -> None:
        self._call("POST", "/_fake/config", cfg)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_fake/stats")
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = None
    trio.run(serve_until_signal, SharedLimitFake(), config)


if __name__ == "__main__":
    main()
