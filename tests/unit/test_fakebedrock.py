"""The fake Bedrock runtime checked against the real AWS libraries: boto3's own `bedrock-runtime`
client must be able to invoke, stream and count through it, and botocore's event-stream decoder
must read its frames. If boto3 is happy, the fake speaks Bedrock's wire format, not dario's idea of it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests import fakebedrock
from tests.fakebedrock import FakeBedrock

AKID, SECRET = "AKIDFAKEBEDROCK0001", "fake-secret-access-key"
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"


fake = fakebedrock.fixture("fake", creds={AKID: SECRET})


def client(fake: FakeBedrock, secret: str = SECRET, region: str = "us-east-1") -> Any:
    return boto3.client(
        "bedrock-runtime", region_name=region, endpoint_url=fake.url,
        aws_access_key_id=AKID, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, proxies={}),
    )


def body(text: str = "hi", **extra: Any) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                       "messages": [{"role": "user", "content": text}], **extra})


def test_invoke_answers_an_anthropic_message(fake: FakeBedrock) -> None:
    out = client(fake).invoke_model(modelId=MODEL, body=body())
    message = json.loads(out["body"].read())
    assert message["type"] == "message" and message["content"][0]["text"] == fakebedrock.REPLY_TEXT
    assert message["usage"]["input_tokens"] > 0


def test_stream_frames_decode_with_boto3(fake: FakeBedrock) -> None:
    out = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=body())
    events = [json.loads(e["chunk"]["bytes"]) for e in out["body"]]
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == fakebedrock.REPLY_TEXT
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5


def test_count_tokens_through_boto3(fake: FakeBedrock) -> None:
    inner = body().encode()
    out = client(fake).count_tokens(modelId=MODEL, input={"invokeModel": {"body": inner}})
    assert out["inputTokens"] > 0


def test_a_wrong_secret_is_refused_by_signature(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as e:
        client(fake, secret="not-the-secret").invoke_model(modelId=MODEL, body=body())
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_wrong_region_is_refused(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as e:
        client(fake, region="eu-west-1").invoke_model(modelId=MODEL, body=body())
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_scripted_throttling_reaches_boto3_as_its_error_code(fake: FakeBedrock) -> None:
    fake.script({"error": "ThrottlingException", "status": 429, "message": "Too many requests"})
    with pytest.raises(ClientError) as e:
        client(fake).invoke_model(modelId=MODEL, body=body())
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_body_with_model_or_stream_is_a_validation_error(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as e:
        client(fake).invoke_model(modelId=MODEL, body=body(stream=True))
    assert e.value.response["Error"]["Code"] == "ValidationException"


def test_exception_frame_mid_stream_is_raised_by_boto3(fake: FakeBedrock) -> None:
    fake.script({"exception": "throttlingException", "after": 2, "message": "slow down"})
    out = client(fake).invoke_model_with_response_stream(modelId=MODEL, body=body())
    seen = []
    with pytest.raises(EventStreamError) as e:
        for event in out["body"]:
            seen.append(event)
    assert len(seen) == 2
    assert "throttlingException" in str(e.value)


def test_frames_parse_back_with_botocore_decoder() -> None:
    buf = EventStreamBuffer()
    data = fakebedrock.chunk_frame({"type": "ping"}) + fakebedrock.exception_frame("validationException", "no")
    buf.add_data(data[:7])
    assert list(buf) == []
    buf.add_data(data[7:])
    first, second = list(buf)
    assert first.headers[":event-type"] == "chunk"
    assert json.loads(base64.b64decode(json.loads(first.payload)["bytes"])) == {"type": "ping"}
    assert second.headers[":message-type"] == "exception"
    assert second.headers[":exception-type"] == "validationException"
