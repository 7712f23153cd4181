"""Upstream (Anthropic-shaped) error responses (https://docs.anthropic.com/en/api/errors) → OpenAI error
responses (https://platform.openai.com/docs/guides/error-codes)."""

from __future__ import annotations

from typing import Any

import orjson

from dario.daemon.errors import ANTHROPIC_STATUS, anthropic_type_for_status, openai_error_status_and_body

SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
_MAX_MESSAGE = 1000


def _find_error_code(obj: Any, depth: int = 0) -> bool:
    # The spend-limit marker sits in error.details.error_code; look a little wider so a wrapper
    # (Bedrock/Vertex/proxy) that re-nests the body still counts as a non-retryable quota error.
    if depth > 4:
        return False
    if isinstance(obj, dict):
        if obj.get("error_code") == SPEND_LIMIT_CODE or obj.get("code") == SPEND_LIMIT_CODE:
            return True
        return any(_find_error_code(v, depth + 1) for v in obj.values() if isinstance(v, dict | list))
    if isinstance(obj, list):
        return any(_find_error_code(v, depth + 1) for v in obj[:8])
    return False


def parse_anthropic_error(status: int, body: bytes) -> tuple[str, str, bool]:
    """→ (anthropic error type, message, spend_limit). Never raises, whatever the body holds."""
    try:
        data: Any = orjson.loads(body) if body else None
    except (orjson.JSONDecodeError, TypeError):
        data = None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Vertex sometimes wraps the error in an array.
    etype: str | None = None
    message: str | None = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            t, m = err.get("type"), err.get("message")
            if isinstance(t, str) and t in ANTHROPIC_STATUS:
                etype = t
            if isinstance(m, str):
                message = m
            if err.get("status") == "RESOURCE_EXHAUSTED":  # Google-shaped quota error
                etype = "rate_limit_error"
        elif isinstance(err, str):
            message = err
        if message is None and isinstance(data.get("message"), str):
            message = data["message"]  # Bedrock: {"message": "..."}
    spend = _find_error_code(data) or (SPEND_LIMIT_CODE.encode() in body if body else False)
    if etype is None:
        etype = anthropic_type_for_status(status)
    if message is None:
        text = body.decode("utf-8", "replace").strip() if body else ""
        message = (
            text if text and len(text) <= _MAX_MESSAGE and data is None else f"Upstream error (HTTP {status})"
        )
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    return etype, message, spend


def openai_error_from_anthropic(status: int, body: bytes) -> tuple[int, bytes]:
    """Map an upstream Anthropic error response to (OpenAI status, OpenAI error body)."""
    etype, message, spend = parse_anthropic_error(status, body)
    if spend:
        # A monthly spend limit is a 429 that must not be retried: OpenAI's insufficient_quota says so.
        return openai_error_status_and_body(429, "billing_error", message)
    return openai_error_status_and_body(status, etype, message)
