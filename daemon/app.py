"""The composition root: `build(settings)` wires every part of one dariod into a `Daemon`.

This is the one module that knows all the rooms. Nothing imports it but `main`, which keeps the
process concerns (arguments, signals, the lock, sockets and binds, serving) and runs the
Daemon's background tasks in its nursery.
"""

from __future__ import annotations

import logging
import secrets as token_source
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from dario.daemon import paths
from dario.daemon.accounts import secrets
from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.accounts.errors import UpstreamUnreachable
from dario.daemon.accounts.registry import Registry
from dario.daemon.accounts.service import AccountService, KeyCheck, KeyProbe, ManagedAccount
from dario.daemon.accounts.sources import source_for
from dario.daemon.control.server import ControlApp
from dario.daemon.edge.guard import Guard
from dario.daemon.edge.peergate import PeerGate
from dario.daemon.edge.public import PublicApp
from dario.daemon.persist import Persister
from dario.daemon.recording.analytics import AnalyticsStore, UsageBackend
from dario.daemon.recording.clients import FamilyCache
from dario.daemon.recording.metrics import Metrics
from dario.daemon.recording.prices import PriceTable
from dario.daemon.recording.recorder import AccessLog, AnalyticsObserver, MetricsObserver, Recorder
from dario.daemon.recording.usage_postgres import PostgresUsage
from dario.daemon.recording.usage_sqlite import SqliteUsage
from dario.daemon.redact import redact
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.models import ModelTable
from dario.daemon.routing.pool import Pool
from dario.daemon.routing.relay import Relay
from dario.daemon.routing.store import PoolStore
from dario.daemon.settings import Settings, SettingsError
from dario.daemon.teamconfig import TeamConfig
from dario.daemon.upstream import anthropic, bedrock, vertex
from dario.daemon.upstream.base import Upstream
from dario.daemon.upstream.errors import parse_error
from dario.daemon.upstream.httpclient import HttpClient, Timeouts, UpstreamError
from dario.daemon.views import EdgeServices, StatusView

log = logging.getLogger("dario")

T = TypeVar("T")


