"""Bedrock and Vertex accounts in dario.toml: each credential form an operator writes is read into
the account the service needs, each mistake is refused on its line with the file's words (never a
login flag), and `dariod --config FILE --check` says which credentials are by reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from dario.daemon import main as dariod_main
from dario.daemon.accounts.kinds import LoginFields, prepare
from dario.daemon.app import managed_accounts
from dario.daemon.teamconfig import AccountEntry, ConfigError, SecretSpec, check, parse
from dario.daemon.upstream import bedrock


def read(body: str) -> AccountEntry:
    config = parse(f'[[account]]\nalias = "x"\n{body}\n', Path("t.toml"))
    assert len(config.accounts) == 1
    return config.accounts[0]


def problems(body: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse(f'[[account]]\nalias = "x"\n{body}\n', Path("t.toml"))
    return [(p.line, p.message) for p in info.value.problems]


BEDROCK = 'kind = "bedrock"\nregion = "us-east-1"'  # lines 3 and 4
VERTEX = 'kind = "vertex"\nproject = "my-proj"\nregion = "us-east5"'  # lines 3, 4 and 5


@pytest.mark.parametrize(("body", "secret", "credential", "aws_profile", "prefix"), [
    (f'{BEDROCK}\ninference_profile = "us"\naws_profile = "dario"', None, "profile", "dario", "us"),
    # No inference_profile: the region's geography (us-east-1: us); "none": in-region ids only.
    (BEDROCK, None, "profile", None, "us"),  # no profile, no secret: botocore's default chain
    (f'{BEDROCK}\nsecret = {{ file = "/etc/dario/keys/aws" }}', SecretSpec("file", "/etc/dario/keys/aws"),
     "keys", None, "us"),
    (f'{BEDROCK}\ncredential = "api_key"\nsecret = {{ credential = "bedrock-key" }}',
     SecretSpec("credential", "bedrock-key"), "api_key", None, "us"),
    (f'{BEDROCK}\ncredential = "profile"\ninference_profile = "none"', None, "profile", None, None),
])
def test_bedrock_forms(body: str, secret: SecretSpec | None, credential: str, aws_profile: str | None,
                       prefix: str | None) -> None:
    entry = read(body)
    assert entry.kind == "bedrock"
    assert entry.secret == secret
    assert entry.base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert dict(entry.details) == {"region": "us-east-1", "credential": credential,
                                   "aws_profile": aws_profile, "inference_profile": prefix}


def test_vertex_forms() -> None:
    sa = read(f'{VERTEX}\nsecret = {{ credential = "vertex-sa" }}')
    assert sa.secret == SecretSpec("credential", "vertex-sa")
    assert sa.base_url == "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5"
    assert dict(sa.details) == {"region": "us-east5", "project": "my-proj",
                                "credential": "service_account"}
    for body in (f"{VERTEX}\nadc = true", f'{VERTEX}\ncredential = "adc"'):
        adc = read(body)
        assert adc.secret is None and adc.details["credential"] == "adc"
    local = read(f'{VERTEX}\nadc = true\nbase_url = "http://127.0.0.1:9000"')
    assert local.base_url == "http://127.0.0.1:9000/v1/projects/my-proj/locations/us-east5"


@pytest.mark.parametrize(("body", "line", "expected"), [
    ('kind = "bedrock"\naws_profile = "dario"', 1, "a bedrock account needs region"),
    ('kind = "bedrock"\nregion = "Mars"\naws_profile = "dario"', 4, "an AWS region like us-east-1 (got 'Mars')"),
    (f'{BEDROCK}\ninference_profile = "mars"', 5, "inference_profile must be one of us, eu, apac, jp, global or none"),
    (f'{BEDROCK}\ncredential = "sso"', 5, "unknown bedrock credential 'sso'; one of: keys, api_key, profile"),
    (f'{BEDROCK}\ncredential = "keys"\naws_profile = "dario"\nsecret = {{ env = "K" }}', 6,
     "aws_profile takes a profile name and goes without keys or credential = \"api_key\""),
    (f'{BEDROCK}\ncredential = "api_key"', 1, "secret is required: AWS keys or a Bedrock API key"),
    (f'{BEDROCK}\ncredential = "keys"', 1, "secret is required"),
    (f'{BEDROCK}\naws_profile = "dario"\nsecret = {{ env = "K" }}', 6,
     "secret is not used with the AWS credential chain with profile 'dario'; remove it"),
    (f'{BEDROCK}\ncredential = "profile"\nsecret = {{ env = "K" }}', 6,
     "secret is not used with the AWS default credential chain"),
    (f'{BEDROCK}\nproject = "p"', 5, "project applies to vertex accounts"),
    (f'{BEDROCK}\nbase_url = "http://bedrock.example.com"', 5, "refusing plain http://"),
    (f'{BEDROCK}\nadc = true', 5, "adc applies to vertex accounts"),
    ('kind = "vertex"\nregion = "us-east5"\nadc = true', 1, "a vertex account needs project"),
    ('kind = "vertex"\nproject = "p"\nadc = true', 1, "and region (a Vertex AI location"),
    ('kind = "vertex"\nproject = "Bad_Project"\nregion = "us-east5"\nadc = true', 4,
     "'Bad_Project' is not a Google Cloud project id"),
    (VERTEX, 1, "secret is required: the service-account JSON, e.g. secret = { credential = \"NAME\" }; "
                "or adc = true"),
    (f'{VERTEX}\nadc = true\nsecret = {{ env = "K" }}', 6, "adc = true uses application default credentials"),
    (f'{VERTEX}\nadc = "yes"', 6, "write adc = true"),
    (f'{VERTEX}\ncredential = "api_key"\nsecret = {{ env = "K" }}', 6, "unknown vertex credential 'api_key'"),
    (f'{VERTEX}\naws_profile = "dario"\nsecret = {{ env = "K" }}', 6,
     "aws_profile and inference_profile apply to bedrock accounts"),
    ('credential = "api_key"\nsecret = { env = "K" }', 3,
     "credential apply to bedrock or vertex accounts, not to anthropic"),
    ('kind = "bedrok"\nregion = "us-east-1"', 3, "unknown account kind 'bedrok'"),
])
def test_each_cloud_problem_names_its_line_in_the_files_words(body: str, line: int, expected: str) -> None:
    found = problems(body)
    assert len(found) == 1, found
    found_line, message = found[0]
    assert message.startswith("[[account]] #1 (x): ")
    assert expected in message
    assert found_line == line
    assert "--" not in message  # the file's keys, not dario-ctl's flags


def test_every_field_problem_of_an_account_is_reported_at_once() -> None:
    found = problems('kind = "bedrock"\nregion = "Mars"\ninference_profile = "mars"\ncredential = "sso"\n'
                     'project = "p"\nbase_url = "ftp://x"')
    assert [line for line, _ in found] == [4, 7, 6, 5, 8]
    assert "region" in found[0][1] and "project applies" in found[1][1] and "credential 'sso'" in found[2][1]
    assert "inference_profile" in found[3][1] and "base_url must be an http(s) URL" in found[4][1]


def test_the_file_becomes_managed_accounts_the_service_can_prepare() -> None:
    text = f"""
