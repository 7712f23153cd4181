"""The OpenAPI document: valid OpenAPI 3.1, one operation per route of the public app, served as built."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
import trio

from dario.daemon import __version__
from dario.daemon.edge.openapi import openapi_document, openapi_json
from dario.daemon.edge.public import PublicApp, RequestInfo

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Routes the table matches by prefix rather than exactly, and how the document names them.
PREFIX_ROUTES = {("GET", "/v1/models/{model_id}")}
UNDOCUMENTED_PREFIXES = {"/static/"}  # the dashboard's files, served with "/"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document(__version__)


def app() -> PublicApp:
    # The route table needs nothing but settings; the handlers under test here touch nothing else.
    return PublicApp(cast(Any, SimpleNamespace(settings=None)), cast(Any, None), cast(Any, None), cast(Any, None))


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)  # raises on anything invalid, $refs included
    assert doc["openapi"].startswith("3.1.")


def test_structure(doc: dict[str, Any]) -> None:
    assert doc["info"]["version"] == __version__
    assert doc["servers"] == [{"url": "/", "description": doc["servers"][0]["description"]}]
    # Every $ref resolves within the document.
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))


def test_lists_every_route_and_only_those(doc: dict[str, Any]) -> None:
    routes = set(app().routes) | PREFIX_ROUTES
    assert operations(doc) == routes
    assert all(not path.startswith(tuple(UNDOCUMENTED_PREFIXES)) for path in doc["paths"])


def test_errors_have_the_dialect_of_their_path(doc: dict[str, Any]) -> None:
    for method, path in operations(doc):
        op = doc["paths"][path][method.lower()]
        open_endpoint = op.get("security") == []
        # Only /health and the dashboard shell answer without a key; the Host/Origin guard covers all.
        assert open_endpoint == (path in ("/health", "/")), path
        assert "403" in op["responses"], path
        assert ("401" in op["responses"]) != open_endpoint, path
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = orjson.dumps(response["content"]["application/json"]["schema"])
                openai, anthropic = b"OpenAIError" in schema, b"AnthropicError" in schema
                if path.startswith("/v1/chat/"):
                    assert openai and not anthropic, (path, status)
                elif (path, status) == ("/v1/models/{model_id}", "404"):
                    assert openai and anthropic  # the client's headers choose
                else:
                    assert anthropic and not openai, (path, status)


def test_request_bodies_require_what_the_apis_require(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["MessagesRequest"]["required"]) == {"model", "max_tokens", "messages"}
    assert set(schemas["CountTokensRequest"]["required"]) == {"model", "messages"}
    assert "max_tokens" not in schemas["CountTokensRequest"]["properties"]
    assert set(schemas["ChatCompletionRequest"]["required"]) == {"model", "messages"}
    for name in ("MessagesRequest", "ChatCompletionRequest"):
        assert schemas[name]["properties"]["stream"]["type"] in ("boolean", ["boolean", "null"])


def test_built_once_and_serialisable() -> None:
    assert openapi_document("1.2.3") is openapi_document("1.2.3")
    assert openapi_json("1.2.3") is openapi_json("1.2.3")
    assert orjson.loads(openapi_json("1.2.3")) == openapi_document("1.2.3")
    assert openapi_document("1.2.3")["info"]["version"] == "1.2.3"


def test_served_as_built() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    public = app()
    handler = public.routes[("GET", "/openapi.json")]
    scope = {"type": "http", "method": "GET", "path": "/openapi.json", "headers": []}
    trio.run(handler, scope, receive, send, RequestInfo(0.0, "req_test", ""))
    start, body = sent
    assert start["status"] == 200
    assert (b"content-type", b"application/json") in start["headers"]
    assert body["body"] == openapi_json(__version__)


def test_body_timeouts_are_documented_on_every_route_that_reads_a_body(doc: dict[str, Any]) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions"):
        assert "408" in doc["paths"][path]["post"]["responses"], path
