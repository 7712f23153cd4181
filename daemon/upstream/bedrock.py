"""The Bedrock adapter: Claude through Amazon Bedrock's bedrock-runtime InvokeModel API.

Wire changes against Anthropic's Messages API
(https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages.html):
the model leaves the body for the path (`/model/{modelId}/invoke`, or
`/invoke-with-response-stream` when the client asked for a stream), `stream` is dropped (the path
decides), `anthropic_version: bedrock-2023-05-31` goes into the body and the `anthropic-beta`
header becomes the body list `anthropic_beta`. Streams come back in AWS's binary event-stream
framing (`application/vnd.amazon.eventstream`), decoded with botocore's own parser; each `chunk`
event carries one Anthropic stream event as base64 JSON, re-emitted here as Anthropic SSE.
count_tokens goes through CountTokens (`POST /model/{modelId}/count-tokens`, botocore's
`bedrock-runtime` service model), which costs no tokens and so also checks a credential.

How an account reaches `prepare` (the extension to the `Upstream` protocol): the relay passes
`(base_url, secret, call)` unchanged, and for this kind `secret` is a JSON document, built with
`account_secret()`, holding both the credential and the account's non-secret target:

    {"region": "eu-west-1", "profile_prefix": "eu",
     "auth": {"type": "keys", "access_key_id": ..., "secret_access_key": ..., "session_token": ...}
           | {"type": "api_key", "api_key": ...}          # a Bedrock API key, sent as a bearer token
           | {"type": "chain", "profile": "NAME" | null}}  # botocore's chain: profile, SSO, env, role

`base_url` is `https://bedrock-runtime.{region}.amazonaws.com` or any override (a VPC endpoint, a
gateway, the tests' fake); the signing region always comes from the document. `profile_prefix`
(`us`, `eu`, `jp`, `apac`, `global`) turns a model id into a cross-region inference profile id.

`prepare` builds the request without credentials (`BedrockRequest`, which keeps the parsed auth);
`send` adds them: a bearer header, or a SigV4 signature by botocore's `SigV4Auth` (service
`bedrock`). Credentials from botocore's chain are resolved and refreshed in a worker thread (the
chain may read files or call STS/SSO/IMDS), cached and renewed before they expire.

The relay knows nothing of AWS: a request that cannot be made (an unknown model, a bad account
document, a chain with no credentials) is refused by `send` with a local Anthropic-shaped answer,
nothing sent, and every error answer from Bedrock is rewritten into Anthropic's error shape
(`error_body`) with the AWS error name kept in `x-amzn-errortype` for `classify`.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import trio

from dario.daemon import __version__
from dario.daemon.errors import ANTHROPIC_STATUS, anthropic_type_for_status
from dario.daemon.upstream import ratelimits
from dario.daemon.upstream.base import Call, Request, StreamDecoder, Upstream, Verdict, VerdictKind
from dario.daemon.upstream.errors import MAX_MESSAGE, UpstreamErrorInfo
from dario.daemon.upstream.httpclient import ConnectError, HttpClient, Response
from dario.daemon.upstream.local import LocalReply, json_headers, read_capped, refusal
from dario.daemon.upstream.modelids import PROFILE_PREFIXES, ModelIds
from dario.daemon.upstream.sse import MAX_PENDING_EVENT, EventTooLarge

if TYPE_CHECKING:
    from botocore.credentials import Credentials, ReadOnlyCredentials

# botocore is imported where it is used, not here: dariod builds this adapter whether or not any
# Bedrock account exists, and importing botocore costs every user about 7 MB of resident memory.

KIND = "bedrock"
SIGNING_SERVICE = "bedrock"  # botocore's bedrock-runtime model: "signingName": "bedrock"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
USER_AGENT = f"dario/{__version__}".encode()
PATH_MESSAGES = "/v1/messages"
PATH_COUNT_TOKENS = "/v1/messages/count_tokens"
EVENTSTREAM_TYPE = b"application/vnd.amazon.eventstream"
# A model to count against when checking a credential: CountTokens takes bare ids only.
CHECK_MODEL = "claude-sonnet-4-5"
CREDENTIAL_REFRESH_MARGIN = 300.0  # seconds before expiry when chain credentials are renewed

# Anthropic model ids → Bedrock ids come from the shared table (modelids.py, extended by the
# user's models.json); an id already in Bedrock's form (or an ARN) passes through.
_HOST_REGION = re.compile(r"^bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")


class BedrockCallError(ValueError):
    """A request dario can answer itself, before anything is sent (an unknown model, a bad body).

    Carries the status and an Anthropic-shaped body for the client; the verdict is FINAL.
    """

    def __init__(self, status: int, etype: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.etype = etype
        self.body = orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})
        self.verdict = Verdict(VerdictKind.FINAL, UpstreamErrorInfo(etype, message, False, None))


# -- the account document ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    type: str  # "keys" | "api_key" | "chain"
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)
    api_key: str = field(default="", repr=False)
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A Bedrock account's settings and credential, as read from its secret document."""

    region: str
    auth: Auth = field(repr=False)
    profile_prefix: str | None = None


