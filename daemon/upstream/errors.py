"""Upstream error bodies, parsed once.

Anthropic's error shape is `{"type": "error", "error": {"type": ..., "message": ...}}`
(https://docs.anthropic.com/en/api/errors). A monthly spend limit is a 429 `rate_limit_error`
whose `error.details.error_code` is `enforced_spend_limit_reached`; unlike an ordinary rate
limit it does not pass with the window, so it must not be retried. That field is the one
spend-limit rule: the word "spend" in a message means nothing.

Endpoints that speak the Messages API through a cloud wrap the same error differently: Vertex
can wrap the body in an array and mark quota errors with `status: RESOURCE_EXHAUSTED`
(https://cloud.google.com/apis/design/errors), Bedrock answers `{"message": ...}`
(https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from dario.daemon.errors import ANTHROPIC_STATUS, anthropic_type_for_status

SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
MAX_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class UpstreamErrorInfo:
    """What an upstream error body says, read once."""

    type: str  # an Anthropic error type: the body's own when it is a known one, else derived from the status
    message: str  # never empty; capped at MAX_MESSAGE characters
    spend_limit: bool  # error.details.error_code == "enforced_spend_limit_reached"
    declared_type: str | None  # error.type exactly as the body gave it (for analytics), if a string


def parse_error(status: int, body: bytes) -> UpstreamErrorInfo:
    """Read an upstream error body (an HTTP error answer or an in-stream `error` event's data).

    Never raises, whatever the body holds.
    """
    data = _load(body)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Vertex sometimes wraps the error in an array
    declared: str | None = None
    etype: str | None = None
    message: str | None = None
    spend = False
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            t, m = err.get("type"), err.get("message")
            if isinstance(t, str):
                declared = t
                if t in ANTHROPIC_STATUS:
                    etype = t
            if isinstance(m, str):
                message = m
            if err.get("status") == "RESOURCE_EXHAUSTED":
                etype = "rate_limit_error"
            details = err.get("details")
            spend = isinstance(details, dict) and details.get("error_code") == SPEND_LIMIT_CODE
        elif isinstance(err, str):
            message = err
        if message is None and isinstance(data.get("message"), str):
            message = data["message"]  # Bedrock
    if etype is None:
        etype = anthropic_type_for_status(status)
    if message is None or not message:
        text = body.decode("utf-8", "replace").strip() if body else ""
        message = text if text and len(text) <= MAX_MESSAGE and data is None else f"Upstream error (HTTP {status})"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "…"
    return UpstreamErrorInfo(type=etype, message=message, spend_limit=spend, declared_type=declared)


def _load(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
