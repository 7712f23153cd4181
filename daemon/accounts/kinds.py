"""What a login of each account kind stores: the endpoint, the keyring document, the visible details.

An Anthropic (or Anthropic-compatible) account keeps its API key. A Bedrock account keeps the
document `upstream.bedrock.account_secret` defines (region, inference-profile prefix, and the
credential: AWS keys, a Bedrock API key, or a reference to botocore's chain). A Vertex account
keeps a service-account key file's contents, or the reference `adc`; its project and region travel
in its base URL (`upstream.vertex.base_url_for`). The region, project, credential type and profile
name are not secret: the registry keeps them so that views can show them.

`check_fields` judges the non-secret part alone (a `dario.toml` account is checked before any
secret is read); `prepare` adds the secret. Both raise `FieldProblem`, which names the field at
fault so a config file's report can point at its line; `config_wording` turns the login flags a
message names into the file's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.accounts.registry import normalise_base_url
from dario.daemon.control.api import ACCOUNT_KINDS, BEDROCK_CREDENTIALS, INFERENCE_PROFILES, VERTEX_CREDENTIALS
from dario.daemon.upstream import bedrock, vertex

# AWS region names (https://docs.aws.amazon.com/general/latest/gr/rande.html): us-east-1, us-gov-west-1 …
_AWS_REGION = re.compile(r"^[a-z]{2,}(?:-[a-z]+)+-\d{1,2}$")
_AWS_PROFILE = re.compile(r"^[A-Za-z0-9._@+=,-]{1,128}$")


@dataclass(frozen=True, slots=True)
class LoginFields:
    """The non-secret settings of a login, as `dario-ctl login` sends them."""

    region: str | None = None
    project: str | None = None
    credential: str | None = None
    aws_profile: str | None = None
    inference_profile: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A login ready to check and store."""

    base_url: str
    secret: str = field(repr=False)  # what the keyring keeps, and the upstream reads
    details: dict[str, str | None] = field(default_factory=dict)  # non-secret; shown by views


@dataclass(frozen=True, slots=True)
class Checked:
    """The non-secret part of a login, judged: where it goes and what views show."""

    base_url: str
    credential: str | None  # bedrock: keys, api_key or profile; vertex: service_account or adc; else None
    needs_secret: bool  # False when the credential is a reference (AWS chain, ADC): nothing secret to read
    details: dict[str, str | None] = field(default_factory=dict)


class FieldProblem(InvalidAccount):
    """Bad input in one field (`field`: a LoginFields name, "base_url" or "secret"; None: the whole login)."""

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.field = field_name


# Login flags, and the dario.toml keys that say the same (for `config_wording`).
_FLAG_KEYS = {
    "--base-url": "base_url", "--region": "region", "--project": "project", "--aws-profile": "aws_profile",
    "--inference-profile": "inference_profile", "--bedrock-api-key": 'credential = "api_key"',
    "--adc": "adc = true", "--credentials": "secret",
}
_FLAG = re.compile("|".join(re.escape(flag) for flag in sorted(_FLAG_KEYS, key=len, reverse=True)) + r"\b")


def config_wording(message: str) -> str:
    """A message of this module as a `dario.toml` reader needs it: the file's keys, not the flags."""
    return _FLAG.sub(lambda m: _FLAG_KEYS[m.group(0)], message)


def describe_reference(fields: LoginFields) -> str:
    """A credential by reference (nothing secret stored), in words."""
    if fields.credential == "adc":
        return "application default credentials"
    if fields.aws_profile:
        return f"the AWS credential chain with profile {fields.aws_profile!r}"
    return "the AWS default credential chain"


def check_fields(kind: str, base_url: str | None, fields: LoginFields) -> Checked:
    """Judge a login's non-secret inputs; raises the first FieldProblem (none is about a secret)."""
    checked, problems = field_problems(kind, base_url, fields)
    if checked is None:
        raise problems[0]
    return checked


