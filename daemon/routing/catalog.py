"""The model catalog: `/v1/models` for both SDKs on one path, and model-name resolution for both dialects.

The Anthropic SDK expects `{data:[{type,id,display_name,created_at}],has_more,first_id,last_id}`;
the OpenAI SDK expects `{object:"list",data:[{id,object,created,owned_by}]}`. Both ignore
fields they do not know, so every entry carries both sets and the page carries both envelopes.
The list is the upstream's own (fetched through the pool, cached) when an account can
serve, else dario's built-in list; the alias table's names (gpt-4o, sonnet, …) follow it.
The upstream's list is fetched on first use (then every CACHE_SECONDS), not on a timer from boot.

The list merges what the pool can serve: the Anthropic upstream's own list (or the built-in one)
while an anthropic-kind account is present and enabled (or no account at all), plus, for each
enabled Bedrock or Vertex AI account, the model table's models its kind, region and inference
profile offer (models.py, `ModelTable.ids`), deduplicated by Anthropic id. It is rebuilt when the
pool's membership changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import trio

from dario.daemon.routing.models import CONTROL_CHARACTERS, KNOWN_MODELS, ModelTable, model_id_ok
from dario.daemon.routing.pool import Pool
from dario.daemon.upstream.modelids import KINDS, created_at

log = logging.getLogger("dario.models")
CACHE_SECONDS = 600.0
RETRY_SECONDS = 30.0
# How long a request naming an alias waits for the first model list before resolving with what is known.
ALIAS_WAIT_SECONDS = 2.0
# The Anthropic SDK parses created_at as an RFC 3339 datetime; a model whose release date dario does
# not know gets the epoch (the same instant as OpenAI's `created: 0`), never an empty string.
UNKNOWN_CREATED_AT = "1970-01-01T00:00:00Z"

Fetcher = Callable[[], Awaitable[list[dict[str, Any]] | None]]


def _created(created_at: str | None) -> int:
    if not created_at:
        return 0
    try:
        return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _entry(model_id: str, display_name: str, created_at: str, alias_of: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at or UNKNOWN_CREATED_AT,
        "object": "model",
        "created": _created(created_at),
        "owned_by": "anthropic",
    }
    if alias_of:
        item["alias_of"] = alias_of
    return item


def _usable(models: object) -> list[dict[str, Any]] | None:
    """The entries of an upstream's list dario can serve and route to: an object with a string id free
    of control characters (an id travels into headers, logs and terminals)."""
    if not isinstance(models, list):
        return None
    return [
        {**m, "display_name": CONTROL_CHARACTERS.sub("", str(m.get("display_name") or m["id"]))}
        for m in models
        if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] and model_id_ok(m["id"])
    ]


class ModelCatalog:
    """The models dario lists and routes to: the upstream's own list when known, and the alias table
    (models.py) re-pointed at it."""

    def __init__(self, table: ModelTable, fetch: Fetcher | None = None, pool: Pool | None = None) -> None:
        self.configured = table
        self.table = table  # the configured table, its built-in aliases re-pointed at the upstream's list
        self.fetch = fetch
        self.pool = pool  # whose accounts' kinds decide what is listed; None: the Anthropic list only
        self._membership = -1 if pool is None else pool.membership
        self._upstream: list[dict[str, Any]] | None = None
        # -inf, not 0.0: time.monotonic() counts from boot, so "0.0" looks fresh for the first minutes.
        self._next_fetch = -math.inf
        self._fetch_lock = trio.Lock()
        self._items: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self._anthropic = True  # an anthropic-kind account (or none at all): its upstream judges unknown ids
        self._rebuild()

    def resolve_anthropic(self, name: str) -> str:
        """Aliases resolve; anything else passes through for the upstream to judge (the Messages API's
        own 404 `not_found_error` names the model), as a request on the Anthropic API expects."""
        return self.table.resolve(name) or name

    def _follow_pool(self) -> None:
        """Rebuild when accounts came, went, changed kind or target, or were enabled or disabled."""
        if self.pool is not None and self.pool.membership != self._membership:
            self._rebuild()

    async def refresh_if_stale(self) -> None:
        self._follow_pool()
        if self.fetch is None or time.monotonic() < self._next_fetch:
            return
        # One fetch at a time; callers arriving meanwhile wait for its answer rather than serve stale data.
        async with self._fetch_lock:
            if time.monotonic() < self._next_fetch:
                return
            # Until the fetch succeeds, the next try is RETRY_SECONDS away, also when it is cancelled.
            self._next_fetch = time.monotonic() + RETRY_SECONDS
            try:
                models = await self.fetch()
            except Exception as exc:  # a model list is never worth failing a request over
                log.info("could not fetch the upstream model list: %s", type(exc).__name__)
                models = None
            models = _usable(models)
            if models:
                self._upstream = models
                self._rebuild()
                self._next_fetch = time.monotonic() + CACHE_SECONDS

    async def refresh_for_alias(self, name: str) -> None:
        """Before an alias is resolved for a request, learn the upstream's list if it is stale, so the
        alias names a model the upstream has; bounded, because a slow list must not hold up the request."""
        if self.configured.resolve(name) in (None, name.strip()):
            return
        with trio.move_on_after(ALIAS_WAIT_SECONDS):
            await self.refresh_if_stale()

    def _rebuild(self) -> None:
        targets = [] if self.pool is None else self.pool.targets()
        if self.pool is not None:
            self._membership = self.pool.membership
        anthropic = not targets or any(kind not in KINDS for kind, _, _ in targets)
        self._anthropic = anthropic
        base = [m for m in (self._upstream or KNOWN_MODELS) if isinstance(m, dict) and m.get("id")] if anthropic else []
        items = [
            _entry(str(m["id"]), str(m.get("display_name") or m["id"]), str(m.get("created_at") or ""))
            for m in base
        ]
        ids = {i["id"] for i in items}
        known_dates = {str(m["id"]): str(m.get("created_at") or "") for m in KNOWN_MODELS}
        for account_target in dict.fromkeys(t for t in targets if t[0] in KINDS):
            for e in self.configured.ids.models_for(*account_target):
                if e.model in ids or any(n in ids for n in e.names):
                    continue
                created = known_dates.get(e.model) or created_at(e.model)
                items.append(_entry(e.model, e.display_name or e.model, created))
                base.append({"id": e.model, "created_at": created})
                ids.add(e.model)
        # The aliases follow what the pool serves: the upstream's list, and the table's models when
        # Bedrock or Vertex accounts are present (an alias then names a model some account offers).
        restricted = any(kind in KINDS for kind, _, _ in targets)
        self.table = self.configured.retargeted(base) if self._upstream is not None or restricted else self.configured
        for alias, target in sorted(self.table.aliases.items()):
            if alias not in ids:
                created = next((i["created_at"] for i in items if i["id"] == target), "")
                items.append(_entry(alias, f"{alias} → {target}", created, alias_of=target))
        self._items = items
        self._by_id = {i["id"]: i for i in items}

    def get(self, model_id: str) -> dict[str, Any] | None:
        self._follow_pool()
        item = self._by_id.get(model_id)
        if item is not None:
            return item
        if not model_id_ok(model_id):
            return None
        resolved = self.table.resolve(model_id)
        if resolved is None:
            return None
        known = self._by_id.get(resolved)
        if known is not None:
            if resolved == model_id or model_id.lower().startswith("claude-"):
                return known
            # A variant of an alias (gpt-4o-2024-08-06): answered under the name asked for, as OpenAI does.
            return _entry(model_id, f"{model_id} → {resolved}", known["created_at"], alias_of=resolved)
        # With the upstream's own list at hand, an id it does not have does not exist (Claude Code
        # relies on a 404 here). Without it, dario cannot tell, so a Claude id is given the benefit;
        # a pool of Bedrock/Vertex accounts only serves the table's models, all listed.
        if self._upstream is not None or not self._anthropic:
            return None
        return _entry(resolved, resolved, "")

    def page(self, *, limit: int | None, after_id: str | None, before_id: str | None) -> dict[str, Any]:
        self._follow_pool()
        items = self._items
        if after_id and after_id in self._by_id:
            items = items[[i["id"] for i in items].index(after_id) + 1 :]
        if before_id and before_id in self._by_id:
            items = items[: [i["id"] for i in items].index(before_id)]
        has_more = False
        if limit is not None:
            if not 1 <= limit <= 1000:
                raise ValueError("limit must be 1–1000")
            has_more = len(items) > limit
            items = items[:limit]
        return {
            "object": "list",
            "data": items,
            "has_more": has_more,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
        }