@dataclass(eq=False)
class Daemon:
    """One dariod's parts, wired. `main` serves `public` and `control` and runs `run_background`."""

    settings: Settings
    http: HttpClient
    pool: Pool
    accounts: AccountService
    client_keys: ClientKeyStore
    persister: Persister
    recorder: Recorder
    analytics: AnalyticsStore | None
    metrics: Metrics
    view: StatusView
    catalog: ModelCatalog
    relay: Relay
    guard: Guard
    public: PublicApp
    control: ControlApp
    control_token: str | None  # set when the control API is on loopback TCP
    bound_port: list[int] = field(default_factory=list)  # the public port once bound (the guard reads it)
    # Upstream background work, e.g. Vertex AI's token refresher: run in the daemon's nursery.
    refreshers: list[Callable[..., Awaitable[None]]] = field(default_factory=list)

    def listening(self, host: str, port: int) -> None:
        """The public port is bound: the guard checks Host against it, status shows it."""
        self.bound_port[0] = port
        self.view.listen = f"http://{host}:{port}"

    async def run_background(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Analytics writer, persister, keyring reader and upstream refreshers (Vertex AI tokens);
        started once the first keyring read had its grace."""
        async with trio.open_nursery() as nursery:
            run_store = getattr(self.pool.store, "run", None)
            if run_store is not None:
                await nursery.start(run_store)
            if self.analytics is not None:
                await nursery.start(self.analytics.run)
            for refresher in self.refreshers:
                await nursery.start(refresher)
            nursery.start_soon(self.persister.persist_forever)
            nursery.start_soon(self.accounts.read_secrets_forever)
            # An unlocked keyring answers within the grace and the daemon starts with its keys; a
            # locked one (its unlock prompt unanswered) must not keep /health and the socket silent.
            await self.accounts.wait_first_read(secrets.KEYRING_STARTUP_GRACE)
            task_status.started()

    async def aclose(self) -> None:
        await self.http.aclose()


def build(settings: Settings, *, tcp_control: bool = False, team: TeamConfig | None = None) -> Daemon:
    """Wire one dariod from its settings (and the team config file's accounts): read the files it keeps,
    connect the parts."""
    http = HttpClient(
        timeouts=Timeouts(connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout),
        # Every open stream holds one upstream connection; thousands of concurrent streams are normal.
        max_connections_per_origin=settings.max_upstream_connections,
    )
    pool = Pool(store=_shared_store(settings.store) if settings.store else None)
    models = _load_or_default(ModelTable.load, paths.models_file(), ModelTable, "aliases")
    pool.set_model_ids(models.ids)  # which account kinds and regions offer which model
    vertex_upstream = vertex.VertexUpstream(http, ids=models.ids)
    upstreams: dict[str, Upstream] = {
        **anthropic.upstreams(http), **bedrock.upstreams(http, models.ids), vertex.KIND: vertex_upstream,
    }
    client_keys = ClientKeyStore(paths.keys_file())
    persister = Persister(pool, client_keys, paths.pool_state_file())
    accounts = AccountService(Registry(paths.accounts_file()), pool, key_probe(upstreams), managed_accounts(team))
    accounts.load()
    persister.load_pool_state()

    analytics = (
        AnalyticsStore(usage_backend(settings),
                       prices=_load_or_default(PriceTable.load, paths.prices_file(), PriceTable),
                       retention_days=settings.analytics_retention_days)
        if settings.analytics else None
    )
    metrics = Metrics(lambda: [dict(v) for v in pool.views()], lambda: pool.queue_depth)
    recorder = Recorder()
    if analytics is not None:
        recorder.add(AnalyticsObserver(analytics))
    recorder.add(MetricsObserver(metrics))
    if settings.verbose:
        recorder.add(AccessLog(logging.getLogger("dario.server")))

    view = StatusView(settings, pool, http, analytics, metrics, lambda: accounts.keyring_problem)
    catalog = ModelCatalog(models, view.fetch_upstream_models, pool)
    relay = Relay(
        pool, upstreams,
        queue_timeout=settings.queue_timeout,
        failover_deadline=settings.failover_deadline,
        hold_message_start=settings.hold_message_start,
        read_timeout=settings.upstream_read_timeout,
        record=recorder.finished,
    )
    bound_port = [settings.port]
    guard = Guard(
        listen_host=settings.host, port_ref=lambda: bound_port[0],
        allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins,
        api_key=settings.api_key, client_key_check=client_keys.verify,
        peer_gate=PeerGate.for_settings(settings.api_key),
    )
    public = PublicApp(EdgeServices(view, recorder, FamilyCache()), relay, guard, catalog,
                       auto_cache_key=client_keys.auto_cache)
    control_token = token_source.token_urlsafe(32) if tcp_control else None
    control = ControlApp(accounts, view, client_keys, token=control_token)
    return Daemon(
        settings=settings, http=http, pool=pool, accounts=accounts, client_keys=client_keys,
        persister=persister, recorder=recorder, analytics=analytics, metrics=metrics, view=view,
        catalog=catalog, relay=relay, guard=guard, public=public, control=control,
        control_token=control_token, bound_port=bound_port, refreshers=[vertex_upstream.tokens.run],
    )


def _shared_store(url: str) -> PoolStore:
    """Team mode: the pool's state in Redis. Imported only here, so redis-py stays optional."""
    try:
        from dario.daemon.routing.redisstore import RedisStore
    except ImportError as exc:
        raise SettingsError(f"--store {url.split('://')[0]}://… needs redis-py: pip install 'dario[team]'") from exc
    return RedisStore(url)


def usage_backend(settings: Settings) -> UsageBackend:
    """Where usage rows go: the team's PostgreSQL when --analytics names one, else the SQLite file."""
    if settings.analytics_url:
        return PostgresUsage(settings.analytics_url)  # settings checked that psycopg is installed
    return SqliteUsage(paths.analytics_db())


def managed_accounts(team: TeamConfig | None) -> list[ManagedAccount]:
    """The config file's [[account]] tables as the account service takes them."""
    if team is None:
        return []
    return [
        ManagedAccount(alias=a.alias, kind=a.kind, base_url=a.base_url,
                       source=source_for(a.secret.kind, a.secret.value, a.alias) if a.secret is not None else None,
                       config_file=str(team.path), enabled=a.enabled, preferred=a.preferred,
                       options=dict(a.options), limits=dict(a.limits), configured_base_url=a.configured_base_url,
                       details=dict(a.details))
        for a in team.accounts
    ]


def key_probe(upstreams: Mapping[str, Upstream]) -> KeyProbe:
    """Each kind's key check as the account service needs it (status, rate limits, body, what it means)."""
    async def probe(kind: str, base_url: str, secret: str) -> KeyCheck:
        up = upstreams[kind]
        try:
            status, headers, body = await up.check_key(base_url, secret)
        except UpstreamError as exc:
            raise UpstreamUnreachable(str(exc), type(exc).__name__) from None
        limits = up.limits(headers)  # each kind reads its own headers (Bedrock and Vertex send none)
        if status < 400:
            return KeyCheck(status, limits, body, checked=up.check_label(base_url, secret))
        values = up.secret_values(secret)
        verdict = up.classify(status, headers, body)
        info = verdict.error or parse_error(status, body)
        warning = up.check_warning(status, headers, body)
        return KeyCheck(
            status, limits, body, spend_limit=info.spend_limit,
            message=redact(info.message, values), error_type=info.declared_type,
            checked=up.check_label(base_url, secret), warning=redact(warning, values) if warning else None,
        )
    return probe


def _load_or_default(loader: Callable[[Path], T], path: Path, default: Callable[[], T],
                     what: str = "table") -> T:
    try:
        return loader(path)
    except ValueError as exc:
        log.warning("%s; using the built-in %s", exc, what)
        return default()