[[account]]
alias = "aws"
{BEDROCK}
aws_profile = "dario"

[[account]]
alias = "gcp"
{VERTEX}
base_url = "http://127.0.0.1:9000"
secret = {{ env = "SA" }}
"""
    aws, gcp = managed_accounts(parse(text, Path("t.toml")))
    assert aws.source is None and aws.origin() == "the AWS credential chain with profile 'dario'"
    target = bedrock.parse_target(aws.stored(""))
    assert (target.region, target.auth.type, target.auth.profile) == ("us-east-1", "chain", "dario")
    assert gcp.source is not None and gcp.origin() == "environment variable SA"
    assert gcp.base_url == "http://127.0.0.1:9000/v1/projects/my-proj/locations/us-east5"
    assert gcp.details == {"region": "us-east5", "project": "my-proj", "credential": "service_account"}
    # What prepare stores from the same input is what a login of the same fields stores.
    assert aws.stored("") == prepare("bedrock", "", None, LoginFields(region="us-east-1", credential="profile",
                                                                       aws_profile="dario")).secret


@pytest.mark.parametrize("keys", [
    "AKIAEXAMPLEKEY000001 wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAEXAMPLEKEY000001\nwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nSESSIONTOKEN",
    '{"Version": 1, "AccessKeyId": "AKIAEXAMPLEKEY000001", '
    '"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SessionToken": "SESSIONTOKEN"}',
])
def test_aws_keys_are_taken_in_the_forms_dario_ctl_login_reads(keys: str) -> None:
    got = prepare("bedrock", keys, None, LoginFields(region="us-east-1"))
    auth = bedrock.parse_target(got.secret).auth
    assert (auth.access_key_id, auth.secret_access_key) == ("AKIAEXAMPLEKEY000001",
                                                            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert auth.session_token == ("SESSIONTOKEN" if "SESSION" in keys else None)


def test_check_notes_credentials_by_reference_and_reports_cloud_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[[account]]\nalias = "aws"\n{BEDROCK}\n\n[[account]]\nalias = "gcp"\n{VERTEX}\nadc = true\n'
                    f'\n[[account]]\nalias = "sa"\n{VERTEX}\nsecret = {{ env = "SA_JSON" }}\n')
    report, code = check(good)
    assert code == 0, report
    assert "OK (3 accounts)" in report
    assert "aws: the AWS default credential chain: by reference, nothing to read" in report
    assert "gcp: application default credentials: by reference, nothing to read" in report
    assert "sa: environment variable SA_JSON" in report

    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[account]]\nalias = "aws"\nkind = "bedrock"\nregion = "moon-1"\n\n'
                   f'[[account]]\nalias = "gcp"\n{VERTEX}\n')
    with pytest.raises(SystemExit) as exit_info:
        dariod_main.settings_and_config(["--config", str(bad), "--check"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: [[account]] #1 (aws): a bedrock account needs region, an AWS region like us-east-1" in err
    assert f"{bad}:6: [[account]] #2 (gcp): secret is required: the service-account JSON" in err
    assert "2 problems" in err
