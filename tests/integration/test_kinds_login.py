"""`dario-ctl login` for Bedrock and Vertex accounts against the fakes, as real processes.

One dariod, one fake Bedrock (SigV4 keys and a Bedrock API key) and one fake Vertex (a token
endpoint that checks RS256 JWTs). Each login is validated with the kind's own key check; a
rejected credential stores nothing; views show kind, region and project, never a secret.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakebedrock import FakeBedrock
from tests.fakevertex import FakeVertex
from tests.support import Dariod

pytestmark = pytest.mark.timeout(120)

AKID = "AKIDDARIOLOGIN00001"
SECRET = "bedrock-login-secret-access-key-0001"
PROFILE_AKID = "AKIDDARIOPROFILE0001"
PROFILE_SECRET = "bedrock-profile-secret-key-000000001"
API_KEY = "bedrock-api-key-for-login-tests-0001"


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock({AKID: SECRET, PROFILE_AKID: PROFILE_SECRET}, api_keys=[API_KEY]) as fake:
        yield fake


@pytest.fixture(scope="module")
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dario-kinds-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def gateway(bedrock: FakeBedrock, vertex: FakeVertex, files: Path) -> Iterator[Dariod]:
    aws = files / "aws-credentials"
    aws.write_text(f"[dario-test]\naws_access_key_id = {PROFILE_AKID}\naws_secret_access_key = {PROFILE_SECRET}\n")
    # What GOOGLE_APPLICATION_CREDENTIALS names, so ADC reads it (its own email: the fake keeps one key each).
    adc = vertex.service_account(files, email="dario-adc@proj.iam.gserviceaccount.com")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(aws), "AWS_CONFIG_FILE": str(files / "aws-config"),
           "AWS_EC2_METADATA_DISABLED": "true", "GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env[var] = ""
    # What login stores is read back from the file keyring, also when the suite runs on the real
    # Secret Service (CI): these tests are about each kind's document, not the keyring.
    env.update(PYTHON_KEYRING_BACKEND="tests.keyring_backend.FileKeyring",
               DARIO_TEST_KEYRING_FILE=str(files / "keyring.json"))
    d = Dariod(env=env).start()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        d.env.pop(var, None)
    try:
        yield d
    finally:
        d.cleanup()


def accounts(d: Dariod) -> dict[str, dict[str, Any]]:
    return {a["alias"]: a for a in d.ctl_json("accounts", "list")["accounts"]}


def keyring(d: Dariod) -> dict[str, Any]:
    path = Path(d.env["DARIO_TEST_KEYRING_FILE"])
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return data


def stored(d: Dariod, alias: str) -> str | None:
    for key, value in keyring(d).items():
        if alias in key:
            return str(value)
    return None


def bedrock_login(d: Dariod, fake: FakeBedrock, alias: str, *extra: str, input: str = "") -> Any:
    return d.ctl("login", alias, "--kind", "bedrock", "--region", "us-east-1", "--base-url", fake.url, *extra,
                 input=input)


def test_bedrock_keys_from_stdin(gateway: Dariod, bedrock: FakeBedrock) -> None:
    result = bedrock_login(gateway, bedrock, "aws-keys", input=f"{AKID} {SECRET}\n")
    assert result.returncode == 0, result.stderr
    assert "bedrock us-east-1" in result.stdout
    acc = accounts(gateway)["aws-keys"]
    assert (acc["kind"], acc["region"], acc["credential"], acc["status"]) == ("bedrock", "us-east-1", "keys", "ok")
    assert bedrock.requests()[-1]["path"].endswith("/count-tokens")  # checked, no tokens spent
    doc = json.loads(stored(gateway, "aws-keys") or "{}")
    assert doc["auth"] == {"type": "keys", "access_key_id": AKID, "secret_access_key": SECRET}
    # Secrets stay in the keyring: not in the registry, not in --json views.
    assert SECRET not in (gateway.home / "config" / "dario" / "accounts.json").read_text()
    assert SECRET not in gateway.ctl("status", "--json").stdout


def test_bedrock_keys_as_export_credentials_json(gateway: Dariod, bedrock: FakeBedrock) -> None:
    exported = json.dumps({"Version": 1, "AccessKeyId": AKID, "SecretAccessKey": SECRET})
    result = bedrock_login(gateway, bedrock, "aws-json", "--inference-profile", "us", input=exported)
    assert result.returncode == 0, result.stderr
    acc = accounts(gateway)["aws-json"]
    assert acc["inference_profile"] == "us" and acc["credential"] == "keys"


def test_bedrock_rejected_keys_store_nothing(gateway: Dariod, bedrock: FakeBedrock) -> None:
    result = bedrock_login(gateway, bedrock, "aws-bad", input=f"{AKID} not-the-right-secret-key-000000\n")
    assert result.returncode == 1
    assert "rejected this credential (401 InvalidSignatureException" in result.stderr
    assert "CountTokens" in result.stderr and "nothing was stored" in result.stderr
    assert "not-the-right-secret-key" not in result.stderr + result.stdout
    assert "aws-bad" not in accounts(gateway) and stored(gateway, "aws-bad") is None


def test_bedrock_api_key_is_a_bearer_token(gateway: Dariod, bedrock: FakeBedrock) -> None:
    result = bedrock_login(gateway, bedrock, "aws-apikey", "--bedrock-api-key", input=API_KEY + "\n")
    assert result.returncode == 0, result.stderr
    assert bedrock.requests()[-1]["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert accounts(gateway)["aws-apikey"]["credential"] == "api_key"


def test_bedrock_profile_by_reference(gateway: Dariod, bedrock: FakeBedrock) -> None:
    result = bedrock_login(gateway, bedrock, "aws-profile", "--aws-profile", "dario-test")
    assert result.returncode == 0, result.stderr
    assert bedrock.requests()[-1]["headers"]["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=" + PROFILE_AKID)
    acc = accounts(gateway)["aws-profile"]
    assert (acc["credential"], acc["aws_profile"]) == ("profile", "dario-test")
    doc = json.loads(stored(gateway, "aws-profile") or "{}")
    assert doc["auth"] == {"type": "chain", "profile": "dario-test"}  # a reference: no secret kept
    assert PROFILE_SECRET not in json.dumps(keyring(gateway))


def test_bedrock_access_denied_on_the_checked_model_is_not_bad_credentials(
    gateway: Dariod, bedrock: FakeBedrock
) -> None:
    bedrock.script({"error": "AccessDeniedException", "status": 403,
                    "message": "You don't have access to the model with the specified model ID."})
    result = bedrock_login(gateway, bedrock, "aws-denied", input=f"{AKID} {SECRET}\n")
    assert result.returncode == 0, result.stderr
    assert "accepted the credentials but denied CountTokens on claude-sonnet-4-5" in result.stdout
    assert "aws-denied" in accounts(gateway)


def test_vertex_service_account(gateway: Dariod, vertex: FakeVertex, files: Path) -> None:
    sa = vertex.service_account(files, email="dario-login@proj.iam.gserviceaccount.com")
    result = gateway.ctl("login", "gcp", "--kind", "vertex", "--project", "proj", "--region", "us-east5",
                         "--credentials", str(sa), "--base-url", vertex.url, input="")
    assert result.returncode == 0, result.stderr
    assert "vertex proj/us-east5" in result.stdout
    acc = accounts(gateway)["gcp"]
    assert (acc["project"], acc["region"], acc["credential"]) == ("proj", "us-east5", "service_account")
    assert acc["base_url"] == f"{vertex.url}/v1/projects/proj/locations/us-east5"
    private_key = json.loads(sa.read_text())["private_key"]
    assert json.loads(stored(gateway, "gcp") or "{}")["private_key"] == private_key
    assert "PRIVATE KEY" not in gateway.ctl("accounts", "list", "--json").stdout
    assert "count-tokens:rawPredict" in vertex.requests()[-1]["path"]


def test_vertex_rejected_key_stores_nothing(gateway: Dariod, vertex: FakeVertex, files: Path) -> None:
    other = FakeVertex().start()  # a key registered with another server: the token endpoint refuses it
    try:
        sa = other.service_account(files, email="dario-stranger@proj.iam.gserviceaccount.com")
    finally:
        other.stop()
    info = json.loads(sa.read_text())
    info["token_uri"] = vertex.url + "/token"
    sa.write_text(json.dumps(info))
    result = gateway.ctl("login", "gcp-bad", "--kind", "vertex", "--project", "proj", "--region", "us-east5",
                         "--credentials", str(sa), "--base-url", vertex.url, input="")
    assert result.returncode == 1
    assert "rejected this credential (401" in result.stderr and "nothing was stored" in result.stderr
    assert "gcp-bad" not in accounts(gateway) and stored(gateway, "gcp-bad") is None


def test_vertex_adc_by_reference(gateway: Dariod, vertex: FakeVertex) -> None:
    result = gateway.ctl("login", "gcp-adc", "--kind", "vertex", "--project", "proj", "--region", "global",
                         "--adc", "--base-url", vertex.url, input="")
    assert result.returncode == 0, result.stderr
    assert stored(gateway, "gcp-adc") == "adc"
    assert accounts(gateway)["gcp-adc"]["credential"] == "adc"


@pytest.mark.parametrize("args", [
    ["--kind", "bedrock", "--region", "us-east-1", "--aws-profile", "dario-test"],
    ["--kind", "vertex", "--project", "proj", "--region", "us-east5", "--adc"],
])
def test_plain_http_to_a_non_loopback_host_is_refused(gateway: Dariod, args: list[str]) -> None:
    result = gateway.ctl("login", "remote", *args, "--base-url", "http://gateway.example.com", input="")
    assert result.returncode == 1
    assert "refusing plain http:// for gateway.example.com" in result.stderr
    assert "remote" not in accounts(gateway)


def test_usage_errors_name_the_missing_flag(gateway: Dariod) -> None:
    result = gateway.ctl("login", "x", "--kind", "bedrock", input="")
    assert result.returncode == 2 and "--region" in result.stderr
    result = gateway.ctl("login", "x", "--kind", "vertex", "--project", "p", "--region", "us-east5", input="")
    assert result.returncode == 2 and "--credentials FILE" in result.stderr
    result = gateway.ctl("login", "x", "--project", "p", input="sk-ant-x")
    assert result.returncode == 2 and "--project apply to --kind bedrock or vertex" in result.stderr


def test_status_json_keeps_secrets_out(gateway: Dariod) -> None:
    out = gateway.ctl("status", "--json").stdout + gateway.ctl("accounts", "list").stdout
    for secret in (SECRET, API_KEY, PROFILE_SECRET, "PRIVATE KEY"):
        assert secret not in out
    assert os.environ.get("DARIO_TEST_KEYRING") or "bedrock" in out


def test_vertex_tokens_are_refreshed_in_the_background(gateway: Dariod, vertex: FakeVertex, files: Path) -> None:
    from tests.support import wait_until

    vertex.set_expires_in(4)  # refreshed at half its life: about 2 s after it was issued
    try:
        sa = vertex.service_account(files, email="dario-refresh@proj.iam.gserviceaccount.com")
        result = gateway.ctl("login", "gcp-refresh", "--kind", "vertex", "--project", "proj", "--region",
                             "us-east5", "--credentials", str(sa), "--base-url", vertex.url, input="")
        assert result.returncode == 0, result.stderr
        issued = vertex.tokens_issued()
        model_calls = [r for r in vertex.requests() if r["path"] != "/token"]
        # No request needs a token meanwhile: only dariod's refresher (TokenCache.run) can fetch one.
        wait_until(lambda: vertex.tokens_issued() > issued, 20, "a background token refresh")
        assert [r for r in vertex.requests() if r["path"] != "/token"] == model_calls
    finally:
        vertex.set_expires_in(3600)
        gateway.ctl("logout", "gcp-refresh")


def test_details_survive_a_restart(gateway: Dariod, bedrock: FakeBedrock) -> None:
    assert bedrock_login(gateway, bedrock, "aws-restart", input=f"{AKID} {SECRET}\n").returncode == 0
    gateway.stop()
    gateway.start()
    acc = accounts(gateway)["aws-restart"]
    assert (acc["kind"], acc["region"], acc["credential"]) == ("bedrock", "us-east-1", "keys")
    assert "bedrock us-east-1" in gateway.ctl("accounts", "list").stdout
