"""Upstream (Anthropic-shaped) error responses (https://docs.anthropic.com/en/api/errors) → OpenAI error
responses (https://platform.openai.com/docs/guides/error-codes)."""

from __future__ import annotations

from dario.daemon.errors import openai_error_status_and_body
from dario.daemon.upstream.errors import parse_error


def parse_anthropic_error(status: int, body: bytes) -> tuple[str, str, bool]:
    """→ (anthropic error type, message, spend_limit). Never raises, whatever the body holds."""
    info = parse_error(status, body)
    return info.type, info.message, info.spend_limit


def openai_error_from_anthropic(status: int, body: bytes) -> tuple[int, bytes]:
    """Map an upstream Anthropic error response to (OpenAI status, OpenAI error body)."""
    etype, message, spend = parse_anthropic_error(status, body)
    if spend:
        # A monthly spend limit is a 429 that must not be retried: OpenAI's insufficient_quota says so.
        return openai_error_status_and_body(429, "billing_error", message)
    return openai_error_status_and_body(status, etype, message)
