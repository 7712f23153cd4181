"""The fake Vertex AI checked against the real google-auth library and plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.exceptions import RefreshError
from google.auth.transport.urllib3 import Request as AuthRequest
from google.oauth2 import service_account

from tests.fakevertex import SCOPE, FakeVertex

MODEL_URL = "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/"


@pytest.fixture(scope="module")
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


def _token(path: Path) -> str:
    import urllib3

    creds = service_account.Credentials.from_service_account_file(str(path), scopes=[SCOPE])
    creds.refresh(AuthRequest(urllib3.PoolManager()))
    assert creds.expiry is not None
    return str(creds.token)


def _post(vertex: FakeVertex, path: str, body: Any, token: str | None) -> tuple[int, bytes]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(vertex.url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


BODY = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def test_google_auth_refresh_gets_a_token_the_fake_accepts(vertex: FakeVertex, tmp_path: Path) -> None:
    token = _token(vertex.service_account(tmp_path))
    status, body = _post(vertex, MODEL_URL + "claude-sonnet-4-5@20250929:rawPredict", BODY, token)
    assert status == 200
    assert json.loads(body)["content"][0]["text"] == "Hello from Vertex."
    status, body = _post(vertex, MODEL_URL + "claude-sonnet-4-5@20250929:rawPredict", BODY, "ya29.made-up")
    assert status == 401 and json.loads(body)["error"]["status"] == "UNAUTHENTICATED"


def test_a_signature_from_another_key_is_refused(vertex: FakeVertex, tmp_path: Path) -> None:
    good = vertex.service_account(tmp_path, email="a@proj.iam.gserviceaccount.com")
    other = vertex.service_account(tmp_path, email="b@proj.iam.gserviceaccount.com")
    forged = json.loads(other.read_text())
    forged["client_email"] = "a@proj.iam.gserviceaccount.com"  # b's key claiming to be a
    good.write_text(json.dumps(forged))
    with pytest.raises(RefreshError, match="invalid_grant"):
        _token(good)


def test_stream_count_tokens_and_body_rules(vertex: FakeVertex, tmp_path: Path) -> None:
    token = _token(vertex.service_account(tmp_path))
    status, body = _post(vertex, MODEL_URL + "claude-sonnet-4-5@20250929:streamRawPredict",
                         {**BODY, "stream": True}, token)
    assert status == 200
    events = [line[7:] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    status, body = _post(vertex, MODEL_URL + "count-tokens:rawPredict", {**BODY, "model": "claude-sonnet-4-5@20250929"},
                         token)
    assert status == 200 and json.loads(body)["input_tokens"] >= 1
    status, _ = _post(vertex, MODEL_URL + "claude-sonnet-4-5@20250929:rawPredict", {**BODY, "model": "x"}, token)
    assert status == 400  # the model belongs in the URL
    status, _ = _post(vertex, MODEL_URL + "claude-sonnet-4-5:rawPredict", BODY, token)
    assert status == 404  # no @version


def test_scripted_faults(vertex: FakeVertex, tmp_path: Path) -> None:
    token = _token(vertex.service_account(tmp_path))
    url = MODEL_URL + "claude-sonnet-4-5@20250929:rawPredict"
    vertex.script({"google": "RESOURCE_EXHAUSTED"}, {"google": "UNAVAILABLE", "array": True}, {"overloaded": True},
                  {"expire_tokens": True})
    status, body = _post(vertex, url, BODY, token)
    assert status == 429 and json.loads(body)["error"]["status"] == "RESOURCE_EXHAUSTED"
    status, body = _post(vertex, url, BODY, token)
    assert status == 503 and json.loads(body)[0]["error"]["status"] == "UNAVAILABLE"
    status, body = _post(vertex, url, BODY, token)
    assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
    status, _ = _post(vertex, url, BODY, token)
    assert status == 401


def test_tokens_expire(vertex: FakeVertex, tmp_path: Path) -> None:
    vertex.set_expires_in(0)
    try:
        token = _token(vertex.service_account(tmp_path))
    finally:
        vertex.set_expires_in(3600)
    status, _ = _post(vertex, MODEL_URL + "claude-sonnet-4-5@20250929:rawPredict", BODY, token)
    assert status == 401
