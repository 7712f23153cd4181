"""Redaction of keys from upstream text, and the pool's persisted reasons."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dario.daemon.accounts.service import _upstream_message
from dario.daemon.redact import REDACTED, redact, redact_body, redact_sse
from dario.daemon.routing.pool import Pool

SHAPED = "sk-ant-api03-AbC_dEf-0123456789"
PLAIN = "vendor-secret-42"


@pytest.mark.parametrize(
    ("text", "secrets", "want"),
    [
        (f"invalid x-api-key: {SHAPED}", (), f"invalid x-api-key: {REDACTED}"),
        (f"invalid x-api-key: {PLAIN}", (PLAIN,), f"invalid x-api-key: {REDACTED}"),
        (f"{PLAIN}{PLAIN} and {SHAPED}.", (PLAIN, None), f"{REDACTED}{REDACTED} and {REDACTED}."),
        ("key sk-ant-api03-x", (), "key sk-ant-api03-x"),  # too short to be a key
        ("nothing to see", (None, ""), "nothing to see"),
        # The longer of two overlapping secrets goes whole.
        (f"got {PLAIN}-extra", (PLAIN, PLAIN + "-extra"), f"got {REDACTED}"),
    ],
)
def test_redact(text: str, secrets: tuple[str | None, ...], want: str) -> None:
    assert redact(text, secrets) == want


def test_redact_body_keeps_json_valid_and_clean_bodies_untouched() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "authentication_error",
                                                    "message": f"invalid x-api-key: {PLAIN}"}})
    out = redact_body(body, (PLAIN,))
    assert orjson.loads(out)["error"] == {"type": "authentication_error", "message": f"invalid x-api-key: {REDACTED}"}
    clean = b'{"type": "error",  "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    assert redact_body(clean, (PLAIN,)) is clean
    # A JSON string may spell the key with escapes; it is found after parsing.
    escaped = b'{"error": {"message": "\\u0073k-ant-api03-AbC_dEf-0123456789"}}'
    assert SHAPED not in redact_body(escaped).decode()
    assert redact_body(b"<html>" + PLAIN.encode() + b"</html>", (PLAIN,)) == f"<html>{REDACTED}</html>".encode()


def test_redact_sse_keeps_framing() -> None:
    data = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": f"no: {SHAPED}"}})
    block = b"event: error\r\ndata: " + data + b"\r\n\r\n"
    out = redact_sse(block)
    assert SHAPED.encode() not in out
    assert out.startswith(b"event: error\r\ndata: {") and out.endswith(b"}\r\n\r\n")
    assert orjson.loads(out.split(b"data: ")[1].strip())["error"]["message"] == f"no: {REDACTED}"


def test_login_check_message_is_redacted() -> None:
    body = orjson.dumps({"error": {"type": "authentication_error", "message": f"bad key {PLAIN} / {SHAPED}"}})
    assert _upstream_message(body, PLAIN) == f"bad key {REDACTED} / {REDACTED}"


def _pool_with(secret: str) -> Any:
    pool = Pool()
    pool.upsert("work", "anthropic", "https://api.anthropic.com", 0.0, secret, True)
    return pool


def test_pool_reasons_and_saved_state_hold_no_key() -> None:
    pool = _pool_with(PLAIN)
    acc = pool.accounts["work"]
    pool.observe_transient(acc, f"upstream 529: overloaded for {PLAIN}")
    assert acc.block_reason == f"upstream 529: overloaded for {REDACTED}"
    pool.observe_auth_failure(acc, 401, f"invalid x-api-key: {PLAIN}")
    assert acc.needs_login == f"upstream answered 401: invalid x-api-key: {REDACTED}"
    assert PLAIN not in orjson.dumps(pool.export_state()).decode()


def test_pool_state_from_an_older_dariod_is_cleaned_on_load() -> None:
    pool = _pool_with(PLAIN)
    pool.import_state({"version": 1, "accounts": {"work": {
        "block_kind": "cooling", "block_reason": f"upstream 500: {SHAPED}", "block_until": 4e9,
        "failures": 1, "needs_login": f"upstream answered 401: {PLAIN}", "windows": {},
    }}})
    acc = pool.accounts["work"]
    assert acc.block_reason == f"upstream 500: {REDACTED}"
    assert acc.needs_login == f"upstream answered 401: {REDACTED}"
    assert REDACTED in str(pool.views()) and PLAIN not in str(pool.views()) and SHAPED not in str(pool.views())


def test_redact_sse_leaves_clean_blocks_alone_and_finds_escaped_keys() -> None:
    clean = b'event: content_block_delta\ndata: {"delta": {"text": "an error happened"}}\n\n'
    assert redact_sse(clean, (PLAIN,)) is clean
    escaped = b'event:error\ndata: {"error": {"message": "\\u0073k-ant-api03-AbC_dEf-0123456789"}}\n\n'
    out = redact_sse(escaped)
    assert b"AbC_dEf" not in out and out.startswith(b"event:error\ndata: {")
