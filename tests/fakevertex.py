"""A fake Google Vertex AI for Claude: a real HTTP server for dario's tests.

Run it:   python -m tests.fakevertex [--host 127.0.0.1] [--port 0]
It prints ``READY http://HOST:PORT`` once bound and serves until SIGTERM/SIGINT.

What it serves, as Google documents it:

``POST /token``
    The OAuth 2 token endpoint a service account's ``token_uri`` names: the JWT-bearer grant
    (RFC 7523). The assertion's RS256 signature is verified with the public key registered for its
    ``iss`` (``POST /_fake/keys {"client_email", "public_key_pem"}``), and ``aud``, ``exp`` and
    ``scope`` are checked; the answer is ``{"access_token", "expires_in", "token_type": "Bearer"}``
    (``expires_in`` set with ``POST /_fake/config {"expires_in": S}``).
``POST /v1/projects/P/locations/L/publishers/anthropic/models/MODEL@VERSION:rawPredict``
    (and ``:streamRawPredict``) An Anthropic message (or Anthropic SSE), for a bearer token this
    server issued and has not expired (else 401 ``UNAUTHENTICATED``, Google's shape). The body
    must carry ``anthropic_version: vertex-2023-10-16`` and no ``model``. Directives in the last
    user text: ``[[tool]]`` (a tool_use block for the first tool), ``[[thinking]]`` (a thinking
    block when the body enables thinking).
``POST …/publishers/anthropic/models/count-tokens:rawPredict``
    ``{"input_tokens": N}``; the body keeps its ``model``.

Faults are queued with ``POST /_fake/script {"actions": [...]}``; each model call takes one:
``{"google": "RESOURCE_EXHAUSTED", "code": 429}`` (a Google-shaped error; ``"array": true`` wraps
it in a JSON array), ``{"overloaded": true}`` (Anthropic's 529, passed through as Vertex does),
``{"expire_tokens": true}`` (every token issued so far stops working, this request included);
``"echo_auth": true`` beside ``google`` quotes the request's Authorization header in the message.
``GET /_fake/requests`` returns what was received (``authorization`` included: test tokens only),
``GET /_fake/tokens`` how many tokens were issued.

Independent of dario's code, so that the two cannot share a bug.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakeserve import FakeProcess, answer_lifespan, serve_until_signal

VERTEX_VERSION = "vertex-2023-10-16"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_MODEL_PATH = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/anthropic/models/"
    r"(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)$"
)
_VERTEX_ID = re.compile(r"^claude-[a-z0-9.-]+@\d{8}$")
GOOGLE_CODES = {"RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "INTERNAL": 500, "UNAUTHENTICATED": 401,
                "PERMISSION_DENIED": 403, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404}

Scope = dict[str, Any]


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def google_error(status: str, message: str, code: int | None = None) -> dict[str, Any]:
    return {"error": {"code": code or GOOGLE_CODES.get(status, 400), "message": message, "status": status}}


def anthropic_error(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


class State:
    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}  # client_email -> public key
        self.tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self.expires_in = 3600
        self.issued = 0
        self.script: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.n = 0


class App:
    def __init__(self) -> None:
        self.s = State()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        if path.startswith("/_fake/"):
            status, body = self._admin(method, path, raw)
            await _json(send, status, body)
            return
        self.s.n += 1
        entry = {"n": self.s.n, "method": method, "path": path, "headers": headers, "time": time.time(),
                 "body": _loads(raw)}
        self.s.log.append(entry)
        if path == "/token" and method == "POST":
            status, body = self._token(raw)
            entry["status"] = status
            await _json(send, status, body)
            return
        await self._model_call(path, method, headers, raw, entry, send)

    # -- OAuth ---------------------------------------------------------------------------------
    def _token(self, raw: bytes) -> tuple[int, Any]:
        form = urllib.parse.parse_qs(raw.decode("latin-1"))
        if form.get("grant_type") != [JWT_GRANT] or len(form.get("assertion", [])) != 1:
            return 400, {"error": "unsupported_grant_type", "error_description": "expected a JWT-bearer grant"}
        why = self._check_assertion(form["assertion"][0])
        if why is not None:
            return 400, {"error": "invalid_grant", "error_description": why}
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.s.tokens[token] = time.time() + self.s.expires_in
        self.s.issued += 1
        return 200, {"access_token": token, "expires_in": self.s.expires_in, "token_type": "Bearer"}

    def _check_assertion(self, jwt: str) -> str | None:
        try:
            head_b64, claims_b64, sig_b64 = jwt.split(".")
            head, claims = orjson.loads(_b64url(head_b64)), orjson.loads(_b64url(claims_b64))
            signature = _b64url(sig_b64)
        except (ValueError, orjson.JSONDecodeError):
            return "Invalid JWT"
        if not isinstance(head, dict) or head.get("alg") != "RS256" or not isinstance(claims, dict):
            return "Invalid JWT header"
        key = self.s.keys.get(claims.get("iss", ""))
        if key is None:
            return "Invalid JWT: unknown issuer"
        try:
            key.verify(signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if not isinstance(claims.get("exp"), int) or claims["exp"] < now or claims.get("iat", now + 1) > now + 60:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        if not str(claims.get("aud", "")).endswith("/token"):
            return "Invalid JWT: audience"
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: scope"
        return None

    # -- the model -----------------------------------------------------------------------------
    async def _model_call(self, path: str, method: str, headers: dict[str, str], raw: bytes,
                          entry: dict[str, Any], send: Any) -> None:
        m = _MODEL_PATH.match(path)
        if method != "POST" or m is None:
            entry["status"] = 404
            await _json(send, 404, google_error("NOT_FOUND", f"no such endpoint {method} {path}"))
            return
        action = self.s.script.pop(0) if self.s.script else {}
        if action.get("expire_tokens"):
            self.s.tokens.clear()
        status, answer, stream = self._answer(m, headers, raw, action)
        entry["status"] = status
        if stream is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
            for event in stream:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await _json(send, status, answer)

    def _answer(self, m: re.Match[str], headers: dict[str, str], raw: bytes,
                action: dict[str, Any]) -> tuple[int, Any, list[bytes] | None]:
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if self.s.tokens.get(token, 0) < time.time():
            return 401, google_error("UNAUTHENTICATED", "Request had invalid authentication credentials. "
                                     "Expected OAuth 2 access token."), None
        if "google" in action:
            message = action.get("message", "scripted")
            if action.get("echo_auth"):  # a hostile or careless server quoting the request back
                message += f" (request had {auth})"
            err = google_error(action["google"], message, action.get("code"))
            return err["error"]["code"], [err] if action.get("array") else err, None
        if action.get("overloaded"):
            return 529, anthropic_error("overloaded_error", "Overloaded"), None
        body = _loads(raw)
        if not isinstance(body, dict):
            return 400, google_error("INVALID_ARGUMENT", "Invalid JSON payload received."), None
        if body.get("anthropic_version") != VERTEX_VERSION:
            return 400, anthropic_error("invalid_request_error", "anthropic_version: vertex-2023-10-16 required"), None
        model = m["model"]
        if model == "count-tokens":
            if m["method"] != "rawPredict" or not isinstance(body.get("model"), str):
                return 400, anthropic_error("invalid_request_error", "model: Field required"), None
            if not isinstance(body.get("messages"), list):
                return 400, anthropic_error("invalid_request_error", "messages: Field required"), None
            return 200, {"input_tokens": max(1, len(orjson.dumps(body["messages"])) // 4)}, None
        if "model" in body:
            return 400, anthropic_error("invalid_request_error", "model: Extra inputs are not permitted"), None
        if not _VERTEX_ID.match(model):
            return 404, google_error("NOT_FOUND", f"Publisher Model `{m['project']}/{model}` not found."), None
        if not isinstance(body.get("messages"), list) or not isinstance(body.get("max_tokens"), int):
            return 400, anthropic_error("invalid_request_error", "messages and max_tokens are required"), None
        wants_stream = body.get("stream") is True
        if wants_stream != (m["method"] == "streamRawPredict"):
            return 400, google_error("INVALID_ARGUMENT", "stream must match the method"), None
        message = _message(model.split("@")[0], body)
        if wants_stream:
            return 200, None, _events(message)
        return 200, message, None

    # -- admin ---------------------------------------------------------------------------------
    def _admin(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        s = self.s
        body = _loads(raw) if raw else {}
        if (method, path) == ("POST", "/_fake/keys"):
            s.keys[body["client_email"]] = serialization.load_pem_public_key(body["public_key_pem"].encode())
            return 200, {"ok": True}
        if (method, path) == ("POST", "/_fake/config"):
            s.expires_in = int(body["expires_in"])
            return 200, {"ok": True}
        if (method, path) == ("POST", "/_fake/script"):
            s.script.extend(body["actions"])
            return 200, {"ok": True}
        if (method, path) == ("GET", "/_fake/requests"):
            return 200, s.log
        if (method, path) == ("GET", "/_fake/tokens"):
            return 200, {"issued": s.issued}
        if (method, path) == ("POST", "/_fake/clear"):
            s.log.clear()
            s.script.clear()
            return 200, {"ok": True}
        return 404, {"error": f"no admin endpoint {method} {path}"}


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


async def _json(send: Any, status: int, payload: Any) -> None:
    out = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=UTF-8"),
                            (b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


def _last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _message(model: str, body: dict[str, Any]) -> dict[str, Any]:
    text = _last_user_text(body["messages"])
    content: list[dict[str, Any]] = []
    thinking = body.get("thinking")
    if "[[thinking]]" in text and isinstance(thinking, dict) and thinking.get("type") == "enabled":
        content.append({"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"})
    stop = "end_turn"
    tools = body.get("tools")
    if "[[tool]]" in text and isinstance(tools, list) and tools:
        content.append({"type": "tool_use", "id": "toolu_vrtx_01", "name": tools[0]["name"], "input": {"q": "x"}})
        stop = "tool_use"
    else:
        content.append({"type": "text", "text": "Hello from Vertex."})
    return {"id": "msg_vrtx_" + secrets.token_hex(8), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": max(1, len(text) // 4), "output_tokens": 5}}


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _events(message: dict[str, Any]) -> list[bytes]:
    start = dict(message, content=[], stop_reason=None, usage={**message["usage"], "output_tokens": 1})
    out = [_sse({"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append(_sse({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))
            out.append(_sse({"type": "content_block_delta", "index": i,
                             "delta": {"type": "text_delta", "text": block["text"]}}))
        elif block["type"] == "thinking":
            out.append(_sse({"type": "content_block_start", "index": i,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
            out.append(_sse({"type": "content_block_delta", "index": i,
                             "delta": {"type": "thinking_delta", "thinking": block["thinking"]}}))
            out.append(_sse({"type": "content_block_delta", "index": i,
                             "delta": {"type": "signature_delta", "signature": block["signature"]}}))
        else:
            out.append(_sse({"type": "content_block_start", "index": i,
                             "content_block": dict(block, input={})}))
            partial = orjson.dumps(block["input"]).decode()
            out.append(_sse({"type": "content_block_delta", "index": i,
                             "delta": {"type": "input_json_delta", "partial_json": partial}}))
        out.append(_sse({"type": "content_block_stop", "index": i}))
    out.append(_sse({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    out.append(_sse({"type": "message_stop"}))
    return out


# ---------------------------------------------------------------------------------------------
# Entry point and test-side handle
# ---------------------------------------------------------------------------------------------


async def _serve(app: App, host: str, port: int) -> None:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 75.0
    await serve_until_signal(app, config)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fakevertex", description="Fake Vertex AI for Claude.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    trio.run(_serve, App(), args.host, args.port)


class FakeVertex(FakeProcess):
    """Runs the fake in a subprocess and drives its admin API (synchronously, via urllib)."""

    name = "fake vertex"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.fakevertex", "--host", "127.0.0.1", "--port", "0"]

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with self._opener.open(req, timeout=10) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"fake vertex admin {method} {path}: {e.code} {e.read().decode()}") from None

    def service_account(self, directory: Path, email: str = "dario-test@proj.iam.gserviceaccount.com") -> Path:
        """A new RSA key pair: the fake learns the public half; returns a service-account JSON file."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self._call("POST", "/_fake/keys", {"client_email": email, "public_key_pem": public.decode()})
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        info = {"type": "service_account", "project_id": "proj", "private_key_id": secrets.token_hex(20),
                "private_key": private.decode(), "client_email": email, "client_id": "1234567890",
                "token_uri": self.url + "/token"}
        path = directory / f"sa-{secrets.token_hex(4)}.json"
        path.write_bytes(orjson.dumps(info))
        os.chmod(path, 0o600)
        return path

    def script(self, *actions: dict[str, Any]) -> None:
        self._call("POST", "/_fake/script", {"actions": list(actions)})

    def set_expires_in(self, seconds: int) -> None:
        self._call("POST", "/_fake/config", {"expires_in": seconds})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests")
        return result

    def tokens_issued(self) -> int:
        return int(self._call("GET", "/_fake/tokens")["issued"])

    def clear(self) -> None:
        self._call("POST", "/_fake/clear", {})


if __name__ == "__main__":
    main()
