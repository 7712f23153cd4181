"""What the daemon shows about itself: the status view, and the services the public app uses.

`StatusView` answers `dario-ctl status`, `/health`, `/analytics` and `/metrics`, and fetches the
upstream's model list for the catalog. `EdgeServices` is the narrow set the public app needs
(pool, recorder, client families, counters, views); it holds no account operations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import trio

from dario.daemon import __version__
from dario.daemon.control.api import AnalyticsHealth, Status
from dario.daemon.exchange import Estimate, Incoming, Outcome
from dario.daemon.recording.analytics import AnalyticsStore
from dario.daemon.recording.clients import FamilyCache
from dario.daemon.recording.metrics import Metrics
from dario.daemon.recording.recorder import Recorder
from dario.daemon.routing.pool import Pool
from dario.daemon.settings import Settings
from dario.daemon.upstream import anthropic as upstream
from dario.daemon.upstream.httpclient import HttpClient


@dataclass(eq=False)
class StatusView:
    settings: Settings
    pool: Pool
    http: HttpClient
    analytics: AnalyticsStore | None
    metrics: Metrics
    keyring_problem: Callable[[], str | None]  # why the keyring cannot be read now, if it cannot
    started_at: float = field(default_factory=time.time)
    requests_served: int = 0
    listen: str = ""

    def __post_init__(self) -> None:
        if not self.listen:
            self.listen = f"http://{self.settings.host}:{self.settings.port}"

    def status(self) -> Status:
        now = time.time()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(now - self.started_at, 3),
            "listen": self.listen,
            "socket": str(self.settings.socket),
            "auth_required": self.settings.api_key is not None,
            "requests_served": self.requests_served,
            "pool": self.pool.pool_view(),
            "accounts": self.pool.views(),
            "keyring": self.keyring_problem(),
            "analytics": self.analytics_health(),
            "store": self.pool.store_health,
        }

    def analytics_health(self) -> AnalyticsHealth | None:
        return None if self.analytics is None else cast(AnalyticsHealth, self.analytics.health())

    async def usage(self, window: str) -> dict[str, Any]:
        if self.analytics is None:
            raise ValueError("analytics are off (dariod --no-analytics)")
        pool_windows: dict[str, dict[str, dict[str, Any]]] = {
            v["alias"]: {name: dict(w) for name, w in v["windows"].items()} for v in self.pool.views()
        }
        await self.analytics.flush()  # so a caller sees the requests it just made
        analytics = self.analytics
        result: dict[str, Any] = await trio.to_thread.run_sync(
            lambda: analytics.query(window, pool_windows=pool_windows)
        )
        return result

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    async def fetch_upstream_models(self) -> list[dict[str, Any]] | None:
        """The upstream's model list, through any account that can serve right now.

        Only accounts that speak Anthropic's API can list models this way: a Bedrock or Vertex
        account's secret is a credential document that must never go out as an x-api-key.
        """
        other_kinds = [a.alias for a in self.pool.accounts.values() if a.kind not in upstream.MODEL_LIST_KINDS]
        lease = self.pool.choose(Estimate(), other_kinds)
        if lease is None or not await self.pool.confirm(lease):
            return None
        try:
            acc = lease.account
            assert acc.secret is not None
            response = await upstream.send(self.http, acc.base_url, acc.secret, "GET", upstream.PATH_MODELS,
                                           b"limit=1000", [], b"", read_timeout=15)
            try:
                body = await response.read()
            finally:
                await response.aclose()
            if response.status != 200:
                return None
            data = orjson.loads(body).get("data")
            return data if isinstance(data, list) else None
        finally:
            self.pool.release(lease)


@dataclass(eq=False)
class EdgeServices:
    """What the public app uses: the pool, the recorder, client families and the status view."""

    view: StatusView
    recorder: Recorder
    families: FamilyCache

    @property
    def settings(self) -> Settings:
        return self.view.settings

    @property
    def pool(self) -> Pool:
        return self.view.pool

    @property
    def started_at(self) -> float:
        return self.view.started_at

    @property
    def requests_served(self) -> int:
        return self.view.requests_served

    @requests_served.setter
    def requests_served(self, value: int) -> None:
        self.view.requests_served = value

    def client_family(self, user_agent: bytes | None) -> str:
        return self.families.family(user_agent)

    def record(self, inc: Incoming, out: Outcome) -> None:
        self.recorder.finished(inc, out)

    async def usage(self, window: str) -> dict[str, Any]:
        return await self.view.usage(window)

    def render_metrics(self) -> tuple[bytes, str]:
        return self.view.render_metrics()

    def analytics_health(self) -> AnalyticsHealth | None:
        return self.view.analytics_health()
