"""Bedrock and Vertex accounts defined in dario.toml: a real dariod started with `--config`,
serving through the fake Bedrock (SigV4 checked against the keys it knows) and the fake Vertex (a
service account's signed JWT exchanged for a token), with each credential form an operator writes.

Each Bedrock account signs with its own access key id, so the fake's log shows which credential
form reached the upstream: AWS keys from a secret file (`AKID SECRET`), export-credentials JSON
with a session token from a systemd credential, an AWS profile (botocore's shared credentials
file) and botocore's default chain (environment variables), the last two with no secret at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakebedrock import FakeBedrock
from tests.fakevertex import FakeVertex
from tests.integration.test_pool import post
from tests.integration.test_team_config import accounts, team_dariod, write_secret
from tests.support import Dariod

pytestmark = pytest.mark.timeout(120)

MODEL = "claude-sonnet-4-5"
AKID_FILE, SECRET_FILE = "AKIDTEAMFILE00000001", "team-file-secret-access-key-0001"
AKID_JSON, SECRET_JSON, TOKEN_JSON = "ASIATEAMJSON00000002", "team-json-secret-access-key-0002", "team-session-tok-02"
AKID_PROFILE, SECRET_PROFILE = "AKIDTEAMPROFILE00003", "team-profile-secret-access-key-03"
AKID_CHAIN, SECRET_CHAIN = "AKIDTEAMCHAIN0000004", "team-chain-secret-access-key-0004"
SECRETS = (SECRET_FILE, SECRET_JSON, TOKEN_JSON, SECRET_PROFILE, SECRET_CHAIN)


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeBedrock]:
    creds = {AKID_FILE: SECRET_FILE, AKID_JSON: SECRET_JSON, AKID_PROFILE: SECRET_PROFILE, AKID_CHAIN: SECRET_CHAIN}
    with FakeBedrock(creds, session_tokens={AKID_JSON: TOKEN_JSON}) as fake:
        yield fake


@pytest.fixture(scope="module")
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


def cloud_config(bedrock: FakeBedrock, vertex: FakeVertex) -> str:
    return f"""
[server]
queue_timeout = 3

[[account]]
alias = "aws-file"
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock.url}"
secret = {{ file = "@HOME@/keys/aws" }}

[[account]]
alias = "aws-json"
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock.url}"
secret = {{ credential = "aws-export" }}

[[account]]
alias = "aws-profile"
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock.url}"
aws_profile = "dario"

[[account]]
alias = "aws-chain"
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock.url}"

[[account]]
alias = "gcp-main"
kind = "vertex"
project = "proj"
region = "us-east5"
base_url = "{vertex.url}"
secret = {{ credential = "vertex-sa" }}
"""


def aws_env(home: Path) -> dict[str, str]:
    """botocore's files and environment for the profile and default-chain accounts (no instance metadata)."""
    folder = home / "aws"
    folder.mkdir(mode=0o700)
    (folder / "credentials").write_text(
        f"[dario]\naws_access_key_id = {AKID_PROFILE}\naws_secret_access_key = {SECRET_PROFILE}\n")
    (folder / "config").write_text("")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"), "AWS_CONFIG_FILE": str(folder / "config"),
            "AWS_ACCESS_KEY_ID": AKID_CHAIN, "AWS_SECRET_ACCESS_KEY": SECRET_CHAIN,
            "AWS_EC2_METADATA_DISABLED": "true"}