def account_secret(region: str, auth: dict[str, Any], profile_prefix: str | None = None) -> str:
    """The secret document `prepare` reads (see the module docstring)."""
    return orjson.dumps({"region": region, "profile_prefix": profile_prefix, "auth": auth}).decode()


def parse_target(secret: str) -> Target:
    """Read an account document. Errors never quote the document: it holds credentials."""
    try:
        doc = orjson.loads(secret)
    except orjson.JSONDecodeError:
        raise ValueError("a Bedrock account's secret is not a JSON document; log in again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("region"), str) or not isinstance(doc.get("auth"), dict):
        raise ValueError("a Bedrock account's secret needs a region and an auth object; log in again")
    prefix = doc.get("profile_prefix")
    if prefix is not None and prefix not in PROFILE_PREFIXES:
        raise ValueError(f"unknown inference-profile prefix {prefix!r} (use one of us, eu, jp, apac, global)")
    return Target(doc["region"], _parse_auth(doc["auth"]), prefix)


def secret_values(secret: str) -> tuple[str, ...]:
    """The credential strings inside an account document, for redacting upstream text.

    Redacting the whole document (as for an Anthropic key) would miss a secret key quoted alone.
    """
    try:
        auth = parse_target(secret).auth
    except ValueError:
        return (secret,)
    return tuple(v for v in (auth.secret_access_key, auth.session_token, auth.api_key, secret) if v)


def _parse_auth(raw: dict[str, Any]) -> Auth:
    kind = raw.get("type")
    if kind == "keys":
        akid, sk, token = raw.get("access_key_id"), raw.get("secret_access_key"), raw.get("session_token")
        if not isinstance(akid, str) or not isinstance(sk, str) or not akid or not sk:
            raise ValueError("static AWS credentials need access_key_id and secret_access_key")
        return Auth("keys", akid, sk, token if isinstance(token, str) and token else None)
    if kind == "api_key":
        key = raw.get("api_key")
        if not isinstance(key, str) or not key:
            raise ValueError("a Bedrock API key is empty")
        return Auth("api_key", api_key=key)
    if kind == "chain":
        profile = raw.get("profile")
        return Auth("chain", profile=profile if isinstance(profile, str) and profile else None)
    raise ValueError("unknown Bedrock credential type (keys, api_key or chain)")


def region_from_url(base_url: str) -> str | None:
    """The region in a standard bedrock-runtime host name, if it is one."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    match = _HOST_REGION.match(host)
    return match.group(1) if match else None


BUILTIN_IDS = ModelIds()


def bedrock_model_id(model: str, profile_prefix: str | None, ids: ModelIds = BUILTIN_IDS) -> str:
    """A client's model id → the id Bedrock takes in the path. Raises BedrockCallError if unknown."""
    native = ids.bedrock_id(model, profile_prefix)
    if native is None:
        raise BedrockCallError(400, "invalid_request_error",
                               f"model {model!r} is not offered through Amazon Bedrock by dario's model table "
                               "(models.json can add it)")
    return native


# -- the request body ----------------------------------------------------------------------


def _betas(call: Call) -> list[str]:
    # The Anthropic SDKs' Bedrock clients split the header on commas into the body list.
    betas: list[str] = []
    for key, value in call.headers:
        if key == b"anthropic-beta":
            betas += [b.strip() for b in value.decode("latin-1").split(",") if b.strip()]
    return betas


def _load_body(call: Call) -> tuple[str, dict[str, Any]]:
    """(the client's model, the body without it)."""
    try:
        body = orjson.loads(call.body)
    except orjson.JSONDecodeError:
        raise BedrockCallError(400, "invalid_request_error", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BedrockCallError(400, "invalid_request_error", "the request body must be a JSON object")
    model = body.pop("model", None)
    if not isinstance(model, str) or not model:
        raise BedrockCallError(400, "invalid_request_error", "model: field required")
    return model, body


def invoke_body(call: Call) -> tuple[str, bool, bytes]:
    """(client model, stream?, Bedrock InvokeModel body) for a Messages API call."""
    model, body = _load_body(call)
    stream = bool(body.pop("stream", False))
    body["anthropic_version"] = ANTHROPIC_VERSION
    betas = _betas(call)
    if betas:
        body["anthropic_beta"] = betas
    return model, stream, orjson.dumps(body)


def count_tokens_body(call: Call) -> tuple[str, bytes]:
    """CountTokens wraps the InvokeModel body, base64-encoded, as `input.invokeModel.body`."""
    model, body = _load_body(call)
    body.pop("stream", None)
    body["anthropic_version"] = ANTHROPIC_VERSION
    # count_tokens has no max_tokens, but InvokeModel requires one; it does not change the count.
    body.setdefault("max_tokens", 1)
    inner = base64.b64encode(orjson.dumps(body)).decode()
    return model, orjson.dumps({"input": {"invokeModel": {"body": inner}}})


# -- credentials --------------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    creds: ReadOnlyCredentials
    expires: float | None  # epoch seconds, None for credentials that do not expire
    source: Any = None  # botocore's credentials object: a refreshable one renews itself


class CredentialChain:
    """Frozen credentials from botocore's chain per profile, fetched off the event loop."""

    def __init__(self, margin: float = CREDENTIAL_REFRESH_MARGIN) -> None:
        self._margin = margin
        self._cache: dict[str | None, _Cached] = {}
        self._locks: dict[str | None, trio.Lock] = {}

    async def get(self, profile: str | None) -> ReadOnlyCredentials:
        cached = self._cache.get(profile)
        if cached is not None and not self._stale(cached):
            return cached.creds
        lock = self._locks.setdefault(profile, trio.Lock())
        async with lock:
            cached = self._cache.get(profile)
            if cached is None or self._stale(cached):
                cached = await trio.to_thread.run_sync(_resolve_chain, profile, cached)
                self._cache[profile] = cached
        return cached.creds

    def _stale(self, cached: _Cached) -> bool:
        return cached.expires is not None and cached.expires - time.time() < self._margin


def _resolve_chain(profile: str | None, previous: _Cached | None) -> _Cached:
    """Blocking (files, STS, SSO, IMDS): run in a worker thread."""
    source = previous.source if previous is not None and previous.source is not None else _chain_source(profile)
    # botocore's RefreshableCredentials renew here once inside their own advisory window (15 min
    # before expiry), which is wider than our margin, so a stale entry comes back fresh.
    frozen = source.get_frozen_credentials()
    expiry = getattr(source, "_expiry_time", None)  # where RefreshableCredentials keep it
    return _Cached(frozen, expiry.timestamp() if expiry is not None else None, source)


def _chain_source(profile: str | None) -> Any:
    import botocore.session

    creds = botocore.session.Session(profile=profile).get_credentials()
    if creds is None:
        where = f"profile {profile!r}" if profile else "the default AWS credential chain"
        raise CredentialsUnavailable(
            f"no AWS credentials found through {where}; run `aws configure` or `aws sso login`"
        )
    return creds


class CredentialsUnavailable(Exception):
    """botocore's chain found nothing to sign with."""


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BedrockRequest(Request):
    """A request still to be authorised: `send` signs it (or adds the bearer key) as it goes out."""

    region: str = ""
    auth: Auth | None = field(default=None, repr=False)
    refused: tuple[int, str, str] | None = None  # (status, Anthropic error type, message): answered here


def _refused(status: int, etype: str, message: str) -> BedrockRequest:
    return BedrockRequest("POST", "", [], b"", refused=(status, etype, message))


def _sign(request: BedrockRequest, creds: Credentials | ReadOnlyCredentials) -> list[tuple[bytes, bytes]]:
    """SigV4 by botocore (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
    aws = AWSRequest(method=request.method, url=request.url, data=request.body, headers=headers)
    signer_creds = creds if isinstance(creds, Credentials) else Credentials(creds.access_key, creds.secret_key,
                                                                          creds.token)
    SigV4Auth(signer_creds, SIGNING_SERVICE, request.region).add_auth(aws)
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in aws.headers.items()]


# -- answers ------------------------------------------------------------------------------

# x-amzn-ErrorType / __type → what it means for the account, and the Anthropic error type.
# https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html#API_runtime_InvokeModel_Errors
_ERRORS: dict[str, tuple[VerdictKind, str]] = {
    "ThrottlingException": (VerdictKind.RATE_LIMITED, "rate_limit_error"),
    "ServiceQuotaExceededException": (VerdictKind.RATE_LIMITED, "rate_limit_error"),
    "ServiceUnavailableException": (VerdictKind.OVERLOADED, "overloaded_error"),
    "ModelTimeoutException": (VerdictKind.OVERLOADED, "overloaded_error"),
    "ModelNotReadyException": (VerdictKind.OVERLOADED, "overloaded_error"),
    "InternalServerException": (VerdictKind.OVERLOADED, "api_error"),
    "ModelStreamErrorException": (VerdictKind.OVERLOADED, "api_error"),
    "ModelErrorException": (VerdictKind.OVERLOADED, "api_error"),
    "AccessDeniedException": (VerdictKind.AUTH, "permission_error"),
    "UnrecognizedClientException": (VerdictKind.AUTH, "authentication_error"),
    "InvalidSignatureException": (VerdictKind.AUTH, "authentication_error"),
    "ExpiredTokenException": (VerdictKind.AUTH, "authentication_error"),
    "IncompleteSignatureException": (VerdictKind.AUTH, "authentication_error"),
    "ValidationException": (VerdictKind.FINAL, "invalid_request_error"),
    "ResourceNotFoundException": (VerdictKind.FINAL, "not_found_error"),
}


def _error_name(raw: str) -> str:
    # "ThrottlingException:http://internal.amazon.com/coral/..." and "com.amazon...#Throttling..."
    name = raw.split(":", 1)[0]
    name = name.rsplit("#", 1)[-1]
    # Exception frames name them in camel case: throttlingException.
    return name[:1].upper() + name[1:]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def error_info(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[VerdictKind, UpstreamErrorInfo]:
    """An error answer (or exception frame) from Bedrock: its meaning and its Anthropic shape."""
    data = _load(body)
    raw_name = (_header(headers, b"x-amzn-errortype") or b"").decode("latin-1")
    if not raw_name and isinstance(data, dict) and isinstance(data.get("__type"), str):
        raw_name = data["__type"]
    message: str | None = None
    if isinstance(data, dict):
        for key in ("message", "Message"):
            if isinstance(data.get(key), str) and data[key]:
                message = data[key]
                break
        err = data.get("error")
        if message is None and isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]  # an Anthropic-shaped body (an in-stream error event's data)
        if not raw_name and isinstance(err, dict) and err.get("type") in ANTHROPIC_STATUS:
            etype = err["type"]
            return _kind_for_status(status), UpstreamErrorInfo(etype, message or etype, False, etype)
    name = _error_name(raw_name) if raw_name else ""
    kind, etype = _ERRORS.get(name, (_kind_for_status(status), anthropic_type_for_status(status)))
    if not message:
        message = f"Amazon Bedrock error {name or 'HTTP ' + str(status)}"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "…"
    return kind, UpstreamErrorInfo(etype, message, False, name or None)


def _kind_for_status(status: int) -> VerdictKind:
    if status == 429:
        return VerdictKind.RATE_LIMITED
    if status in (401, 403):
        return VerdictKind.AUTH
    if status in (408, 424) or status >= 500:
        return VerdictKind.OVERLOADED
    return VerdictKind.FINAL


def _sse(etype: bytes, data: bytes) -> bytes:
    return b"event: " + etype + b"\ndata: " + data + b"\n\n"


def _error_event(etype: str, message: str) -> bytes:
    return _sse(b"error", orjson.dumps({"type": "error", "error": {"type": etype, "message": message}}))


class EventStreamDecoder:
    """Bedrock's event stream → Anthropic SSE, frame by frame, with botocore's parser.

    `amazon-bedrock-invocationMetrics` arrives in the last chunk; when the `message_delta`
    before it has no output count, the delta is held back and completed from the metrics.
    """

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer, ParserError

        self._buffer = EventStreamBuffer()
        self._parser_error = ParserError
        self._pending = 0  # bytes fed and not yet handed out as whole frames
        self._held: dict[str, Any] | None = None  # a message_delta waiting for its usage
        self._broken = False

    def feed(self, chunk: bytes) -> bytes:
        if self._broken or not chunk:
            return b""
        self._buffer.add_data(bytes(chunk))
        self._pending += len(chunk)
        out: list[bytes] = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                out.append(self._frame(message.headers, message.payload))
        except self._parser_error:
            # A corrupt frame: nothing after it can be trusted (the CRCs say so).
            self._broken = True
            out.append(_error_event("api_error", "Amazon Bedrock sent a corrupt event-stream frame"))
        if self._pending > MAX_PENDING_EVENT:
            # botocore accepts frames up to 24 MiB; dario holds no more per event than for SSE.
            raise EventTooLarge(f"an upstream event exceeded {MAX_PENDING_EVENT} bytes without ending")
        return b"".join(out)

    def _frame(self, headers: dict[str, Any], payload: bytes) -> bytes:
        mtype = headers.get(":message-type")
        if mtype == "exception" or mtype == "error":
            name = headers.get(":exception-type") or headers.get(":error-code") or ""
            _, info = error_info(0, [(b"x-amzn-errortype", str(name).encode())], payload)
            return _error_event(info.type, info.message)
        if headers.get(":event-type") != "chunk":
            return b""  # initial-response and other events carry nothing for the client
        data = _load(payload)
        raw = data.get("bytes") if isinstance(data, dict) else None
        try:
            event = orjson.loads(base64.b64decode(raw, validate=True)) if isinstance(raw, str) else None
        except (binascii.Error, orjson.JSONDecodeError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return _error_event("api_error", "Amazon Bedrock sent a chunk that is not an Anthropic event")
        return self._event(event)

    def _event(self, event: dict[str, Any]) -> bytes:
        etype = event["type"]
        metrics = event.pop("amazon-bedrock-invocationMetrics", None)
        if etype == "message_delta" and not _has_output_count(event):
            self._held = event
            return b""
        out = b""
        if self._held is not None:
            _fill_usage(self._held, metrics)
            out = _sse(b"message_delta", orjson.dumps(self._held))
            self._held = None
        return out + _sse(etype.encode(), orjson.dumps(event))


def _has_output_count(event: dict[str, Any]) -> bool:
    usage = event.get("usage")
    return isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int)


def _fill_usage(delta: dict[str, Any], metrics: Any) -> None:
    found = delta.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    if isinstance(metrics, dict):
        for ours, theirs in (("output_tokens", "outputTokenCount"), ("input_tokens", "inputTokenCount"),
                             ("cache_read_input_tokens", "cacheReadInputTokenCount"),
                             ("cache_creation_input_tokens", "cacheWriteInputTokenCount")):
            if isinstance(metrics.get(theirs), int) and ours not in usage:
                usage[ours] = metrics[theirs]
    usage.setdefault("output_tokens", 0)
    delta["usage"] = usage


# -- the upstream -------------------------------------------------------------------------


class BedrockUpstream:
    """The Upstream for Claude on Amazon Bedrock (bedrock-runtime)."""

    kind = KIND

    def __init__(self, client: HttpClient, chain: CredentialChain | None = None, ids: ModelIds = BUILTIN_IDS) -> None:
        self.client = client
        self.chain = chain or CredentialChain()
        self.ids = ids  # the model table: Anthropic id → Bedrock id

    def prepare(self, base_url: str, secret: str, call: Call) -> BedrockRequest:
        """Never raises: a request that cannot be made becomes a refusal `send` answers locally."""
        try:
            return self._build(base_url, secret, call)
        except BedrockCallError as exc:
            return _refused(exc.status, exc.etype, str(exc))
        except ValueError as exc:  # the account document (its messages never quote it)
            return _refused(401, "authentication_error", f"this Amazon Bedrock account cannot be used: {exc}")

    def _build(self, base_url: str, secret: str, call: Call) -> BedrockRequest:
        """Raises BedrockCallError (the request's fault) or ValueError (a bad account document)."""
        target = parse_target(secret)
        base = base_url.rstrip("/")
        if call.path == PATH_COUNT_TOKENS:
            model, body = count_tokens_body(call)
            if target.profile_prefix is not None:
                target = Target(target.region, target.auth, None)  # CountTokens takes bare ids only
            path = f"/model/{_quote(_bare(bedrock_model_id(model, None, self.ids)))}/count-tokens"
            accept = b"application/json"
        elif call.path == PATH_MESSAGES:
            model, stream, body = invoke_body(call)
            suffix = "invoke-with-response-stream" if stream else "invoke"
            path = f"/model/{_quote(bedrock_model_id(model, target.profile_prefix, self.ids))}/{suffix}"
            accept = EVENTSTREAM_TYPE if stream else b"application/json"
        else:
            raise BedrockCallError(404, "not_found_error", f"{call.path} is not available through Amazon Bedrock")
        headers = [(b"content-type", b"application/json"), (b"accept", accept), (b"user-agent", USER_AGENT)]
        return BedrockRequest("POST", base + path, headers, body, region=target.region, auth=target.auth)

    async def authorize(self, request: Request) -> list[tuple[bytes, bytes]]:
        """The request's headers with its credential added (a bearer key or a SigV4 signature)."""
        if not isinstance(request, BedrockRequest) or request.auth is None:
            raise ValueError("not a request prepared by BedrockUpstream")
        auth = request.auth
        if auth.type == "api_key":
            # Bedrock API keys (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html)
            return [*request.headers, (b"authorization", b"Bearer " + auth.api_key.encode())]
        if auth.type == "keys":
            from botocore.credentials import Credentials

            return _sign(request, Credentials(auth.access_key_id, auth.secret_access_key, auth.session_token))
        return _sign(request, await self.chain.get(auth.profile))

    async def send(self, request: Request, *, read_timeout: float | None = None) -> Response | LocalReply:
        """Sign and send. A refusal, unusable credentials and every error answer come back as a
        `LocalReply` in Anthropic's error shape (the AWS error name kept in `x-amzn-errortype`)."""
        if isinstance(request, BedrockRequest) and request.refused is not None:
            return refusal(*request.refused)
        from botocore.exceptions import (
            BotoCoreError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
        )

        try:
            headers = await self.authorize(request)
        except CredentialsUnavailable as exc:
            return refusal(401, "authentication_error", f"Amazon Bedrock: {exc}")
        except BotoCoreError as exc:
            if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError)):
                # The chain could not reach STS, SSO or the instance metadata: try again later.
                raise ConnectError(f"AWS credentials: {type(exc).__name__}") from None
            return refusal(401, "authentication_error",
                           f"Amazon Bedrock: the AWS credential chain failed ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); for SSO run `aws sso login`, then `dario-ctl refresh`")
        response = await self.client.request(request.method, request.url, headers, request.body,
                                             read_timeout=read_timeout)
        if response.status < 400:
            return response
        try:
            body = await read_capped(response)
        finally:
            await response.aclose()
        status, converted = self.error_body(response.status, response.headers, body)
        return LocalReply(status, json_headers(converted, response.headers), converted)

    def classify(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Verdict:
        if status < 400:
            return Verdict(VerdictKind.OK)
        kind, info = error_info(status, headers, body)
        return Verdict(kind, info)

    def error_body(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
        """An error answer in Anthropic's shape for the client: (status, body)."""
        _, info = error_info(status, headers, body)
        out = orjson.dumps({"type": "error", "error": {"type": info.type, "message": info.message}})
        return ANTHROPIC_STATUS.get(info.type, status), out

    def limits(self, headers: list[tuple[bytes, bytes]]) -> ratelimits.Snapshot:
        # Bedrock sends no anthropic-ratelimit-* headers; windows are declared or learned elsewhere.
        # A Retry-After, if a gateway in front adds one, still says when to come back.
        return ratelimits.Snapshot({}, ratelimits.parse_retry_after(headers))

    def secret_values(self, secret: str) -> tuple[str, ...]:
        return secret_values(secret)

    def check_label(self, base_url: str, secret: str) -> str:
        try:
            region = parse_target(secret).region
        except ValueError:
            region = "?"
        return f"Amazon Bedrock CountTokens on {CHECK_MODEL} in {region} ({base_url})"

    def check_warning(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
        """A check answer that proves the credential but not the model: store it and say so.

        AccessDeniedException comes after authentication (an unknown or badly signed key is
        UnrecognizedClientException / InvalidSignatureException): IAM or model access denied
        CountTokens on the one model checked, which says nothing of the others.
        """
        _, info = error_info(status, headers, body)
        if status == 403 and info.declared_type == "AccessDeniedException" \
                and "api key" not in info.message.lower():
            return (f"AWS accepted the credentials but denied CountTokens on {CHECK_MODEL} ({info.message}). "
                    "If requests are denied too, allow bedrock:InvokeModel and "
                    "bedrock:InvokeModelWithResponseStream and enable model access in the Bedrock console "
                    "for this region")
        if status in (400, 404):
            return (f"the credentials were accepted, but CountTokens on {CHECK_MODEL} is not available here "
                    f"({info.message})")
        return None

    def is_stream(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = _header(headers, b"content-type")
        return value is not None and value.startswith(EVENTSTREAM_TYPE)

    def stream_decoder(self) -> StreamDecoder:
        return EventStreamDecoder()

    def answer_body(self, body: bytes) -> bytes:
        data = _load(body)
        if isinstance(data, dict) and isinstance(data.get("inputTokens"), int) and len(data) == 1:
            return orjson.dumps({"input_tokens": data["inputTokens"]})  # CountTokens → count_tokens
        return body

    async def check_key(self, base_url: str, secret: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # CountTokens is authenticated and costs no tokens
        # (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_CountTokens.html).
        body = orjson.dumps({"model": CHECK_MODEL, "messages": [{"role": "user", "content": "hi"}]})
        request = self.prepare(base_url, secret, Call("POST", PATH_COUNT_TOKENS, body=body))
        response = await self.send(request, read_timeout=30)
        try:
            answer = await response.read()
        finally:
            await response.aclose()
        return response.status, response.headers, answer


def _bare(model_id: str) -> str:
    """An inference-profile id without its prefix: CountTokens takes foundation-model ids only."""
    prefix, _, rest = model_id.partition(".")
    return rest if prefix in PROFILE_PREFIXES and rest.startswith("anthropic.") else model_id


def _quote(model_id: str) -> str:
    # The AWS SDKs percent-encode the id as one path segment (an ARN's "/" included); ":" stays.
    return urllib.parse.quote(model_id, safe=":")


def upstreams(client: HttpClient, ids: ModelIds = BUILTIN_IDS) -> dict[str, Upstream]:
    """The Upstream for the `bedrock` account kind, taking model ids from `ids` (the model table)."""
    return {KIND: BedrockUpstream(client, ids=ids)}