def field_problems(kind: str, base_url: str | None, fields: LoginFields) -> tuple[Checked | None, list[FieldProblem]]:
    """What the non-secret inputs make, or every problem with them (one per field at most)."""
    problems: list[FieldProblem] = []
    if kind not in ACCOUNT_KINDS:
        problems.append(FieldProblem(f"unknown account kind {kind!r}; choose one of: {', '.join(ACCOUNT_KINDS)}",
                                     "kind"))
        return None, problems
    if kind == bedrock.KIND:
        checked = _bedrock_fields(base_url, fields, problems)
    elif kind == vertex.KIND:
        checked = _vertex_fields(base_url, fields, problems)
    else:
        given = [name for name in ("region", "project", "credential", "aws_profile", "inference_profile")
                 if getattr(fields, name)]
        if given:
            problems.append(FieldProblem(f"{', '.join(given)} apply to bedrock or vertex accounts, not to {kind}",
                                         given[0]))
        url = _url(kind, base_url, problems)
        checked = Checked(url, None, True) if url is not None else None
    return (None if problems else checked), problems


def prepare(kind: str, secret: str, base_url: str | None, fields: LoginFields) -> Prepared:
    """Check a login's inputs and build what is stored. Raises FieldProblem, never quoting a secret."""
    checked = check_fields(kind, base_url, fields)
    secret = secret.strip()
    if kind == bedrock.KIND:
        document = _bedrock_secret(secret, checked, fields)
    elif kind == vertex.KIND:
        document = _vertex_secret(secret, checked)
    else:
        if not secret:
            raise FieldProblem("the API key is empty", "secret")
        document = secret
    return Prepared(checked.base_url, document, checked.details)


def _url(kind: str, base_url: str | None, problems: list[FieldProblem]) -> str | None:
    try:
        return normalise_base_url(kind, base_url)
    except InvalidAccount as exc:
        problems.append(FieldProblem(str(exc), "base_url"))
        return None


def _bedrock_fields(base_url: str | None, fields: LoginFields, problems: list[FieldProblem]) -> Checked | None:
    region = fields.region or ""
    if not _AWS_REGION.match(region):
        problems.append(FieldProblem(
            f"a bedrock account needs --region, an AWS region like us-east-1 (got {region!r})" if region
            else "a bedrock account needs --region (an AWS region like us-east-1)", "region"))
    if fields.project:
        problems.append(FieldProblem("--project applies to vertex accounts", "project"))
    profile = fields.aws_profile or None
    credential = fields.credential or ("profile" if profile else "keys")
    if credential not in BEDROCK_CREDENTIALS:
        problems.append(FieldProblem(
            f"unknown bedrock credential {credential!r}; one of: {', '.join(BEDROCK_CREDENTIALS)}", "credential"))
    prefix = fields.inference_profile or default_inference_profile(region)
    if prefix == NO_PROFILE:
        prefix = None
    if prefix is not None and prefix not in INFERENCE_PROFILES:
        problems.append(FieldProblem(
            f"--inference-profile must be one of {', '.join(INFERENCE_PROFILES)} or {NO_PROFILE}", "inference_profile"))
    if profile is not None and (credential != "profile" or not _AWS_PROFILE.match(profile)):
        problems.append(FieldProblem("--aws-profile takes a profile name and goes without keys or --bedrock-api-key",
                                     "aws_profile"))
    url = _url(bedrock.KIND, base_url, problems) if base_url else f"https://bedrock-runtime.{region}.amazonaws.com"
    if problems or url is None:
        return None
    return Checked(url, credential, credential != "profile", {
        "region": region, "credential": credential, "aws_profile": profile, "inference_profile": prefix})


def _bedrock_secret(secret: str, checked: Checked, fields: LoginFields) -> str:
    auth: dict[str, Any]
    if checked.credential == "profile":
        auth = {"type": "chain", "profile": checked.details.get("aws_profile")}
    elif checked.credential == "api_key":
        if not secret:
            raise FieldProblem("the Bedrock API key is empty", "secret")
        auth = {"type": "api_key", "api_key": secret}
    else:
        auth = {"type": "keys", **_aws_keys(secret)}
    document = bedrock.account_secret(fields.region or "", auth, checked.details.get("inference_profile"))
    try:
        bedrock.parse_target(document)
    except ValueError as exc:  # its messages never quote the document
        raise FieldProblem(str(exc), "secret") from None
    return document


NO_PROFILE = "none"  # --inference-profile none: in-region (on-demand) model ids only

