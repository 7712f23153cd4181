"""Reading a Bedrock or Vertex credential for `dario-ctl login`: prompts, piped stdin, key files.

AWS keys come as an access key id and a secret access key (and, for temporary credentials, a
session token). On a terminal dario-ctl asks for them, the secret hidden; an empty access key id
means "no keys: use the AWS credential chain" (environment, shared files, SSO, instance role), as
with `--aws-profile`. Piped stdin takes either `ACCESS_KEY_ID SECRET [SESSION_TOKEN]` or the JSON
that `aws configure export-credentials --format process` prints
(https://docs.aws.amazon.com/cli/latest/reference/configure/export-credentials.html).

Nothing here prints a secret; errors name the problem only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


class CredentialError(ValueError):
    """The input is not a credential dario-ctl can use; the message never quotes it."""


def parse_aws_keys(text: str) -> dict[str, str]:
    """`ACCESS_KEY_ID SECRET [SESSION_TOKEN]`, or export-credentials JSON → the keys as the daemon takes them."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise CredentialError("the AWS credentials on stdin are not valid JSON") from None
        if not isinstance(data, dict):
            raise CredentialError("the AWS credentials on stdin are not a JSON object")
        akid, secret, token = data.get("AccessKeyId"), data.get("SecretAccessKey"), data.get("SessionToken")
        if not isinstance(akid, str) or not isinstance(secret, str) or not akid or not secret:
            raise CredentialError("the JSON on stdin needs AccessKeyId and SecretAccessKey "
                                  "(as `aws configure export-credentials` prints them)")
        return _keys(akid, secret, token if isinstance(token, str) else None)
    parts = text.split()
    if len(parts) not in (2, 3):
        raise CredentialError("give AWS keys on stdin as `ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]` "
                              "or as `aws configure export-credentials` JSON")
    return _keys(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _keys(akid: str, secret: str, token: str | None) -> dict[str, str]:
    out = {"access_key_id": akid.strip(), "secret_access_key": secret.strip()}
    if token and token.strip():
        out["session_token"] = token.strip()
    return out


def prompt_aws_keys(alias: str) -> dict[str, str] | None:
    """Ask on the terminal; None when the access key id is left empty (use the AWS credential chain)."""
    import getpass

    try:
        akid = input(f"AWS access key id for {alias} (empty: use the AWS credential chain): ").strip()
        if not akid:
            return None
        secret = getpass.getpass("AWS secret access key (input hidden): ").strip()
        token = getpass.getpass("AWS session token, for temporary keys (input hidden; empty: none): ").strip()
    except EOFError:
        raise CredentialError("no AWS keys given") from None
    if not secret:
        raise CredentialError("the AWS secret access key is empty")
    return _keys(akid, secret, token or None)


def read_stdin() -> str:
    return sys.stdin.read() if sys.stdin is not None else ""


def read_service_account(path: str) -> str:
    """A Google service-account key file's contents, checked for its shape (never quoted back)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        info: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise CredentialError(f"{path} is not JSON: --credentials takes a service-account key file") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        kind = info.get("type") if isinstance(info, dict) else None
        hint = " (for your own gcloud login use --adc)" if kind == "authorized_user" else ""
        raise CredentialError(f"{path} is not a service-account key file (\"type\": \"service_account\"){hint}")
    return text.strip()


def secret_parts(secret: str) -> list[str]:
    """The strings of a credential that must never be shown, for scrubbing error text."""
    parts = [secret] if secret else []
    try:
        data: Any = orjson.loads(secret) if secret.startswith("{") else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for name in ("secret_access_key", "session_token", "private_key", "private_key_id", "client_secret"):
            value = data.get(name)
            if isinstance(value, str) and value:
                parts.append(value)
    return parts
