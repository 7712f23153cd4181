"""What a login of each account kind stores: the endpoint, the keyring document, the visible details.

An Anthropic (or Anthropic-compatible) account keeps its API key. A Bedrock account keeps the
document `upstream.bedrock.account_secret` defines (region, inference-profile prefix, and the
credential: AWS keys, a Bedrock API key, or a reference to botocore's chain). A Vertex account
keeps a service-account key file's contents, or the reference `adc`; its project and region travel
in its base URL (`upstream.vertex.base_url_for`). The region, project, credential type and profile
name are not secret: the registry keeps them so that views can show them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from dario.daemon.accounts.errors import InvalidAccount
from dario.daemon.accounts.registry import normalise_base_url
from dario.daemon.control.api import BEDROCK_CREDENTIALS, INFERENCE_PROFILES, VERTEX_CREDENTIALS
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


def prepare(kind: str, secret: str, base_url: str | None, fields: LoginFields) -> Prepared:
    """Check a login's inputs and build what is stored. Raises InvalidAccount, never quoting a secret."""
    if kind == bedrock.KIND:
        return _bedrock(secret, base_url, fields)
    if kind == vertex.KIND:
        return _vertex(secret, base_url, fields)
    _only_for(kind, fields)
    url = normalise_base_url(kind, base_url)
    secret = secret.strip()
    if not secret:
        raise InvalidAccount("the API key is empty")
    return Prepared(url, secret)


def _only_for(kind: str, fields: LoginFields) -> None:
    given = [name for name in ("region", "project", "credential", "aws_profile", "inference_profile")
             if getattr(fields, name)]
    if given:
        raise InvalidAccount(f"{', '.join(given)} apply to bedrock or vertex accounts, not to {kind}")


def _bedrock(secret: str, base_url: str | None, fields: LoginFields) -> Prepared:
    region = fields.region or ""
    if not _AWS_REGION.match(region):
        raise InvalidAccount(f"a bedrock account needs --region, an AWS region like us-east-1 (got {region!r})"
                             if region else "a bedrock account needs --region (an AWS region like us-east-1)")
    if fields.project:
        raise InvalidAccount("--project applies to vertex accounts")
    credential = fields.credential or "keys"
    if credential not in BEDROCK_CREDENTIALS:
        raise InvalidAccount(f"unknown bedrock credential {credential!r}; one of: {', '.join(BEDROCK_CREDENTIALS)}")
    prefix = fields.inference_profile or default_inference_profile(region)
    if prefix == NO_PROFILE:
        prefix = None
    if prefix is not None and prefix not in INFERENCE_PROFILES:
        raise InvalidAccount(f"--inference-profile must be one of {', '.join(INFERENCE_PROFILES)} or {NO_PROFILE}")
    profile = fields.aws_profile or None
    if profile is not None and (credential != "profile" or not _AWS_PROFILE.match(profile)):
        raise InvalidAccount("--aws-profile takes a profile name and goes without keys or --bedrock-api-key")
    secret = secret.strip()
    auth: dict[str, Any]
    if credential == "profile":
        auth = {"type": "chain", "profile": profile}
    elif credential == "api_key":
        if not secret:
            raise InvalidAccount("the Bedrock API key is empty")
        auth = {"type": "api_key", "api_key": secret}
    else:
        auth = {"type": "keys", **_aws_keys(secret)}
    url = normalise_base_url(bedrock.KIND, base_url) if base_url else f"https://bedrock-runtime.{region}.amazonaws.com"
    document = bedrock.account_secret(region, auth, prefix)
    try:
        bedrock.parse_target(document)
    except ValueError as exc:  # its messages never quote the document
        raise InvalidAccount(str(exc)) from None
    return Prepared(url, document, {"region": region, "credential": credential, "aws_profile": profile,
                                    "inference_profile": prefix})


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
    try:
        data = orjson.loads(secret) if secret else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise InvalidAccount("AWS keys are missing: give an access key id and a secret access key, "
                             "or use --aws-profile NAME (or an empty access key id) for the AWS credential chain")
    akid, key, token = data.get("access_key_id"), data.get("secret_access_key"), data.get("session_token")
    if not isinstance(akid, str) or not isinstance(key, str) or not akid.strip() or not key.strip():
        raise InvalidAccount("AWS keys need both an access key id and a secret access key")
    if not re.fullmatch(r"[A-Z0-9]{16,128}", akid.strip()):
        raise InvalidAccount("that is not an AWS access key id (AKIA… or ASIA…, letters and digits)")
    out = {"access_key_id": akid.strip(), "secret_access_key": key.strip()}
    if isinstance(token, str) and token.strip():
        out["session_token"] = token.strip()
    return out


def _vertex(secret: str, base_url: str | None, fields: LoginFields) -> Prepared:
    if not fields.project or not fields.region:
        raise InvalidAccount("a vertex account needs --project (a Google Cloud project id) and --region "
                             "(a Vertex AI location, e.g. us-east5, europe-west1 or global)")
    if fields.aws_profile or fields.inference_profile:
        raise InvalidAccount("--aws-profile and --inference-profile apply to bedrock accounts")
    credential = fields.credential or "service_account"
    if credential not in VERTEX_CREDENTIALS:
        raise InvalidAccount(f"unknown vertex credential {credential!r}; one of: {', '.join(VERTEX_CREDENTIALS)}")
    if credential == "adc":
        document = vertex.ADC_SECRET
    else:
        document = secret.strip()
        try:
            info = orjson.loads(document) if document else None
        except orjson.JSONDecodeError:
            info = None
        if not isinstance(info, dict) or info.get("type") != "service_account" \
                or not all(isinstance(info.get(k), str) and info[k] for k in ("private_key", "client_email")):
            raise InvalidAccount("--credentials must name a Google service-account JSON key file "
                                 "(\"type\": \"service_account\"); for your gcloud login use --adc")
    host = normalise_base_url(vertex.KIND, base_url) if base_url else None
    try:
        url = vertex.base_url_for(fields.project, fields.region, host)
    except ValueError as exc:
        raise InvalidAccount(str(exc)) from None
    return Prepared(url, document, {"region": fields.region, "project": fields.project, "credential": credential})