# The geographic cross-region inference profiles by the account region's prefix
# (https://docs.aws.amazon.com/bedrock/latest/userguide/inference-profiles-support.html). Claude 3.7
# Sonnet and later answer an in-region (on-demand) id with "Invocation of model ID … with on-demand
# throughput isn't supported. Retry your request with the ID or ARN of an inference profile", so an
# account without a profile could serve none of the current models.
_GEOGRAPHY = {"us": "us", "eu": "eu", "ap": "apac"}


def default_inference_profile(region: str) -> str | None:
    """The inference profile an account in `region` uses unless told otherwise (None: in-region only)."""
    if region.startswith("us-gov-"):
        return None  # GovCloud has its own profiles, not the commercial us. ones
    return _GEOGRAPHY.get(region.split("-", 1)[0])


def _aws_keys(secret: str) -> dict[str, str]:
    """AWS keys in the forms a login takes: dario-ctl's JSON (access_key_id, secret_access_key,
    session_token), `ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]`, or the JSON that
    `aws configure export-credentials --format process` prints (AccessKeyId, SecretAccessKey,
    SessionToken: https://docs.aws.amazon.com/cli/latest/reference/configure/export-credentials.html)."""
    if not secret:
        raise FieldProblem("AWS keys are missing: give an access key id and a secret access key, "
                           "or use --aws-profile NAME (or an empty access key id) for the AWS credential chain",
                           "secret")
    akid: object
    key: object
    token: object
    if secret.startswith("{"):
        try:
            data = orjson.loads(secret)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise FieldProblem("the AWS keys are not a JSON object", "secret")
        names = ("AccessKeyId", "SecretAccessKey", "SessionToken") if "AccessKeyId" in data \
            else ("access_key_id", "secret_access_key", "session_token")
        akid, key, token = (data.get(name) for name in names)
    else:
        parts = secret.split()
        if len(parts) not in (2, 3):
            raise FieldProblem("AWS keys are `ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]` "
                               "or the JSON `aws configure export-credentials --format process` prints", "secret")
        akid, key, token = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if not isinstance(akid, str) or not isinstance(key, str) or not akid.strip() or not key.strip():
        raise FieldProblem("AWS keys need both an access key id and a secret access key", "secret")
    if not re.fullmatch(r"[A-Z0-9]{16,128}", akid.strip()):
        raise FieldProblem("that is not an AWS access key id (AKIA… or ASIA…, letters and digits)", "secret")
    out = {"access_key_id": akid.strip(), "secret_access_key": key.strip()}
    if isinstance(token, str) and token.strip():
        out["session_token"] = token.strip()
    return out


def _vertex_fields(base_url: str | None, fields: LoginFields, problems: list[FieldProblem]) -> Checked | None:
    if not fields.project or not fields.region:
        problems.append(FieldProblem("a vertex account needs --project (a Google Cloud project id) and --region "
                                     "(a Vertex AI location, e.g. us-east5, europe-west1 or global)",
                                     "project" if not fields.project else "region"))
    if fields.aws_profile or fields.inference_profile:
        problems.append(FieldProblem("--aws-profile and --inference-profile apply to bedrock accounts",
                                     "aws_profile" if fields.aws_profile else "inference_profile"))
    credential = fields.credential or "service_account"
    if credential not in VERTEX_CREDENTIALS:
        problems.append(FieldProblem(
            f"unknown vertex credential {credential!r}; one of: {', '.join(VERTEX_CREDENTIALS)}", "credential"))
    host = _url(vertex.KIND, base_url, problems) if base_url else None
    if not fields.project or not fields.region or (base_url and host is None):
        return None
    try:
        url = vertex.base_url_for(fields.project, fields.region, host)
    except ValueError as exc:
        problems.append(FieldProblem(str(exc), "project" if "project" in str(exc) else "region"))
        return None
    if problems:
        return None
    return Checked(url, credential, credential != "adc",
                   {"region": fields.region, "project": fields.project, "credential": credential})


def _vertex_secret(secret: str, checked: Checked) -> str:
    if checked.credential == "adc":
        return vertex.ADC_SECRET
    try:
        info = orjson.loads(secret) if secret else None
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("type") != "service_account" \
            or not all(isinstance(info.get(k), str) and info[k] for k in ("private_key", "client_email")):
        raise FieldProblem("that is not a Google service-account JSON key (\"type\": \"service_account\", with "
                           "private_key and client_email); for your gcloud login use --adc", "secret")
    return secret
