"""`/v1/models` for both SDKs on one path, and model-name resolution for both dialects.

The Anthropic SDK expects `{data:[{type,id,display_name,created_at}],has_more,first_id,last_id}`;
the OpenAI SDK expects `{object:"list",data:[{id,object,created,owned_by}]}`. Both ignore
fields they do not know, so every entry carries both sets and the page carries both envelopes.
The list is the upstream's own (fetched through the pool, cached) when an account can
serve, else dario's built-in list; the alias table's names (gpt-4o, sonnet, …) follow it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from dario.daemon.openai.models import KNOWN_MODELS, ModelTable

log = logging.getLogger("dario.models")
CACHE_SECONDS = 600.0

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
        "created_at": created_at,
        "object": "model",
        "created": _created(created_at),
        "owned_by": "anthropic",
    }
    if alias_of:
        item["alias_of"] = alias_of
    return item


class ModelCatalog:
    def __init__(self, table: ModelTable, fetch: Fetcher | None = None) -> None:
        self.table = table
        self.fetch = fetch
        self._upstream: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._items: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self._rebuild()

    def resolve_anthropic(self, name: str) -> str:
        """Aliases resolve; anything else passes through for the upstream to judge."""
        return self.table.resolve(name) or name

    async def refresh_if_stale(self) -> None:
        if self.fetch is None or time.monotonic() - self._fetched_at < CACHE_SECONDS:
            return
        self._fetched_at = time.monotonic()
        try:
            models = await self.fetch()
        except Exception as exc:  # a model list is never worth failing a request over
            log.info("could not fetch the upstream model list: %s", type(exc).__name__)
            models = None
        if models:
            self._upstream = models
            self._rebuild()
        else:
            self._fetched_at -= CACHE_SECONDS - 30  # try again soon

    def _rebuild(self) -> None:
        base = self._upstream or KNOWN_MODELS
        items = [
            _entry(str(m["id"]), str(m.get("display_name") or m["id"]), str(m.get("created_at") or ""))
            for m in base
            if isinstance(m, dict) and m.get("id")
        ]
        ids = {i["id"] for i in items}
        for alias, target in sorted(self.table.aliases.items()):
            if alias not in ids:
                created = next((i["created_at"] for i in items if i["id"] == target), "")
                items.append(_entry(alias, f"{alias} → {target}", created, alias_of=target))
        self._items = items
        self._by_id = {i["id"]: i for i in items}

    def get(self, model_id: str) -> dict[str, Any] | None:
        item = self._by_id.get(model_id)
        if item is not None:
            return item
        resolved = self.table.resolve(model_id)
        if resolved is None:
            return None
        known = self._by_id.get(resolved)
        if known is not None:
            return known
        # With the upstream's own list at hand, an id it does not have does not exist (Claude Code
        # relies on a 404 here). Without it, dario cannot tell, so a Claude id is given the benefit.
        if self._upstream is not None:
            return None
        return _entry(resolved, resolved, "")

    def page(self, *, limit: int | None, after_id: str | None, before_id: str | None) -> dict[str, Any]:
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
