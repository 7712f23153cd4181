"""The OpenAPI 3.1 description of the public endpoints, served at `GET /openapi.json`.

Written from the protocol (Anthropic Messages, OpenAI Chat Completions), not derived from the
handlers, so a fuzzer driven by it checks dario against the contract rather than against itself.
Request bodies are as strict as the real APIs (so generated "invalid" requests really are invalid);
responses are loose on success and exact on errors: the Anthropic error shape on the Anthropic
paths and dario's own views, the OpenAI shape on `/v1/chat/completions`, either on
`/v1/models/{model_id}` (which dialect answers a 404 depends on the client's headers).

A dario-generated error carries `request-id` (Anthropic) or `x-request-id` (OpenAI); an answer that
came from an upstream account carries `x-dario-account`. The key is optional: only a dario started
with `DARIO_API_KEY` asks for one (it or a client key), as `x-api-key` or `Authorization: Bearer`.
An empty query value counts as an absent one (`allowEmptyValue`). The `text/event-stream` schemas
describe one event ({event, data}), as OpenAPI 3.2's `itemSchema` does and schemathesis reads them.

The document is built once per version and kept; `openapi_json` is its serialised form.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, get_args

import orjson

from dario.daemon.control.api import PoolHealth

Schema = dict[str, Any]

_JSON = "application/json"
_SSE = "text/event-stream"

# -- shared schemas ----------------------------------------------------------------------------

_NONEMPTY = {"type": "string", "minLength": 1}
# A model id travels back in the x-dario-model header, so dario refuses control characters in it.
_MODEL_ID = {**_NONEMPTY, "pattern": "^[^\\u0000-\\u001f\\u007f]+$"}
# A stop sequence must contain something other than whitespace (the API rejects blank ones).
_STOP_SEQUENCE = {"type": "string", "pattern": r"\S"}
_CACHE_CONTROL = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"const": "ephemeral"}, "ttl": {"enum": ["5m", "1h"]}},
    "additionalProperties": False,
}
_IMAGE_MEDIA = {"enum": ["image/jpeg", "image/png", "image/gif", "image/webp"]}
_BASE64 = {"type": "string", "pattern": r"^(?:[A-Za-z0-9+/]{4})+$"}
_HTTP_URL = {"type": "string", "pattern": r"^https?://[a-z0-9]+(?:\.[a-z0-9]+)*(?:/[A-Za-z0-9._~-]*)*$"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], properties: dict[str, Any], *, closed: bool = True) -> Schema:
    out: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        out["additionalProperties"] = False
    return out


def _anthropic_schemas() -> dict[str, Schema]:
    text_block = _object(["type", "text"], {
        "type": {"const": "text"}, "text": _NONEMPTY, "cache_control": _CACHE_CONTROL,
    })
    image_block = _object(["type", "source"], {
        "type": {"const": "image"},
        "source": {"anyOf": [
            _object(["type", "media_type", "data"], {
                "type": {"const": "base64"}, "media_type": _IMAGE_MEDIA, "data": _BASE64,
            }),
            _object(["type", "url"], {"type": {"const": "url"}, "url": _HTTP_URL}),
        ]},
        "cache_control": _CACHE_CONTROL,
    })
    document_block = _object(["type", "source"], {
        "type": {"const": "document"},
        "source": {"anyOf": [
            _object(["type", "media_type", "data"], {
                "type": {"const": "base64"}, "media_type": {"const": "application/pdf"}, "data": _BASE64,
            }),
            _object(["type", "media_type", "data"], {
                "type": {"const": "text"}, "media_type": {"const": "text/plain"}, "data": _NONEMPTY,
            }),
            _object(["type", "url"], {"type": {"const": "url"}, "url": _HTTP_URL}),
        ]},
        "title": {"type": "string"},
        "context": {"type": "string"},
        "cache_control": _CACHE_CONTROL,
    })
    tool_use_block = _object(["type", "id", "name", "input"], {
        "type": {"const": "tool_use"},
        "id": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]+$"},
        "name": _NONEMPTY,
        "input": {"type": "object"},
        "cache_control": _CACHE_CONTROL,
    })
    tool_result_block = _object(["type", "tool_use_id"], {
        "type": {"const": "tool_result"},
        "tool_use_id": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]+$"},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
            _ref("AnthropicTextBlock"), _ref("AnthropicImageBlock")]}}]},
        "is_error": {"type": "boolean"},
        "cache_control": _CACHE_CONTROL,
    })
    thinking_block = _object(["type", "thinking", "signature"], {
        "type": {"const": "thinking"}, "thinking": {"type": "string"}, "signature": {"type": "string"},
    })
    redacted_block = _object(["type", "data"], {"type": {"const": "redacted_thinking"}, "data": {"type": "string"}})
    content_block = {"anyOf": [
        _ref("AnthropicTextBlock"), _ref("AnthropicImageBlock"), _ref("AnthropicDocumentBlock"),
        _ref("AnthropicToolUseBlock"), _ref("AnthropicToolResultBlock"), _ref("AnthropicThinkingBlock"),
        _ref("AnthropicRedactedThinkingBlock"),
    ]}
    message = _object(["role", "content"], {
        "role": {"enum": ["user", "assistant"]},
        "content": {"anyOf": [
            _NONEMPTY,
            {"type": "array", "minItems": 1, "items": _ref("AnthropicContentBlock")},
        ]},
    })
    tool = _object(["name", "input_schema"], {
        "name": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "input_schema": {
            "type": "object", "required": ["type"],
            "properties": {"type": {"const": "object"}, "properties": {"type": "object"},
                           "required": {"type": "array", "items": {"type": "string"}}},
        },
        "cache_control": _CACHE_CONTROL,
    })
    tool_choice = {"anyOf": [
        _object(["type"], {"type": {"enum": ["auto", "any"]}, "disable_parallel_tool_use": {"type": "boolean"}}),
        _object(["type", "name"], {"type": {"const": "tool"}, "name": _NONEMPTY,
                                   "disable_parallel_tool_use": {"type": "boolean"}}),
        _object(["type"], {"type": {"const": "none"}}),
    ]}
    thinking = {"anyOf": [
        _object(["type", "budget_tokens"], {
            "type": {"const": "enabled"}, "budget_tokens": {"type": "integer", "minimum": 1024},
            "display": {"enum": ["summarized", "omitted"]},
        }),
        _object(["type"], {"type": {"const": "adaptive"}, "display": {"enum": ["summarized", "omitted"]}}),
        _object(["type"], {"type": {"const": "disabled"}}),
    ]}
    system = {"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("AnthropicTextBlock")}]}
    common = {
        "model": {**_MODEL_ID, "description": "a Claude model id or a dario alias (sonnet, opus, haiku, …)",
                  "examples": ["claude-sonnet-4-5", "sonnet"]},
        "messages": {"type": "array", "minItems": 1, "items": _ref("AnthropicMessage")},
        "system": system,
        "tools": {"type": "array", "items": _ref("AnthropicTool")},
        "tool_choice": tool_choice,
        "thinking": thinking,
    }
    messages_request = _object(["model", "max_tokens", "messages"], {
        **common,
        "max_tokens": {"type": "integer", "minimum": 0, "description": "0 only pre-warms the prompt cache"},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "stop_sequences": {"type": "array", "items": _STOP_SEQUENCE},
        "metadata": _object([], {"user_id": {"type": "string"}}),
        "service_tier": {"enum": ["auto", "standard_only"]},
    })
    count_request = _object(["model", "messages"], common)
    usage = {"type": "object", "properties": {
        "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
        "cache_creation_input_tokens": {"type": ["integer", "null"]},
        "cache_read_input_tokens": {"type": ["integer", "null"]},
    }}
    message_response = _object(["type", "role", "content"], {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": {"type": "string"},
        "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
        "stop_reason": {"type": ["string", "null"]},
        "stop_sequence": {"type": ["string", "null"]},
        "usage": usage,
    }, closed=False)
    # One server-sent event of a stream (`event:` and `data:` lines); its data is a JSON object whose
    # `type` repeats the event's name (https://docs.anthropic.com/en/api/messages-streaming).
    stream_event = _object(["event", "data"], {
        "event": {"type": "string", "examples": ["message_start", "content_block_delta", "message_stop"]},
        "data": {"type": "string", "contentMediaType": _JSON,
                 "contentSchema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    }, closed=False)
    return {
        "AnthropicTextBlock": text_block,
        "AnthropicImageBlock": image_block,
        "AnthropicDocumentBlock": document_block,
        "AnthropicToolUseBlock": tool_use_block,
        "AnthropicToolResultBlock": tool_result_block,
        "AnthropicThinkingBlock": thinking_block,
        "AnthropicRedactedThinkingBlock": redacted_block,
        "AnthropicContentBlock": content_block,
        "AnthropicMessage": message,
        "AnthropicTool": tool,
        "MessagesRequest": messages_request,
        "CountTokensRequest": count_request,
        "Message": message_response,
        "MessageStreamEvent": stream_event,
        "TokenCount": _object(["input_tokens"], {"input_tokens": {"type": "integer", "minimum": 0}}, closed=False),
    }


def _openai_schemas() -> dict[str, Schema]:
    text_part = _object(["type", "text"], {"type": {"const": "text"}, "text": {"type": "string"}}, closed=False)
    image_part = _object(["type", "image_url"], {
        "type": {"const": "image_url"},
        "image_url": _object(["url"], {
            "url": {"anyOf": [
                _HTTP_URL,
                {"type": "string", "pattern": r"^data:image/(?:png|jpeg|gif|webp);base64,(?:[A-Za-z0-9+/]{4})+$"},
            ]},
            "detail": {"enum": ["auto", "low", "high"]},
        }, closed=False),
    }, closed=False)
    text_content = {"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("ChatTextPart")}]}
    user_content = {"anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"anyOf": [_ref("ChatTextPart"), _ref("ChatImagePart")]}},
    ]}
    tool_call = _object(["id", "type", "function"], {
        "id": _NONEMPTY,
        "type": {"const": "function"},
        "function": _object(["name", "arguments"], {"name": _NONEMPTY, "arguments": {"type": "string"}},
                            closed=False),
    }, closed=False)
    message = {"anyOf": [
        _object(["role", "content"], {"role": {"enum": ["system", "developer"]}, "content": text_content,
                                      "name": {"type": "string"}}, closed=False),
        _object(["role", "content"], {"role": {"const": "user"}, "content": user_content,
                                      "name": {"type": "string"}}, closed=False),
        _object(["role"], {
            "role": {"const": "assistant"},
            "content": {"anyOf": [text_content, {"type": "null"}]},
            "tool_calls": {"type": "array", "items": _ref("ChatToolCall")},
            "name": {"type": "string"},
        }, closed=False),
        _object(["role", "tool_call_id", "content"], {
            "role": {"const": "tool"}, "tool_call_id": _NONEMPTY, "content": text_content,
        }, closed=False),
    ]}
    tool = _object(["type", "function"], {
        "type": {"const": "function"},
        "function": _object(["name"], {
            "name": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,64}$"},
            "description": {"type": "string"},
            "parameters": {"type": "object", "properties": {"type": {"const": "object"}}},
            "strict": {"type": ["boolean", "null"]},
        }, closed=False),
    }, closed=False)
    tool_choice = {"anyOf": [
        {"enum": ["auto", "none", "required"]},
        _object(["type", "function"], {"type": {"const": "function"},
                                       "function": _object(["name"], {"name": _NONEMPTY}, closed=False)},
                closed=False),
    ]}
    response_format = {"anyOf": [
        _object(["type"], {"type": {"enum": ["text", "json_object"]}}, closed=False),
        _object(["type", "json_schema"], {
            "type": {"const": "json_schema"},
            "json_schema": _object(["name"], {"name": _NONEMPTY, "schema": {"type": "object"},
                                              "strict": {"type": ["boolean", "null"]}}, closed=False),
        }, closed=False),
    ]}
    request = _object(["model", "messages"], {
        "model": {**_MODEL_ID, "description": "a Claude model id (claude-…) or a configured alias (gpt-4o, sonnet, …); "
                  "any other name is a 404", "examples": ["claude-sonnet-4-5", "gpt-4o"]},
        "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "n": {"anyOf": [{"const": 1}, {"type": "null"}], "description": "Claude returns one choice"},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"anyOf": [
            _object([], {"include_usage": {"type": "boolean"}}, closed=False), {"type": "null"}]},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "tools": {"type": "array", "items": _ref("ChatTool")},
        "tool_choice": tool_choice,
        "parallel_tool_calls": {"type": "boolean"},
        "response_format": response_format,
        "reasoning_effort": {"enum": ["minimal", "low", "medium", "high", "xhigh", "none"],
                             "description": "thinking budget; shrunk to fit max_completion_tokens, or off"},
        "logprobs": {"enum": [False, None], "description": "Claude returns no log probabilities"},
        "top_logprobs": {"enum": [0, None]},
        "user": {"type": "string"},
    }, closed=False)
    completion = _object(["object", "choices"], {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": _object(["index", "message", "finish_reason"], {
            "index": {"type": "integer"},
            "message": _object(["role"], {"role": {"const": "assistant"},
                                          "content": {"type": ["string", "null"]}}, closed=False),
            "finish_reason": {"type": ["string", "null"]},
        }, closed=False)},
        "usage": _object(["prompt_tokens", "completion_tokens", "total_tokens"], {
            "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        }, closed=False),
    }, closed=False)
    # One server-sent event of a stream: `data:` only, a chat.completion.chunk (or an error object when
    # the stream fails), and `[DONE]` last (https://platform.openai.com/docs/api-reference/chat-streaming).
    chunk = {"type": "object", "anyOf": [
        {"required": ["object", "choices"], "properties": {"object": {"const": "chat.completion.chunk"},
                                                            "choices": {"type": "array"}}},
        {"required": ["error"], "properties": {"error": {"type": "object", "required": ["message"]}}},
    ]}
    stream_event = _object(["data"], {
        "data": {"anyOf": [{"const": "[DONE]"},
                           {"type": "string", "contentMediaType": _JSON, "contentSchema": chunk}]},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    }, closed=False)
    return {
        "ChatTextPart": text_part,
        "ChatImagePart": image_part,
        "ChatToolCall": tool_call,
        "ChatMessage": message,
        "ChatTool": tool,
        "ChatCompletionRequest": request,
        "ChatCompletion": completion,
        "ChatCompletionStreamEvent": stream_event,
    }


def _dario_schemas() -> dict[str, Schema]:
    anthropic_error = _object(["type", "error"], {
        "type": {"const": "error"},
        "error": _object(["type", "message"], {"type": {"type": "string"}, "message": {"type": "string"}},
                         closed=False),
        "request_id": {"type": "string"},
    }, closed=False)
    openai_error = _object(["error"], {
        "error": _object(["message", "type"], {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        }, closed=False),
    }, closed=False)
    model = _object(["id"], {
        "id": {"type": "string"},
        "type": {"const": "model"},
        "display_name": {"type": "string"},
        "created_at": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    }, closed=False)
    model_list = _object(["data"], {
        "object": {"const": "list"},
        "data": {"type": "array", "items": _ref("Model")},
        "has_more": {"type": "boolean"},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
    }, closed=False)
    pool = _object(["health", "available", "total"], {
        "health": {"enum": list(get_args(PoolHealth))},
        "available": {"type": "integer", "minimum": 0},
        "total": {"type": "integer", "minimum": 0},
        "queue_depth": {"type": "integer", "minimum": 0},
    }, closed=False)
    account = _object(["alias", "status"], {"alias": {"type": "string"}, "status": {"type": "string"}},
                      closed=False)
    health = _object(["status", "version", "accounts", "accounts_available", "pool"], {
        "status": {"const": "ok"},
        "version": {"type": "string"},
        "accounts": {"type": "integer", "minimum": 0},
        "accounts_available": {"type": "integer", "minimum": 0},
        "pool": {"enum": list(get_args(PoolHealth))},
        "requests_served": {"type": "integer", "minimum": 0},
        "uptime_s": {"type": "number", "minimum": 0},
        "analytics": {"oneOf": [{"type": "null"}, _object(["store", "ok", "pending", "dropped"], {
            "store": {"enum": ["sqlite", "postgresql"]},
            "ok": {"type": "boolean"},
            "pending": {"type": "integer", "minimum": 0},
            "dropped": {"type": "integer", "minimum": 0},
        }, closed=False)]},
    }, closed=False)
    accounts = _object(["pool", "accounts"], {
        "pool": _ref("PoolView"), "accounts": {"type": "array", "items": _ref("AccountView")},
    }, closed=False)
    analytics = _object(["window", "totals", "accounts"], {
        "window": {"enum": ["1h", "24h", "7d"]},
        "totals": {"type": "object"},
        "by_account": {"type": "array"},
        "by_model": {"type": "array"},
        "by_client": {"type": "array"},
        "series": {"type": "object"},
        "instances": {"type": "integer", "minimum": 0},  # dariod instances that wrote rows in the window
        "accounts": {"type": "array", "items": _ref("AccountView")},
    }, closed=False)
    return {
        "AnthropicError": anthropic_error,
        "OpenAIError": openai_error,
        "Model": model,
        "ModelList": model_list,
        "PoolView": pool,
        "AccountView": account,
        "Health": health,
        "Accounts": accounts,
        "Analytics": analytics,
    }


# -- responses ---------------------------------------------------------------------------------

# The error `type` each status carries, per dialect (https://docs.anthropic.com/en/api/errors,
# https://platform.openai.com/docs/guides/error-codes). Upstream errors pass
# through unchanged (Anthropic side) or mapped (OpenAI side), so these hold for them too.
_ANTHROPIC_TYPES: dict[str, list[str]] = {
    "400": ["invalid_request_error"],
    "401": ["authentication_error"],
    "402": ["billing_error"],
    "403": ["permission_error"],
    "404": ["not_found_error"],
    "408": ["invalid_request_error"],
    "413": ["request_too_large"],
    "429": ["rate_limit_error"],
    "431": ["invalid_request_error"],
}
_OPENAI_TYPES: dict[str, list[str]] = {
    "400": ["invalid_request_error"],
    "401": ["authentication_error", "invalid_request_error"],
    "403": ["permission_error"],
    "404": ["invalid_request_error"],
    "408": ["invalid_request_error"],
    "413": ["invalid_request_error"],
    "429": ["rate_limit_error", "insufficient_quota"],
    "431": ["invalid_request_error"],
}
_WHY: dict[str, str] = {
    "400": "invalid request (dario's own check, or the upstream's, passed through)",
    "401": "a key is required (DARIO_API_KEY or a client key) and none or a wrong one was sent; "
           "or the upstream refused the account's key",
    "402": "the upstream account's billing refused the request",
    "403": "Host or Origin not allowed (DNS rebinding and cross-site protection); or the upstream refused",
    "404": "not found",
    "408": "the request body stalled (nothing for DARIO_BODY_IDLE_TIMEOUT s, or not all of it within "
           "DARIO_BODY_DEADLINE s); the connection is closed",
    "413": "request body over 32 MB",
    "431": "request head (request line and headers) over 64 KB",
    "429": "every account is rate limited (dario waited its queue timeout), or the upstream's 429",
    "503": "no account can serve (none logged in, all disabled or cooling down); or the upstream is overloaded",
    "5XX": "an upstream failure passed through (carries x-dario-account), or the upstream could not be reached "
           "(502) or timed out (504), or every account was cooling after overloads at the queue deadline (529)",
}


def _error_content(dialect: str, status: str) -> Schema:
    anthropic = dialect == "anthropic"
    base = _ref("AnthropicError" if anthropic else "OpenAIError")
    types = (_ANTHROPIC_TYPES if anthropic else _OPENAI_TYPES).get(status)
    if types is None:
        return base
    return {"allOf": [base, {"properties": {"error": {"properties": {"type": {"enum": types}}}}}]}


_ID_HEADERS = {
    "anthropic": {"request-id": {"description": "the request's id (dario's, or the upstream's)",
                                 "schema": {"type": "string"}}},
    "openai": {"x-request-id": {"description": "the request's id (dario's, or the upstream's)",
                                "schema": {"type": "string"}}},
}
_ACCOUNT_HEADER = {
    "x-dario-account": {"description": "the account that served (present when the answer came from an upstream)",
                        "schema": {"type": "string"}},
}


def _error_response(dialect: str, status: str) -> Schema:
    if dialect == "either":
        schema: Schema = {"anyOf": [_error_content("anthropic", status), _error_content("openai", status)]}
        headers: Schema = {}
    else:
        schema = _error_content(dialect, status)
        headers = {**_ID_HEADERS[dialect], **_ACCOUNT_HEADER}
    out: Schema = {"description": _WHY[status], "content": {_JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(dialect: str, *statuses: str) -> dict[str, Schema]:
    if dialect != "either":
        statuses += ("431",)  # any request may have a head over the limit
    return {s: _error_response(dialect, s) for s in statuses}


def _ok(description: str, schema: Schema, media: str = _JSON) -> dict[str, Schema]:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


# -- parameters (an empty query value counts as an absent one) ---------------------------------

_ANTHROPIC_HEADERS: list[Schema] = [
    {"name": "anthropic-version", "in": "header", "required": False,
     "description": "forwarded; dario sends 2023-06-01 when it is absent or empty", "schema": {"type": "string"},
     "examples": {"default": {"value": "2023-06-01"}}},
    {"name": "anthropic-beta", "in": "header", "required": False,
     "description": "comma-separated beta names, forwarded verbatim (the upstream judges them)",
     "schema": {"type": "string"}, "examples": {"default": {"value": "interleaved-thinking-2025-05-14"}}},
]
_BETA_QUERY: Schema = {
    "name": "beta", "in": "query", "required": False, "description": "the SDKs' ?beta=true; the query is forwarded",
    "schema": {"type": "boolean"},
}
_FORWARDED = ("400", "401", "402", "403", "404", "408", "413", "429", "503", "5XX")


def _paths() -> dict[str, Schema]:
    no_auth: list[Schema] = []
    return {
        "/v1/messages": {"post": {
            "operationId": "createMessage",
            "tags": ["anthropic"],
            "summary": "Anthropic Messages: relayed to an account of the pool",
            "parameters": [*_ANTHROPIC_HEADERS, _BETA_QUERY],
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("MessagesRequest")}}},
            "responses": {
                "200": {"description": "the message, or its event stream when `stream` is true",
                        "headers": _ACCOUNT_HEADER,
                        "content": {_JSON: {"schema": _ref("Message")}, _SSE: {"schema": _ref("MessageStreamEvent")}}},
                **_errors("anthropic", *_FORWARDED),
            },
        }},
        "/v1/messages/count_tokens": {"post": {
            "operationId": "countTokens",
            "tags": ["anthropic"],
            "summary": "Anthropic token count: relayed to an account of the pool",
            "parameters": [*_ANTHROPIC_HEADERS, _BETA_QUERY],
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("CountTokensRequest")}}},
            "responses": {**_ok("the count", _ref("TokenCount")), **_errors("anthropic", *_FORWARDED)},
        }},
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion",
            "tags": ["openai"],
            "summary": "OpenAI Chat Completions, translated to and from Anthropic Messages",
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("ChatCompletionRequest")}}},
            "responses": {
                "200": {"description": "the completion, or its chunk stream when `stream` is true",
                        "headers": _ACCOUNT_HEADER,
                        "content": {_JSON: {"schema": _ref("ChatCompletion")},
                                    _SSE: {"schema": _ref("ChatCompletionStreamEvent")}}},
                **_errors("openai", "400", "401", "403", "404", "408", "413", "429", "503", "5XX"),
            },
        }},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "tags": ["anthropic", "openai"],
            "summary": "models, in both SDKs' shapes at once (the upstream's list when known, and dario's aliases)",
            "parameters": [
                *_ANTHROPIC_HEADERS,
                {"name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
                 "description": "page size; without it, every model", "schema": {"type": "integer", "minimum": 1,
                                                                               "maximum": 1000}},
                {"name": "after_id", "in": "query", "required": False, "allowEmptyValue": True,
                 "schema": {"type": "string"}},
                {"name": "before_id", "in": "query", "required": False, "allowEmptyValue": True,
                 "schema": {"type": "string"}},
            ],
            "responses": {**_ok("a page of models", _ref("ModelList")), **_errors("anthropic", "400", "401", "403")},
        }},
        "/v1/models/{model_id}": {"get": {
            "operationId": "getModel",
            "tags": ["anthropic", "openai"],
            "summary": "one model or alias; a 404 is in the Anthropic shape when the client sent "
                       "anthropic-version or x-api-key, else in the OpenAI shape",
            "parameters": [
                *_ANTHROPIC_HEADERS,
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
            ],
            "responses": {
                **_ok("the model", _ref("Model")),
                **_errors("anthropic", "401", "403"),
                **_errors("either", "404"),
            },
        }},
        "/health": {"get": {
            "operationId": "health",
            "tags": ["dario"],
            "summary": "liveness and pool summary; never needs a key",
            "security": no_auth,
            "responses": {**_ok("dario is up", _ref("Health")), **_errors("anthropic", "403")},
        }},
        "/accounts": {"get": {
            "operationId": "accounts",
            "tags": ["dario"],
            "summary": "the pool and each account's state (no secrets)",
            "responses": {**_ok("the pool", _ref("Accounts")), **_errors("anthropic", "401", "403")},
        }},
        "/analytics": {"get": {
            "operationId": "analytics",
            "tags": ["dario"],
            "summary": "usage, cost and forecasts over a window",
            "parameters": [{"name": "window", "in": "query", "required": False, "allowEmptyValue": True,
                            "description": "empty or absent: 24h", "schema": {"enum": ["1h", "24h", "7d"],
                                                                             "default": "24h"}}],
            "responses": {
                **_ok("usage over the window", _ref("Analytics")),
                **_errors("anthropic", "400", "401", "403"),
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics",
            "tags": ["dario"],
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors("anthropic", "401", "403"),
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "tags": ["dario"],
            "summary": "this document",
            "responses": {**_ok("OpenAPI 3.1", {"type": "object", "required": ["openapi", "paths"]}),
                          **_errors("anthropic", "401", "403")},
        }},
        "/": {"get": {
            "operationId": "dashboard",
            "tags": ["dario"],
            "summary": "the dashboard (its static shell needs no key; its data calls do)",
            "security": no_auth,
            "responses": {
                "200": {"description": "the dashboard page", "content": {"text/html": {"schema": {"type": "string"}}}},
                **_errors("anthropic", "403"),
            },
        }},
    }


@lru_cache(maxsize=4)
def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for this dario version (built once; do not mutate the result)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dario",
            "version": version,
            "summary": "A local gateway for Claude",
            "description": "Anthropic Messages and OpenAI Chat Completions on one loopback endpoint, served by a "
                           "pool of accounts. Errors use the Anthropic shape, except on /v1/chat/completions "
                           "(OpenAI shape). A key is needed only when dario runs with DARIO_API_KEY.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "this dario (by default http://127.0.0.1:3456)"}],
        "tags": [
            {"name": "anthropic", "description": "Anthropic Messages API"},
            {"name": "openai", "description": "OpenAI Chat Completions API"},
            {"name": "dario", "description": "dario's own views"},
        ],
        "security": [{}, {"apiKey": []}, {"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "DARIO_API_KEY or a dario client key"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "DARIO_API_KEY or a dario client key, as Authorization: Bearer"},
            },
            "schemas": {**_anthropic_schemas(), **_openai_schemas(), **_dario_schemas()},
        },
    }


@lru_cache(maxsize=4)
def openapi_json(version: str) -> bytes:
    """`openapi_document(version)` serialised, as `GET /openapi.json` sends it."""
    return orjson.dumps(openapi_document(version))
