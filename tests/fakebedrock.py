"""A fake Amazon Bedrock runtime (bedrock-runtime) serving Claude: a real HTTP server for tests.

Run it:   python -m tests.fakebedrock [--port 0] [--cred AKID:SECRET[:TOKEN] ...] [--api-key KEY ...]
It prints one line, ``READY http://HOST:PORT``, once bound, and serves until SIGTERM/SIGINT.

It speaks the wire format of the AWS API reference, not dario's idea of it:

- ``POST /model/{modelId}/invoke``, ``/invoke-with-response-stream`` and ``/count-tokens``
  (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_Operations_Amazon_Bedrock_Runtime.html).
- Every request is authenticated: a SigV4 signature, recomputed here with botocore's signer from
  the received method, path, signed headers and body (an unknown access key → 403
  ``UnrecognizedClientException``, a wrong signature → 403 ``InvalidSignatureException``), or
  ``Authorization: Bearer`` with a Bedrock API key.
- The InvokeModel body must be Bedrock's Anthropic body: ``anthropic_version: bedrock-2023-05-31``,
  no ``model``, no ``stream`` (else 400 ``ValidationException``).
- Streams are AWS event-stream frames (``application/vnd.amazon.eventstream``): each ``chunk``
  event holds ``{"bytes": base64(Anthropic event JSON)}``; the last one carries
  ``amazon-bedrock-invocationMetrics``.
- Errors: the type in ``x-amzn-ErrorType``, the body ``{"message": ...}``.

Faults are queued with ``POST /_fake/script {"actions": [...]}``; each API request takes the next:
``{"error": "ThrottlingException", "status": 429, "message": "..."}`` answers with that error;
``{"exception": "throttlingException", "after": N}`` (streams) sends N chunk events, then an
exception frame; ``{"omit_delta_usage": true}`` sends a ``message_delta`` without usage (the counts
are then only in the invocation metrics). ``GET /_fake/requests`` returns what was received,
``POST /_fake/reset`` clears scripts and log.

Replies: the text ``Hello from Bedrock.`` (or, with ``[[echo]]`` in the last user text, that text);
with ``tools`` in the body and ``[[tool]]`` in the text, a ``tool_use`` of the first tool; with
``thinking`` enabled, a thinking block first.

Independent of dario's code (it imports none of it); its own tests drive it with boto3.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import re
import struct
import sys
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakeserve import FakeProcess, answer_lifespan, serve_until_signal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

VERSION = "bedrock-2023-05-31"
REPLY_TEXT = "Hello from Bedrock."
_BAD_TOKEN = "The security token included in the request is invalid."
CLOCK_SKEW = 300  # seconds; SigV4 requests older or newer than this are refused, as AWS does
_MODEL_ID = re.compile(r"^(?:(us|eu|apac|global)\.)?anthropic\.claude-[a-z0-9.-]+-v\d+:\d+$")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")
_PATH = re.compile(r"^/model/([^/]+)/(invoke|invoke-with-response-stream|count-tokens)$")


class Fault(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


# -- event-stream encoding (https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html) --


def frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude, CRC, string headers (type 7), payload, message CRC."""
    hb = b"".join(
        bytes([len(n)]) + n.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode() for n, v in headers
    )
    prelude = struct.pack(">II", 16 + len(hb) + len(payload), len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + hb + payload
    return message + struct.pack(">I", zlib.crc32(message))


def chunk_frame(event: dict[str, Any]) -> bytes:
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode()})
    return frame([(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")], payload)


def exception_frame(name: str, message: str) -> bytes:
    return frame([(":exception-type", name), (":content-type", "application/json"), (":message-type", "exception")],
                 orjson.dumps({"message": message}))


# -- the answer -----------------------------------------------------------------------------------


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(b.get("text", "") for b in c if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _input_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")])) // 4)


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    text = _last_user_text(body["messages"])
    blocks: list[dict[str, Any]] = []
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        blocks.append({"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"})
    tools = body.get("tools")
    if "[[tool]]" in text and isinstance(tools, list) and tools:
        blocks.append({"type": "tool_use", "id": "toolu_bdrk_" + uuid.uuid4().hex[:20],
                       "name": tools[0].get("name", "tool"), "input": {}})
    else:
        blocks.append({"type": "text", "text": text.replace("[[echo]]", "").strip() if "[[echo]]" in text
                       else REPLY_TEXT})
    return blocks


def _message(model: str, body: dict[str, Any], blocks: list[dict[str, Any]], output: int) -> dict[str, Any]:
    stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
    return {"id": "msg_bdrk_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": model.split(".", 2)[-1] if model.count(".") >= 2 else model.split(".", 1)[-1],
            "content": blocks, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": _input_tokens(body), "output_tokens": output}}


def _events(message: dict[str, Any], omit_delta_usage: bool) -> list[dict[str, Any]]:
    usage = message["usage"]
    first_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    start = dict(message, content=[], stop_reason=None, usage=first_usage)
    out: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            words = block["text"].split(" ")
            for j, w in enumerate(words):
                piece = w if j == len(words) - 1 else w + " "
                out.append({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}})
        elif block["type"] == "thinking":
            out.append({"type": "content_block_start", "index": i,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            out.append({"type": "content_block_delta", "index": i,
                        "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
            out.append({"type": "content_block_delta", "index": i,
                        "delta": {"type": "signature_delta", "signature": block["signature"]}})
        else:
            out.append({"type": "content_block_start", "index": i, "content_block": dict(block, input={})})
            out.append({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}})
        out.append({"type": "content_block_stop", "index": i})
    delta: dict[str, Any] = {"type": "message_delta",
                             "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}}
    if not omit_delta_usage:
        delta["usage"] = {"output_tokens": usage["output_tokens"]}
    out.append(delta)
    out.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": usage["input_tokens"], "outputTokenCount": usage["output_tokens"],
        "invocationLatency": 42, "firstByteLatency": 7}})
    return out


def _validate(body: Any, count: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Fault(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
    if body.get("anthropic_version") != VERSION:
        raise Fault(400, "ValidationException", "Malformed input request: #: required key [anthropic_version] "
                    "not found or invalid, please reformat your input and try again.")
    for key in ("model", "stream"):
        if key in body:
            raise Fault(400, "ValidationException",
                        f"Malformed input request: #: extraneous key [{key}] is not permitted")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise Fault(400, "ValidationException", "The model returned the following errors: messages: Field required")
    if not count and not isinstance(body.get("max_tokens"), int):
        raise Fault(400, "ValidationException", "The model returned the following errors: max_tokens: Field required")
    betas = body.get("anthropic_beta")
    if betas is not None and not (isinstance(betas, list) and all(isinstance(b, str) for b in betas)):
        raise Fault(400, "ValidationException", "anthropic_beta must be a list of strings")
    return body


# -- the server ----------------------------------------------------------------------------------


class App:
    def __init__(self, creds: dict[str, tuple[str, str | None]], api_keys: set[str], region: str) -> None:
        self.creds = creds  # access key id → (secret, session token)
        self.api_keys = api_keys
        self.region = region
        self.scripts: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if path.startswith("/_fake/"):
            await self._admin(scope["method"], path, body, send)
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            await self._api(scope, path, headers, body, send)
        except Fault as f:
            await _respond(send, f.status, orjson.dumps({"message": f.message}),
                           [("x-amzn-errortype", f"{f.name}:http://internal.amazon.com/coral/com.amazon.bedrock/")])

    async def _api(self, scope: Scope, path: str, headers: list[tuple[str, str]], body: bytes, send: Send) -> None:
        hmap = dict(headers)
        self.log.append({"method": scope["method"], "path": path, "query": scope.get("query_string", b"").decode(),
                         "headers": hmap, "body": body.decode("utf-8", "replace")})
        self._authenticate(scope, path, headers, body)
        match = _PATH.match(path)
        if scope["method"] != "POST" or match is None:
            raise Fault(404, "UnknownOperationException", "Unknown operation")
        model, op = urllib.parse.unquote(match.group(1)), match.group(2)
        if not _MODEL_ID.match(model):
            raise Fault(400, "ValidationException", "The provided model identifier is invalid.")
        action = self.scripts.pop(0) if self.scripts else {}
        if "error" in action:
            raise Fault(int(action.get("status", 400)), action["error"], action.get("message", action["error"]))
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Fault(400, "ValidationException", "Malformed input request") from None
        if op == "count-tokens":
            await self._count(model, parsed, send)
            return
        req = _validate(parsed, count=False)
        blocks = _blocks(req)
        message = _message(model, req, blocks, output=5 * len(blocks))
        if op == "invoke":
            await _respond(send, 200, orjson.dumps(message), [
                ("x-amzn-bedrock-input-token-count", str(message["usage"]["input_tokens"])),
                ("x-amzn-bedrock-output-token-count", str(message["usage"]["output_tokens"]))])
            return
        await self._stream(send, _events(message, bool(action.get("omit_delta_usage"))), action)

    async def _count(self, model: str, parsed: Any, send: Send) -> None:
        if _MODEL_ID.match(model) and model.split(".", 1)[0] in ("us", "eu", "apac", "global"):
            raise Fault(400, "ValidationException", "The provided model doesn't support counting tokens.")
        inner = parsed.get("input", {}).get("invokeModel", {}).get("body") if isinstance(parsed, dict) else None
        try:
            body = orjson.loads(base64.b64decode(inner, validate=True)) if isinstance(inner, str) else None
        except (ValueError, orjson.JSONDecodeError):
            body = None
        if body is None:
            raise Fault(400, "ValidationException", "input.invokeModel.body must be a base64 InvokeModel body")
        req = _validate(body, count=True)
        await _respond(send, 200, orjson.dumps({"inputTokens": _input_tokens(req)}), [])

    async def _stream(self, send: Send, events: list[dict[str, Any]], action: dict[str, Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/vnd.amazon.eventstream"),
            (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
            (b"x-amzn-bedrock-content-type", b"application/json")]})
        after = int(action.get("after", len(events))) if "exception" in action else len(events)
        for event in events[:after]:
            await send({"type": "http.response.body", "body": chunk_frame(event), "more_body": True})
        if "exception" in action:
            msg = action.get("message", f"{action['exception']} raised mid-stream")
            await send({"type": "http.response.body", "body": exception_frame(action["exception"], msg),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _authenticate(self, scope: Scope, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        hmap = dict(headers)
        auth = hmap.get("authorization", "")
        if auth.startswith("Bearer "):
            if not any(hmac.compare_digest(auth[7:].encode(), k.encode()) for k in self.api_keys):
                raise Fault(403, "UnrecognizedClientException", _BAD_TOKEN)
            return
        m = _AUTH.match(auth)
        if m is None:
            raise Fault(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        akid, day, region, service, signed, signature = m.groups()
        if akid not in self.creds:
            raise Fault(403, "UnrecognizedClientException", _BAD_TOKEN)
        secret, token = self.creds[akid]
        if token is not None and hmap.get("x-amz-security-token") != token:
            raise Fault(403, "UnrecognizedClientException", _BAD_TOKEN)
        if region != self.region or service != "bedrock":
            raise Fault(403, "InvalidSignatureException", f"Credential should be scoped to a valid region/service "
                        f"({self.region}/bedrock), not {region}/{service}.")
        amz_date = hmap.get("x-amz-date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise Fault(403, "IncompleteSignatureException", "x-amz-date is missing or malformed") from None
        if abs(when - time.time()) > CLOCK_SKEW or amz_date[:8] != day:
            raise Fault(403, "InvalidSignatureException", "Signature expired or not yet current")
        names = signed.split(";")
        if "host" not in names:
            raise Fault(403, "InvalidSignatureException", "The host header must be signed")
        subset = {n: hmap.get(n, "") for n in names}
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"http://{hmap.get('host', '')}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=scope["method"], url=url, data=body, headers=subset)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(akid, secret, token), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected, signature):
            raise Fault(403, "InvalidSignatureException", "The request signature we calculated does not match the "
                        "signature you provided. Check your AWS Secret Access Key and signing method.")

    async def _admin(self, method: str, path: str, raw: bytes, send: Send) -> None:
        status, out = 200, b'{"ok":true}'
        if (method, path) == ("POST", "/_fake/script"):
            actions = orjson.loads(raw).get("actions")
            if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
                status, out = 400, b'{"error":"actions must be a list of objects"}'
            else:
                self.scripts.extend(actions)
        elif (method, path) == ("GET", "/_fake/requests"):
            out = orjson.dumps(self.log)
        elif (method, path) == ("POST", "/_fake/reset"):
            self.scripts.clear()
            self.log.clear()
        else:
            status, out = 404, b'{"error":"no such admin endpoint"}'
        await _respond(send, status, out, [])


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[str, str]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"x-amzn-requestid", str(uuid.uuid4()).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve(app: App, host: str, port: int) -> None:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    await serve_until_signal(app, config)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fakebedrock", description="Fake Amazon Bedrock runtime.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--cred", action="append", default=[], help="AKID:SECRET[:SESSION_TOKEN] (repeatable)")
    p.add_argument("--api-key", action="append", default=[], help="accepted Bedrock API key (repeatable)")
    args = p.parse_args(argv)
    creds: dict[str, tuple[str, str | None]] = {}
    for spec in args.cred:
        akid, secret, *token = spec.split(":", 2)
        creds[akid] = (secret, token[0] if token else None)
    trio.run(_serve, App(creds, set(args.api_key), args.region), args.host, args.port)


# -- test-side handle -----------------------------------------------------------------------------


class FakeBedrock(FakeProcess):
    """Runs the fake in a subprocess; drives its admin API with urllib (no proxy: loopback only)."""

    name = "fake bedrock"

    def __init__(self, creds: dict[str, str] | None = None, api_keys: list[str] | None = None,
                 region: str = "us-east-1", session_tokens: dict[str, str] | None = None) -> None:
        super().__init__()
        self.creds = dict(creds or {})
        self.session_tokens = dict(session_tokens or {})
        self.api_keys = list(api_keys or [])
        self.region = region

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.fakebedrock", "--port", "0", "--region", self.region]
        for akid, secret in self.creds.items():
            token = self.session_tokens.get(akid)
            cmd += ["--cred", f"{akid}:{secret}" + (f":{token}" if token else "")]
        for key in self.api_keys:
            cmd += ["--api-key", key]
        return cmd

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with self._opener.open(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    def script(self, *actions: dict[str, Any]) -> None:
        self._call("POST", "/_fake/script", {"actions": list(actions)})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests")
        return result

    def clear(self) -> None:
        self._call("POST", "/_fake/reset", {})


def fixture(name: str = "fake_bedrock", scope: str = "module", creds: dict[str, str] | None = None,
            api_keys: list[str] | None = None, region: str = "us-east-1") -> Any:
    """A pytest fixture yielding a started FakeBedrock; assign it to a module-level name."""
    import pytest  # only the test side needs pytest

    def _fixture() -> Any:
        with FakeBedrock(creds, api_keys, region) as fake:
            yield fake

    return pytest.fixture(_fixture, scope=scope, name=name)  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
