"""Login inputs per account kind (accounts.kinds), the CLI's credential parsing, and secret values."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from dario.ctl.credentials import CredentialError, parse_aws_keys, read_service_account, secret_parts
from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.accounts.kinds import LoginFields, prepare
from dario.daemon.accounts.registry import Registry
from dario.daemon.upstream import bedrock, vertex

AKID = "AKIAEXAMPLEKEY00001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = json.dumps({"access_key_id": AKID, "secret_access_key": SECRET})
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
SA = json.dumps({"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com", "private_key": PEM,
                 "private_key_id": "0123456789abcdef0123"})


def test_bedrock_keys_make_the_adapters_document() -> None:
    got = prepare("bedrock", KEYS, None, LoginFields(region="eu-west-1", inference_profile="eu"))
    assert got.base_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    target = bedrock.parse_target(got.secret)
    assert (target.region, target.profile_prefix, target.auth.type) == ("eu-west-1", "eu", "keys")
    assert target.auth.secret_access_key == SECRET
    assert got.details == {"region": "eu-west-1", "credential": "keys", "aws_profile": None, "inference_profile": "eu"}
    assert SECRET not in repr(got)


def test_bedrock_profile_and_api_key() -> None:
    chain = prepare("bedrock", "", None, LoginFields(region="us-east-1", credential="profile", aws_profile="work"))
    assert bedrock.parse_target(chain.secret).auth.profile == "work"
    key = prepare("bedrock", " key-123 ", "https://vpce.example.com", LoginFields(region="us-east-1",
                                                                                 credential="api_key"))
    assert key.base_url == "https://vpce.example.com" and bedrock.parse_target(key.secret).auth.api_key == "key-123"


@pytest.mark.parametrize(("kind", "secret", "base_url", "fields", "message"), [
    ("bedrock", KEYS, None, LoginFields(), "needs --region"),
    ("bedrock", KEYS, None, LoginFields(region="Mars"), "an AWS region like us-east-1"),
    ("bedrock", "", None, LoginFields(region="us-east-1"), "AWS keys are missing"),
    ("bedrock", json.dumps({"access_key_id": "lower", "secret_access_key": "x"}), None,
     LoginFields(region="us-east-1"), "not an AWS access key id"),
    ("bedrock", KEYS, None, LoginFields(region="us-east-1", inference_profile="mars"), "--inference-profile"),
    ("bedrock", KEYS, "http://bedrock.example.com", LoginFields(region="us-east-1"), "refusing plain http://"),
    ("vertex", SA, None, LoginFields(region="us-east5"), "needs --project"),
    ("vertex", '{"type": "authorized_user"}', None, LoginFields(project="p", region="us-east5"), "--adc"),
    ("vertex", SA, None, LoginFields(project="Bad_Project", region="us-east5"), "not a Google Cloud project id"),
    ("vertex", "", "http://10.0.0.8:8080", LoginFields(project="p", region="us-east5", credential="adc"),
     "refusing plain http://"),
    ("anthropic", "sk-ant-x", None, LoginFields(region="us-east-1"), "apply to bedrock or vertex"),
])
def test_bad_inputs_are_refused_without_quoting_secrets(kind: str, secret: str, base_url: str | None,
                                                        fields: LoginFields, message: str) -> None:
    with pytest.raises(InvalidAccount, match=message.replace("(", r"\(")) as info:
        prepare(kind, secret, base_url, fields)
    assert SECRET not in str(info.value) and "PRIVATE KEY" not in str(info.value)


def test_vertex_base_url_carries_project_and_region() -> None:
    got = prepare("vertex", SA, "http://127.0.0.1:9000", LoginFields(project="proj", region="europe-west1"))
    assert got.base_url == "http://127.0.0.1:9000/v1/projects/proj/locations/europe-west1"
    assert vertex.parse_base_url(got.base_url)[1:] == ("proj", "europe-west1")
    assert got.secret == SA.strip()
    default = prepare("vertex", "", None, LoginFields(project="proj", region="global", credential="adc"))
    assert default.base_url == "https://aiplatform.googleapis.com/v1/projects/proj/locations/global"
    assert default.secret == "adc"


def test_registry_keeps_details_and_not_secrets(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "accounts.json")
    reg.upsert("b", "bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com",
               {"region": "us-east-1", "credential": "keys", "aws_profile": None})
    reg.save()
    again = Registry(tmp_path / "accounts.json").load()
    assert again.accounts["b"].details() == {"region": "us-east-1", "credential": "keys"}
    assert "aws_profile" not in (tmp_path / "accounts.json").read_text()


def test_vertex_secret_values_cover_the_key_and_its_lines() -> None:
    values = vertex.secret_values(SA)
    assert SA in values and "0123456789abcdef0123" in values
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" in values  # a PEM line quoted alone is still caught
    assert vertex.secret_values("adc") == ()


def test_aws_keys_from_stdin_forms() -> None:
    assert parse_aws_keys(f"{AKID} {SECRET}\n") == {"access_key_id": AKID, "secret_access_key": SECRET}
    assert parse_aws_keys(f"{AKID}\t{SECRET} TOKEN") == {"access_key_id": AKID, "secret_access_key": SECRET,
                                                       "session_token": "TOKEN"}
    exported = {"Version": 1, "AccessKeyId": AKID, "SecretAccessKey": SECRET, "SessionToken": "T",
                "Expiration": "2026-12-02T05:00:00+00:00"}
    assert parse_aws_keys(json.dumps(exported))["session_token"] == "T"
    for bad in ("only-one", "a b c d", '{"AccessKeyId": "x"}', "{not json"):
        with pytest.raises(CredentialError) as info:
            parse_aws_keys(bad)
        assert "only-one" not in str(info.value)


def test_service_account_file_shape(tmp_path: Path) -> None:
    good = tmp_path / "sa.json"
    good.write_text(SA)
    assert read_service_account(str(good)) == SA
    user = tmp_path / "user.json"
    user.write_text('{"type": "authorized_user", "refresh_token": "r"}')
    with pytest.raises(CredentialError, match="use --adc"):
        read_service_account(str(user))
    with pytest.raises(CredentialError, match="cannot read"):
        read_service_account(str(tmp_path / "missing.json"))


def test_secret_parts_for_scrubbing() -> None:
    parts = secret_parts(KEYS)
    assert SECRET in parts and AKID not in parts[1:]
    assert "0123456789abcdef0123" in secret_parts(SA)
    assert orjson.loads(KEYS)["secret_access_key"] in parts


@pytest.mark.parametrize(("region", "given", "expected"), [
    ("us-east-1", None, "us"), ("eu-central-1", None, "eu"), ("ap-northeast-1", None, "apac"),
    ("ca-central-1", None, None), ("us-gov-west-1", None, None),
    ("ap-northeast-1", "jp", "jp"), ("us-east-1", "none", None), ("us-east-1", "global", "global"),
])
def test_a_bedrock_account_uses_its_regions_inference_profile_unless_told(
        region: str, given: str | None, expected: str | None) -> None:
    got = prepare("bedrock", KEYS, None, LoginFields(region=region, inference_profile=given))
    assert got.details["inference_profile"] == expected
    assert bedrock.parse_target(got.secret).profile_prefix == expected
