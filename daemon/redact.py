"""Keep API keys out of text that came from an upstream.

An upstream's error message is free text, and some services quote the credential they were
sent ("invalid x-api-key: sk-ant-..."). That text is relayed, logged, stored in pool-state.json
and analytics, and shown by the control API, so it is redacted where it enters dario: the
account's own secret exactly, plus anything shaped like an Anthropic key (the `sk-ant-`
prefix of Anthropic Console keys, e.g. `sk-ant-api03-...`), since a proxy in front of several
accounts might quote another one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["REDACTED", "redact", "redact_body", "redact_sse"]

REDACTED = "[redacted]"
KEY_SHAPE = re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}")
_KEY_SHAPE_BYTES = re.compile(rb"sk-ant-[A-Za-z0-9_-]{8,}")

Secrets = Iterable["str | None"]


def _usable(secrets: Secrets) -> list[str]:
    # Longest first, so a secret that contains another is removed whole.
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def redact(text: str, secrets: Secrets = ()) -> str:
    """`text` without the given secrets and without anything shaped like an Anthropic key."""
    for secret in _usable(secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "sk-ant-" in text:
        text = KEY_SHAPE.sub(REDACTED, text)
    return text


def _needs_redaction(data: bytes, secrets: list[str]) -> bool:
    return b"sk-ant-" in data or any(s.encode() in data for s in secrets)


def _redact_json(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(k, secrets): _redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v, secrets) for v in value]
    return value


def redact_body(body: bytes, secrets: Secrets = ()) -> bytes:
    """An upstream answer body with secrets redacted. A JSON body stays valid JSON (only its
    strings change); any other body is redacted as text. Unchanged (same object) when clean."""
    usable = _usable(secrets)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        if not _needs_redaction(body, usable):
            return body
        return redact(body.decode("utf-8", "replace"), usable).encode()
    # Parsed first: a JSON string may spell the key with \u escapes.
    cleaned = _redact_json(parsed, usable)
    return body if cleaned == parsed else orjson.dumps(cleaned)


def redact_sse(block: bytes, secrets: Secrets = ()) -> bytes:
    """One or more complete SSE events with secrets redacted from their `data:` lines
    (each a JSON document on the Messages API), keeping the event framing intact.
    Unchanged (same object) when no secret, key shape or JSON escape appears in it."""
    usable = _usable(secrets)
    if not _needs_redaction(block, usable) and b"\\u" not in block:
        return block
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data:"):
            payload = line[5:]
            lead = b" " if payload.startswith(b" ") else b""
            eol = b"\r" if payload.endswith(b"\r") else b""
            core = payload[len(lead): len(payload) - len(eol)]
            lines[i] = b"data:" + lead + redact_body(core, usable) + eol
        elif _needs_redaction(line, usable):
            lines[i] = redact(line.decode("utf-8", "replace"), usable).encode()
    return b"\n".join(lines)
