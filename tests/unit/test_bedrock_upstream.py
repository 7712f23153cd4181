"""dario's BedrockUpstream against the fake bedrock-runtime over loopback, with dario's own HTTP
client: the fake recomputes every SigV4 signature with botocore, so an accepted request is one
AWS would accept; streams are real event-stream frames, decoded back into Anthropic SSE.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trio

from dario.daemon.errors import ANTHROPIC_STATUS
from dario.daemon.upstream import bedrock
from dario.daemon.upstream.base import Call, VerdictKind
from dario.daemon.upstream.httpclient import HttpClient
from dario.daemon.upstream.sse import iter_events
from tests import fakebedrock
from tests.fakebedrock import FakeBedrock

AKID, SECRET, API_KEY = "AKIDDARIOBEDROCK0001", "dario-test-secret", "bedrock-api-key-for-tests"
KEYS = {"type": "keys", "access_key_id": AKID, "secret_access_key": SECRET}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock({AKID: SECRET}, api_keys=[API_KEY]) as f:
        yield f


def secret(auth: dict[str, Any] | None = None, prefix: str | None = None) -> str:
    return bedrock.account_secret("us-east-1", auth or KEYS, prefix)


def messages(text: str = "hi", **extra: Any) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64,
                         "messages": [{"role": "user", "content": text}], **extra})


async def call(fake: FakeBedrock, body: bytes, *, path: str = "/v1/messages", sec: str | None = None,
               headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Any, bytes, bedrock.BedrockUpstream]:
    async with HttpClient(trust_env=False) as client:
        up = bedrock.BedrockUpstream(client)
        request = up.prepare(fake.url, sec or secret(), Call("POST", path, headers=headers or [], body=body))
        response = await up.send(request, read_timeout=10)
        try:
            raw = await response.read()
        finally:
            await response.aclose()
        return response, raw, up


def run(fake: FakeBedrock, body: bytes, **kw: Any) -> tuple[Any, bytes, bedrock.BedrockUpstream]:
    return trio.run(lambda: call(fake, body, **kw))


def decode(up: bedrock.BedrockUpstream, raw: bytes, piece: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """Feed the stream in small pieces, as a network would, and parse what comes out as SSE."""
    decoder = up.stream_decoder()
    sse = b"".join(decoder.feed(raw[i:i + piece]) for i in range(0, len(raw), piece))
    return [(name.decode(), orjson.loads(data)) for name, data in iter_events(sse)]


def test_text_answer_signed_and_accepted(fake: FakeBedrock) -> None:
    response, raw, up = run(fake, messages())
    assert response.status == 200, raw
    assert up.classify(response.status, response.headers, raw).kind is VerdictKind.OK
    answer = orjson.loads(up.answer_body(raw))
    assert answer["content"][0]["text"] == fakebedrock.REPLY_TEXT
    sent = fake.requests()[-1]
    assert sent["path"] == "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + AKID)


def test_body_is_rewritten_for_bedrock(fake: FakeBedrock) -> None:
    tools = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}]
    response, raw, _ = run(fake, messages("[[tool]]", tools=tools),
                           headers=[(b"anthropic-beta", b"beta-one, beta-two"), (b"x-api-key", b"client-key")])
    assert response.status == 200, raw
    assert orjson.loads(raw)["content"][0] == {**orjson.loads(raw)["content"][0], "type": "tool_use",
                                               "name": "get_weather"}
    sent = fake.requests()[-1]
    body = orjson.loads(sent["body"])
    assert "model" not in body and "stream" not in body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert body["anthropic_beta"] == ["beta-one", "beta-two"]
    assert body["tools"] == tools
    assert "client-key" not in repr(sent["headers"])


def test_stream_decodes_to_anthropic_sse(fake: FakeBedrock) -> None:
    response, raw, up = run(fake, messages(stream=True))
    assert response.status == 200 and up.is_stream(response.headers)
    assert fake.requests()[-1]["path"].endswith("/invoke-with-response-stream")
    events = decode(up, raw)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert all(n == d["type"] for n, d in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == fakebedrock.REPLY_TEXT
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["usage"]["output_tokens"] == 5


def test_usage_from_invocation_metrics_when_the_delta_has_none(fake: FakeBedrock) -> None:
    fake.script({"omit_delta_usage": True})
    _, raw, up = run(fake, messages(stream=True))
    events = decode(up, raw)
    names = [n for n, _ in events]
    assert names[-2:] == ["message_delta", "message_stop"]
    delta = events[-2][1]
    assert delta["usage"]["output_tokens"] == 5 and delta["usage"]["input_tokens"] > 0
    assert "amazon-bedrock-invocationMetrics" not in events[-1][1]


def test_thinking_passes_through(fake: FakeBedrock) -> None:
    _, raw, up = run(fake, messages(stream=True, thinking={"type": "enabled", "budget_tokens": 1024}))
    events = decode(up, raw)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert "thinking_delta" in deltas and "signature_delta" in deltas
    assert orjson.loads(fake.requests()[-1]["body"])["thinking"]["budget_tokens"] == 1024


def test_count_tokens_through_count_tokens_api(fake: FakeBedrock) -> None:
    body = orjson.dumps({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "count me"}]})
    response, raw, up = run(fake, body, path="/v1/messages/count_tokens", sec=secret(prefix="us"))
    assert response.status == 200, raw
    assert orjson.loads(up.answer_body(raw))["input_tokens"] > 0
    sent = fake.requests()[-1]
    assert sent["path"] == "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/count-tokens"  # bare id
    inner = orjson.loads(base64.b64decode(orjson.loads(sent["body"])["input"]["invokeModel"]["body"]))
    assert inner["anthropic_version"] == "bedrock-2023-05-31" and "model" not in inner


def test_profile_prefix_goes_into_the_model_id(fake: FakeBedrock) -> None:
    response, raw, _ = run(fake, messages(), sec=secret(prefix="eu"))
    assert response.status == 200, raw
    assert fake.requests()[-1]["path"] == "/model/eu.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"


def test_bearer_api_key(fake: FakeBedrock) -> None:
    response, raw, _ = run(fake, messages(), sec=secret({"type": "api_key", "api_key": API_KEY}))
    assert response.status == 200, raw
    assert fake.requests()[-1]["headers"]["authorization"] == "Bearer " + API_KEY


@pytest.mark.parametrize(("auth", "code"), [
    ({"type": "keys", "access_key_id": AKID, "secret_access_key": "wrong"}, "InvalidSignatureException"),
    ({"type": "keys", "access_key_id": "AKIDUNKNOWN", "secret_access_key": SECRET}, "UnrecognizedClientException"),
    ({"type": "api_key", "api_key": "wrong"}, "UnrecognizedClientException"),
])
def test_rejected_credentials_need_login(fake: FakeBedrock, auth: dict[str, Any], code: str) -> None:
    response, raw, up = run(fake, messages(), sec=secret(auth))
    assert response.status == 401  # AWS's 403 becomes Anthropic's authentication_error status
    verdict = up.classify(response.status, response.headers, raw)
    assert verdict.kind is VerdictKind.AUTH
    assert verdict.error is not None and verdict.error.declared_type == code


@pytest.mark.parametrize(("name", "status", "kind", "etype"), [
    ("ThrottlingException", 429, VerdictKind.RATE_LIMITED, "rate_limit_error"),
    ("ServiceUnavailableException", 503, VerdictKind.OVERLOADED, "overloaded_error"),
    ("ModelTimeoutException", 408, VerdictKind.OVERLOADED, "overloaded_error"),
    ("ModelNotReadyException", 429, VerdictKind.OVERLOADED, "overloaded_error"),
    ("InternalServerException", 500, VerdictKind.OVERLOADED, "api_error"),
    ("AccessDeniedException", 403, VerdictKind.AUTH, "permission_error"),
    ("ExpiredTokenException", 403, VerdictKind.AUTH, "authentication_error"),
    ("ValidationException", 400, VerdictKind.FINAL, "invalid_request_error"),
    ("ResourceNotFoundException", 404, VerdictKind.FINAL, "not_found_error"),
])
def test_error_classes(fake: FakeBedrock, name: str, status: int, kind: VerdictKind, etype: str) -> None:
    fake.script({"error": name, "status": status, "message": f"scripted {name}"})
    response, raw, up = run(fake, messages())
    # send rewrites every error into Anthropic's shape and status (the AWS name kept for classify).
    assert response.status == ANTHROPIC_STATUS[etype]
    assert response.header(b"x-amzn-errortype").startswith(name.encode())
    verdict = up.classify(response.status, response.headers, raw)
    assert verdict.kind is kind
    assert verdict.error is not None and verdict.error.type == etype
    assert verdict.error.message == f"scripted {name}"
    answered, shaped = up.error_body(response.status, response.headers, raw)
    assert answered == ANTHROPIC_STATUS[etype]  # e.g. a 503 ServiceUnavailable → 529 overloaded_error
    assert orjson.loads(shaped) == {"type": "error", "error": {"type": etype, "message": f"scripted {name}"}}


def test_error_type_from_json_type_field_without_header() -> None:
    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    body = orjson.dumps({"__type": "com.amazon.coral.service#ThrottlingException", "message": "slow"})
    verdict = up.classify(400, [], body)
    assert verdict.kind is VerdictKind.RATE_LIMITED and verdict.error is not None
    assert verdict.error.message == "slow"


@pytest.mark.parametrize(("exception", "etype"), [
    ("throttlingException", "rate_limit_error"),
    ("serviceUnavailableException", "overloaded_error"),
    ("modelStreamErrorException", "api_error"),
    ("internalServerException", "api_error"),
    ("validationException", "invalid_request_error"),
])
def test_exception_frame_mid_stream_becomes_an_error_event(fake: FakeBedrock, exception: str, etype: str) -> None:
    fake.script({"exception": exception, "after": 3, "message": "went wrong"})
    _, raw, up = run(fake, messages(stream=True))
    events = decode(up, raw)
    assert [n for n, _ in events][:3] == ["message_start", "content_block_start", "content_block_delta"]
    name, data = events[-1]
    assert name == "error"
    assert data == {"type": "error", "error": {"type": etype, "message": "went wrong"}}


def test_corrupt_frame_ends_with_an_error_event() -> None:
    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    good = fakebedrock.chunk_frame({"type": "ping"})
    bad = bytearray(fakebedrock.chunk_frame({"type": "ping"}))
    bad[-1] ^= 0xFF  # the message CRC no longer matches
    events = decode(up, good + bytes(bad))
    assert [n for n, _ in events] == ["ping", "error"]


def test_unknown_model_is_a_final_400_naming_it(fake: FakeBedrock) -> None:
    fake.clear()
    body = orjson.dumps({"model": "claude-imaginary-9", "max_tokens": 5, "messages": []})
    response, raw, up = run(fake, body)
    assert response.status == 400 and up.classify(400, response.headers, raw).kind is VerdictKind.FINAL
    assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    assert b"claude-imaginary-9" in raw
    assert fake.requests() == []  # refused here, nothing sent


def test_check_key_costs_no_tokens(fake: FakeBedrock) -> None:
    async def main() -> tuple[int, bytes]:
        async with HttpClient(trust_env=False) as client:
            status, _, body = await bedrock.BedrockUpstream(client).check_key(fake.url, secret())
            return status, body
    status, body = trio.run(main)
    assert status == 200 and b"inputTokens" in body
    assert fake.requests()[-1]["path"].endswith("/count-tokens")


def test_limits_are_empty_without_ratelimit_headers() -> None:
    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    snap = up.limits([(b"x-amzn-requestid", b"r")])
    assert snap.windows == {} and snap.retry_after is None


def test_secret_document_errors_never_quote_the_secret() -> None:
    async def main() -> tuple[int, bytes]:
        async with HttpClient(trust_env=False) as client:
            up = bedrock.BedrockUpstream(client)
            request = up.prepare("http://127.0.0.1:1", "not-json-but-" + SECRET,
                                 Call("POST", "/v1/messages", body=messages()))
            reply = await up.send(request)
            return reply.status, await reply.read()
    status, body = trio.run(main)
    assert status == 401 and orjson.loads(body)["error"]["type"] == "authentication_error"
    assert SECRET.encode() not in body
    assert SECRET not in repr(bedrock.parse_target(secret()))


def test_missing_chain_credentials_are_a_local_401(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing(profile: str | None) -> Any:
        raise bedrock.CredentialsUnavailable("no AWS credentials found through profile 'x'; run `aws sso login`")

    async def main() -> tuple[int, bytes]:
        async with HttpClient(trust_env=False) as client:
            up = bedrock.BedrockUpstream(client)
            monkeypatch.setattr(up.chain, "get", nothing)
            request = up.prepare("http://127.0.0.1:1", secret({"type": "chain", "profile": "x"}),
                                 Call("POST", "/v1/messages", body=messages()))
            reply = await up.send(request)
            return reply.status, await reply.read()
    status, body = trio.run(main)
    assert status == 401
    assert orjson.loads(body)["error"] == {"type": "authentication_error", "message":
                                           "Amazon Bedrock: no AWS credentials found through profile 'x'; "
                                           "run `aws sso login`"}


def test_secret_values_and_check_warning() -> None:
    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    assert SECRET in up.secret_values(secret())
    denied = orjson.dumps({"message": "You don't have access to the model with the specified model ID."})
    header = [(b"x-amzn-errortype", b"AccessDeniedException:http://internal.amazon.com/coral/")]
    warning = up.check_warning(403, header, denied)
    assert warning is not None and "accepted the credentials" in warning and bedrock.CHECK_MODEL in warning
    unknown = [(b"x-amzn-errortype", b"UnrecognizedClientException:")]
    assert up.check_warning(403, unknown, orjson.dumps({"message": "bad token"})) is None


def test_region_from_standard_host() -> None:
    assert bedrock.region_from_url("https://bedrock-runtime.eu-central-1.amazonaws.com") == "eu-central-1"
    assert bedrock.region_from_url("http://127.0.0.1:9") is None


def test_named_profile_through_botocore_chain(
    fake: FakeBedrock, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[dario-test]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    response, raw, _ = run(fake, messages(), sec=secret({"type": "chain", "profile": "dario-test"}))
    assert response.status == 200, raw
    assert fake.requests()[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + AKID)


def test_missing_profile_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(bedrock.CredentialsUnavailable, match="aws configure"):
        trio.run(bedrock.CredentialChain().get, None)


def test_chain_credentials_are_renewed_before_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.credentials import ReadOnlyCredentials

    calls: list[str | None] = []

    def resolve(profile: str | None, previous: Any) -> Any:
        calls.append(profile)
        # The first set expires within the margin, so the next use fetches a new one.
        return bedrock._Cached(ReadOnlyCredentials(f"AKID{len(calls)}", "s", None), bedrock.time.time() + 10)

    monkeypatch.setattr(bedrock, "_resolve_chain", resolve)
    chain = bedrock.CredentialChain(margin=60)

    async def twice() -> list[str]:
        return [(await chain.get("p")).access_key, (await chain.get("p")).access_key]

    assert trio.run(twice) == ["AKID1", "AKID2"]
    fresh = bedrock.CredentialChain(margin=5)
    assert trio.run(lambda: fresh.get("p")).access_key == "AKID3"
    assert trio.run(lambda: fresh.get("p")).access_key == "AKID3"  # still valid: cached


def test_a_body_changed_after_signing_is_refused(fake: FakeBedrock) -> None:
    async def main() -> int:
        async with HttpClient(trust_env=False) as client:
            up = bedrock.BedrockUpstream(client)
            request = up.prepare(fake.url, secret(), Call("POST", "/v1/messages", body=messages()))
            headers = await up.authorize(request)
            tampered = request.body.replace(b'"hi"', b'"ho"')
            response = await client.request("POST", request.url, headers, tampered)
            await response.aclose()
            return response.status
    assert trio.run(main) == 403


def test_session_token_is_signed_and_sent() -> None:
    token = "session-token-for-tests"
    with FakeBedrock({"ASIATEMPORARY0001": SECRET}, session_tokens={"ASIATEMPORARY0001": token}) as temp:
        auth = {"type": "keys", "access_key_id": "ASIATEMPORARY0001", "secret_access_key": SECRET}
        response, raw, _ = run(temp, messages(), sec=secret({**auth, "session_token": token}))
        assert response.status == 200, raw
        assert "x-amz-security-token" in temp.requests()[-1]["headers"]["authorization"]
        response, _, _ = run(temp, messages(), sec=secret(auth))  # the token is required
        assert response.status == 401  # a refused signature: authentication_error


def test_in_stream_error_event_classifies_as_the_relay_reads_it() -> None:
    # The relay re-classifies an in-stream `error` event's data with the status of its type.
    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    data = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    verdict = up.classify(429, [], data)
    assert verdict.kind is VerdictKind.RATE_LIMITED and verdict.error is not None
    assert verdict.error.message == "slow down"
    overloaded = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert up.classify(529, [], overloaded).kind is VerdictKind.OVERLOADED


def test_secret_values_for_redaction() -> None:
    doc = secret({**KEYS, "session_token": "tok-123"})
    assert set(bedrock.secret_values(doc)) >= {SECRET, "tok-123", doc}
    assert API_KEY in bedrock.secret_values(secret({"type": "api_key", "api_key": API_KEY}))
    assert AKID not in bedrock.secret_values(doc)  # an access key id is an identifier, not a secret


def test_count_tokens_strips_a_profile_the_client_named(fake: FakeBedrock) -> None:
    body = orjson.dumps({"model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                         "messages": [{"role": "user", "content": "count me"}]})
    response, raw, _ = run(fake, body, path="/v1/messages/count_tokens")
    assert response.status == 200, raw
    assert fake.requests()[-1]["path"] == "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/count-tokens"


@pytest.mark.parametrize(("model", "expected"), [
    ("claude-sonnet-4-5", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("claude-sonnet-4-5-20250929", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("claude-3-5-sonnet-20241022", "anthropic.claude-3-5-sonnet-20241022-v2:0"),
    ("anthropic.claude-opus-4-1-20250805-v1:0", "anthropic.claude-opus-4-1-20250805-v1:0"),
    ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
     "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"),
])
def test_model_table(model: str, expected: str) -> None:
    assert bedrock.bedrock_model_id(model, None) == expected


def test_an_endless_frame_is_capped() -> None:
    from dario.daemon.upstream.sse import MAX_PENDING_EVENT, EventTooLarge

    up = bedrock.BedrockUpstream(HttpClient(trust_env=False))
    decoder = up.stream_decoder()
    whole = fakebedrock.chunk_frame({"type": "ping"})
    assert decoder.feed(whole) == b'event: ping\ndata: {"type":"ping"}\n\n'
    # A frame announcing 20 MiB (botocore allows up to 24), arriving and never finishing.
    huge = fakebedrock.frame([(":event-type", "chunk")], b"x" * (20 * 1024 * 1024))
    with pytest.raises(EventTooLarge):
        for i in range(0, MAX_PENDING_EVENT + 2 * 65536, 65536):
            decoder.feed(huge[i:i + 65536])


def test_refreshable_chain_credentials_renew_through_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    from botocore.credentials import RefreshableCredentials

    issued: list[str] = []

    def metadata() -> dict[str, str]:
        issued.append(f"ASIA{len(issued)}")
        expiry = datetime.now(UTC) + timedelta(seconds=120)  # inside dario's margin and botocore's window
        return {"access_key": issued[-1], "secret_key": "s", "token": "t", "expiry_time": expiry.isoformat()}

    sources: list[Any] = []

    def source(profile: str | None) -> Any:
        sources.append(RefreshableCredentials.create_from_metadata(metadata(), metadata, "test"))
        return sources[-1]

    monkeypatch.setattr(bedrock, "_chain_source", source)
    chain = bedrock.CredentialChain()

    async def three() -> list[str]:
        return [(await chain.get("sso")).access_key for _ in range(3)]

    keys = trio.run(three)
    assert len(sources) == 1  # one botocore session, refreshed in place
    assert len(set(keys)) == 3  # a new key each time: each set is already near its expiry
