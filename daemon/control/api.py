"""The control API's contract: routes and the JSON shapes they answer with.

Light on purpose (no server imports): `dario-ctl` and the tray import it.
The control API is HTTP/1.1 + JSON over the Unix socket; every request carries
`Host: dario.sock` and never `Origin` or `Referer` (those are refused).
Where AF_UNIX is missing (CPython on Windows) or with `DARIO_CONTROL=tcp`, the same API listens
on 127.0.0.1 at a random port, and every request must also carry `Authorization: Bearer <token>`;
port and token are in `control-tcp.json` (0600) beside the socket path.

Routes (all JSON; errors are `ControlError` with a 4xx/5xx status):

    GET    /v1/status                     -> Status
    GET    /v1/accounts                   -> {"accounts": [AccountView, ...]}
    POST   /v1/accounts                   <- LoginRequest  -> 201 LoginResult
    DELETE /v1/accounts/{alias}           -> {"removed": alias}
    POST   /v1/accounts/{alias}/enable    -> {"account": AccountView}
    POST   /v1/accounts/{alias}/disable   -> {"account": AccountView}
    POST   /v1/accounts/{alias}/limits    <- LimitsRequest -> {"account": AccountView}
    POST   /v1/prefer                     <- {"alias": str | null} -> {"preferred": str | null}
    POST   /v1/refresh                    <- {"alias": str | null} -> {"results": [RefreshResult, ...]}
    GET    /v1/usage?window=1h|24h|7d     -> Usage (see analytics)
    GET    /v1/keys                       -> {"keys": [ClientKeyView, ...]}
    POST   /v1/keys                       <- {"name": str} -> 201 {"name": str, "key": str}  (shown once)
    DELETE /v1/keys/{name}                -> {"revoked": name}

Times are Unix epoch seconds (float) or null; fractions are 0.0–1.0.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

CONTROL_HOST = "dario.sock"

# waiting_for_keyring: the key is not readable yet (keyring locked, not answering, or failing);
# dario keeps retrying and the account serves by itself once the keyring answers.
AccountStatus = Literal["ok", "cooling", "exhausted", "needs_login", "disabled", "waiting_for_keyring"]
PoolHealth = Literal["ok", "degraded", "exhausted", "empty", "needs_login", "waiting_for_keyring"]
ACCOUNT_KINDS = ("anthropic", "anthropic-compatible", "bedrock", "vertex")
# How a Bedrock or Vertex account authenticates (LoginRequest.credential, AccountView.credential):
# keys: AWS access keys, kept in the keyring; api_key: a Bedrock API key, kept in the keyring;
# profile: botocore's credential chain (a named profile, SSO, environment, instance role), by reference;
# service_account: a Google service-account key file's contents, kept in the keyring;
# adc: Google application default credentials, by reference.
BEDROCK_CREDENTIALS = ("keys", "api_key", "profile")
VERTEX_CREDENTIALS = ("service_account", "adc")
INFERENCE_PROFILES = ("us", "eu", "apac", "jp", "global")  # Bedrock cross-region inference-profile prefixes


# Where a window's limit comes from: the upstream's rate-limit headers, a limit the user declared
# (`dario-ctl limits`), or one dario estimated from throttling (accounts that send no headers).
WindowSource = Literal["headers", "declared", "estimated"]


class WindowView(TypedDict):
    limit: int | None
    remaining: int | None
    reset: float | None  # epoch seconds
    source: NotRequired[WindowSource]  # absent from daemons older than declared limits


class DeclaredLimits(TypedDict):
    """Limits the user declared for an account (per minute); None: not declared."""

    rpm: int | None
    input_tpm: int | None
    output_tpm: int | None


class AccountView(TypedDict):
    alias: str
    kind: str
    base_url: str
    created: float
    enabled: bool
    preferred: bool
    status: AccountStatus
    reason: str | None  # why it is not "ok", in words
    until: float | None  # when a cooldown/exhaustion ends
    headroom: float | None  # smallest remaining fraction over known windows, less reservations; None = unknown
    windows: dict[str, WindowView]  # keys: requests, tokens, input-tokens, output-tokens
    in_flight: int
    requests: int  # served since start
    errors: int
    latency_ms: float | None  # recent (EWMA) upstream latency
    conversations: int  # live prompt-cache prefixes this account holds (prompt-cache affinity)
    # "config" when the team config file (dario.toml) defines the account: login/logout refuse it
    # and its secret comes from the source the file names. None for accounts made with login.
    managed_by: NotRequired[str | None]
    limits: NotRequired[DeclaredLimits]  # what the user declared (dario-ctl limits)
    # Bedrock and Vertex accounts (never secrets): region, Google Cloud project, credential type
    # (one of BEDROCK_CREDENTIALS / VERTEX_CREDENTIALS), AWS profile name, inference-profile prefix.
    region: NotRequired[str | None]
    project: NotRequired[str | None]
    credential: NotRequired[str | None]
    aws_profile: NotRequired[str | None]
    inference_profile: NotRequired[str | None]


class PoolView(TypedDict):
    health: PoolHealth
    available: int
    total: int
    earliest_reset: float | None
    queue_depth: int


class AnalyticsHealth(TypedDict):
    store: str  # "sqlite" | "postgresql"
    where: str  # the file, or the URL with its password shown as ***
    ok: bool  # the last write (or connection attempt) succeeded
    pending: int  # rows waiting in memory to be written
    written: int  # rows written since start
    dropped: int  # rows lost: the bounded buffer overflowed while the database was unusable
    problem: str | None  # what is wrong and what to do; None when fine


class Status(TypedDict):
    version: str
    pid: int
    started_at: float
    uptime_s: float
    listen: str  # e.g. "http://127.0.0.1:3456"
    socket: str
    auth_required: bool
    requests_served: int
    pool: PoolView
    accounts: list[AccountView]
    keyring: NotRequired[str | None]  # why the keyring cannot be read right now, with the fix; None when fine
    analytics: NotRequired[AnalyticsHealth | None]  # None: --no-analytics
    store: NotRequired[str]  # where the pool state lives: "memory", or team mode's "ok" / "degraded" (Redis)


class LoginRequest(TypedDict, total=False):
    alias: str  # required
    secret: str  # required but for credentials kept by reference (profile, adc); never echoed back.
    #   bedrock keys: {"access_key_id", "secret_access_key", "session_token"?} as JSON text;
    #   bedrock api_key: the key; vertex service_account: the key file's contents.
    kind: str  # default "anthropic"
    base_url: str | None  # default per kind (bedrock: its region's endpoint; vertex: the host only)
    region: str | None  # bedrock, vertex: required
    project: str | None  # vertex: required
    credential: str | None  # bedrock: keys (default) | api_key | profile; vertex: service_account | adc
    aws_profile: str | None  # bedrock with credential "profile": the profile name (None: the default chain)
    inference_profile: str | None  # bedrock: one of INFERENCE_PROFILES
    rpm: int  # declared limits, optional (see LimitsRequest)
    input_tpm: int
    output_tpm: int


class LoginResult(TypedDict):
    account: AccountView
    warning: NotRequired[str]  # stored, but the check found something to say (e.g. a model not enabled)


class LimitsRequest(TypedDict, total=False):
    """Declared limits to change: a field given sets it (null clears it), a field absent keeps it.

    `clear`: drop every declared limit first. Values are whole numbers from 1 to `LIMIT_MAX`.
    """

    rpm: int | None
    input_tpm: int | None
    output_tpm: int | None
    clear: bool


LIMIT_MAX = 1_000_000_000
LIMIT_NAMES = ("rpm", "input_tpm", "output_tpm")  # the fields of DeclaredLimits and LimitsRequest


class RefreshResult(TypedDict):
    alias: str
    ok: bool
    status: AccountStatus
    message: str


class ClientKeyView(TypedDict):
    name: str
    created: float
    prefix: str  # first characters of the key, to recognise it; never the whole key
    last_used: float | None
    auto_cache: bool  # OpenAI-dialect requests with this key get automatic prompt-cache breakpoints


class ControlError(TypedDict):
    error: dict[str, str]  # {"type": ..., "message": ...}