def ask(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def signed_by(bedrock: FakeBedrock) -> list[str]:
    """The access key id of each model call the fake Bedrock received."""
    found = []
    for r in bedrock.requests():
        m = re.search(r"Credential=([A-Z0-9]+)/", r["headers"].get("authorization", ""))
        found.append(m.group(1) if m else "")
    return found


def vertex_calls(vertex: FakeVertex) -> list[dict[str, Any]]:
    return [r for r in vertex.requests() if "rawPredict" in str(r.get("path", ""))]


@pytest.fixture
def cloud(dariod_factory: Callable[..., Dariod], bedrock: FakeBedrock, vertex: FakeVertex) -> Dariod:
    bedrock.clear()
    vertex.clear()
    d = team_dariod(dariod_factory, cloud_config(bedrock, vertex), start=False)
    d.env.update(aws_env(d.home))
    write_secret(d.home / "keys" / "aws", f"{AKID_FILE} {SECRET_FILE}")
    export = {"Version": 1, "AccessKeyId": AKID_JSON, "SecretAccessKey": SECRET_JSON, "SessionToken": TOKEN_JSON,
              "Expiration": "2099-01-01T00:00:00Z"}
    write_secret(d.home / "credentials" / "aws-export", json.dumps(export))
    sa = vertex.service_account(d.home)
    write_secret(d.home / "credentials" / "vertex-sa", sa.read_text())
    return d.start()


def test_each_credential_form_serves_and_status_shows_region_and_project(
        cloud: Dariod, bedrock: FakeBedrock, vertex: FakeVertex) -> None:
    status = cloud.ctl_json("status")
    by_alias = {a["alias"]: a for a in status["accounts"]}
    assert {a["status"] for a in by_alias.values()} == {"ok"}, by_alias
    assert all(a["managed_by"] == "config" for a in by_alias.values())
    assert {alias: (a.get("region"), a.get("credential"), a.get("aws_profile")) for alias, a in by_alias.items()
            if alias.startswith("aws-")} == {
        "aws-file": ("us-east-1", "keys", None), "aws-json": ("us-east-1", "keys", None),
        "aws-profile": ("us-east-1", "profile", "dario"), "aws-chain": ("us-east-1", "profile", None)}
    gcp = by_alias["gcp-main"]
    assert (gcp.get("project"), gcp.get("region"), gcp.get("credential")) == ("proj", "us-east5", "service_account")
    assert status.get("keyring") is None  # nothing read from a keyring

    expected = {"aws-file": AKID_FILE, "aws-json": AKID_JSON, "aws-profile": AKID_PROFILE, "aws-chain": AKID_CHAIN}
    for alias, akid in expected.items():
        bedrock.clear()
        assert cloud.ctl("accounts", "prefer", alias).returncode == 0
        code, headers, body = post(cloud.url, ask(f"through {alias}"))
        assert code == 200, body
        assert headers["x-dario-account"] == alias
        assert orjson.loads(body)["content"][0]["type"] == "text"
        assert signed_by(bedrock) == [akid]  # aws-json's session token is checked by the fake too

    assert cloud.ctl("accounts", "prefer", "gcp-main").returncode == 0
    code, headers, body = post(cloud.url, ask("through vertex"))
    assert code == 200, body
    assert headers["x-dario-account"] == "gcp-main"
    calls = vertex_calls(vertex)
    assert len(calls) == 1 and "/projects/proj/locations/us-east5/" in calls[0]["path"]

    # Nothing secret in what dario shows or logs.
    shown = [cloud.ctl("status", "--json").stdout, cloud.ctl("accounts", "list").stdout]
    assert cloud.stop() == 0
    shown.append(cloud.stderr())
    private_key = orjson.loads((cloud.home / "credentials" / "vertex-sa").read_text())["private_key"]
    for text in shown:
        for secret in (*SECRETS, private_key.splitlines()[1]):
            assert secret not in text


def test_a_bad_secret_needs_login_naming_the_source_and_refresh_rereads_it(
        cloud: Dariod, bedrock: FakeBedrock, vertex: FakeVertex) -> None:
    # Break both secrets at their sources, as an operator's mistake would, and re-read them.
    write_secret(cloud.home / "keys" / "aws", "just-one-word-NOTAKEY")
    write_secret(cloud.home / "credentials" / "vertex-sa", '{"type": "authorized_user", "refresh_token": "RTVALUE"}')
    result = cloud.ctl("refresh", "--json")
    assert result.returncode != 0  # some accounts failed
    refreshed = {r["alias"]: r for r in orjson.loads(result.stdout)["results"]}
    assert refreshed["aws-file"]["ok"] is False and refreshed["gcp-main"]["ok"] is False
    by_alias = accounts(cloud)
    aws, gcp = by_alias["aws-file"], by_alias["gcp-main"]
    assert aws["status"] == "needs_login" and gcp["status"] == "needs_login"
    assert f"secret file {cloud.home / 'keys' / 'aws'} does not hold a usable credential" in aws["reason"]
    assert "ACCESS_KEY_ID SECRET_ACCESS_KEY" in aws["reason"] and "refresh aws-file" in aws["reason"]
    assert "systemd credential 'vertex-sa' does not hold a usable credential" in gcp["reason"]
    assert "service-account" in gcp["reason"] and "adc = true" in gcp["reason"] and "--" not in gcp["reason"]
    shown = json.dumps(by_alias) + json.dumps(refreshed)
    assert "NOTAKEY" not in shown and "RTVALUE" not in shown
    assert by_alias["aws-json"]["status"] == "ok"  # the others are untouched

    # Fixed at the source: refresh reads and prepares it again, and the account serves.
    write_secret(cloud.home / "keys" / "aws", f"{AKID_FILE}\n{SECRET_FILE}\n")
    assert cloud.ctl_json("refresh", "aws-file")["results"][0]["ok"] is True
    bedrock.clear()
    assert cloud.ctl("accounts", "prefer", "aws-file").returncode == 0
    code, headers, _ = post(cloud.url, ask("after the fix"))
    assert (code, headers["x-dario-account"]) == (200, "aws-file")
    assert signed_by(bedrock)[-1] == AKID_FILE
    assert "NOTAKEY" not in cloud.stderr() and "RTVALUE" not in cloud.stderr()


def test_keys_from_the_keyring_and_vertex_application_default_credentials(
        dariod_factory: Callable[..., Dariod], bedrock: FakeBedrock, vertex: FakeVertex) -> None:
    config = f"""
[[account]]
alias = "aws-kr"
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock.url}"
secret = {{ keyring = true }}
preferred = true

[[account]]
alias = "gcp-adc"
kind = "vertex"
project = "proj"
region = "us-east5"
base_url = "{vertex.url}"
adc = true
"""
    bedrock.clear()
    vertex.clear()
    d = team_dariod(dariod_factory, config, start=False)
    store = d.home / "keyring.json"
    store.write_text(json.dumps({"dario\0aws-kr": f"{AKID_FILE} {SECRET_FILE}\n"}))
    # ADC as google-auth finds it: GOOGLE_APPLICATION_CREDENTIALS names a service-account file.
    d.env.update(PYTHON_KEYRING_BACKEND="tests.keyring_backend.FileKeyring", DARIO_TEST_KEYRING_FILE=str(store),
                 GOOGLE_APPLICATION_CREDENTIALS=str(vertex.service_account(d.home)))
    d.start()
    by_alias = accounts(d)
    assert by_alias["gcp-adc"]["credential"] == "adc" and by_alias["gcp-adc"]["project"] == "proj"

    code, headers, body = post(d.url, ask("keys from the keyring"))
    assert (code, headers["x-dario-account"]) == (200, "aws-kr"), body
    assert signed_by(bedrock) == [AKID_FILE]  # the keyring's `AKID SECRET` became the account's document

    assert d.ctl("accounts", "prefer", "gcp-adc").returncode == 0
    code, headers, body = post(d.url, ask("application default credentials"))
    assert (code, headers["x-dario-account"]) == (200, "gcp-adc"), body
    assert len(vertex_calls(vertex)) == 1
