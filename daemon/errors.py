"""Error shapes for both dialects, and the one exception the request path raises.

Anthropic: {"type":"error","error":{"type":T,"message":M},"request_id":R}
OpenAI:    {"error":{"message":M,"type":T,"param":P,"code":C}}
"""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic error type → HTTP status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_STATUS_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type_for_status(status: int) -> str:
    return _STATUS_TYPE.get(status, "invalid_request_error" if status < 500 else "api_error")


class DarioError(Exception):
    """An error dario itself answers with, in whichever dialect the client speaks.

    `type` is the Anthropic error type; the OpenAI side maps it (see openai_error_body).
    The message is shown to the client, so it must never contain a secret.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        openai_code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or []
        self.openai_code = openai_code
        self.param = param


def anthropic_error_body(type: str, message: str, request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


# Anthropic error type → (OpenAI status, type, code) (https://platform.openai.com/docs/guides/error-codes).
_OPENAI_MAP: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (None, "invalid_request_error", None),
    "authentication_error": (401, "authentication_error", "invalid_api_key"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "billing_error": (429, "insufficient_quota", "insufficient_quota"),
    "api_error": (None, "server_error", None),
    "overloaded_error": (503, "server_error", "overloaded"),
    "timeout_error": (504, "timeout_error", None),
}


def openai_error_status_and_body(
    status: int,
    anthropic_type: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> tuple[int, bytes]:
    """Map an Anthropic-typed error to the OpenAI error shape and status."""
    mapped_status, oa_type, oa_code = _OPENAI_MAP.get(anthropic_type, (None, "api_error", None))
    out_status = mapped_status if mapped_status is not None else status
    if status == 529:
        out_status = 503
    body = {
        "error": {
            "message": message,
            "type": oa_type,
            "param": param,
            "code": code if code is not None else oa_code,
        }
    }
    return out_status, orjson.dumps(body)
