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
    POST   /v1/accounts                   <- LoginRequest  -> 201 {"account": AccountView}
    DELETE /v1/accounts/{alias}           -> {"removed": alias}
    POST   /v1/accounts/{alias}/enable    -> {"account": AccountView}
    POST   /v1/accounts/{alias}/disable   -> {"account": AccountView}
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
ACCOUNT_KINDS = ("anthropic", "anthropic-compatible")


class WindowView(TypedDict):
    limit: int | None
    remaining: int | None
    reset: float | None  # epoch seconds


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


class PoolView(TypedDict):
    health: PoolHealth
    available: int
    total: int
    earliest_reset: float | None
    queue_depth: int


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
    store: NotRequired[str]  # where the pool state lives: "memory", or team mode's "ok" / "degraded" (Redis)


class LoginRequest(TypedDict, total=False):
    alias: str  # required
    secret: str  # required; never echoed back
    kind: str  # default "anthropic"
    base_url: str | None  # default per kind


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
