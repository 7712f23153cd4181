"""Model aliases/listings and the thinking cache (dario.daemon.routing.models/catalog, openai/thinking)."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import orjson
import pytest
import trio
from openai.types import Model

from dario.daemon.dialects.openai.thinking import ThinkingCache
from dario.daemon.routing import catalog as modelcatalog
from dario.daemon.routing.catalog import ModelCatalog
from dario.daemon.routing.models import DEFAULT_ALIASES, HAIKU, KNOWN_MODELS, OPUS, SONNET, ModelTable


def test_default_aliases_cover_openai_names() -> None:
    for name in ("gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-4", "o1", "o3", "gpt-5"):
        assert DEFAULT_ALIASES[name] in (SONNET, OPUS), name
    for name in (
        "gpt-4o-mini",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-3.5-turbo",
        "o3-mini",
        "o4-mini",
        "gpt-5-mini",
        "gpt-5-nano",
    ):
        assert DEFAULT_ALIASES[name] == HAIKU, name
    assert (DEFAULT_ALIASES["opus"], DEFAULT_ALIASES["sonnet"], DEFAULT_ALIASES["haiku"]) == (
        OPUS,
        SONNET,
        HAIKU,
    )
    assert {OPUS, SONNET, HAIKU} <= {m["id"] for m in KNOWN_MODELS}


def test_resolve() -> None:
    t = ModelTable()
    assert t.resolve("Sonnet") == SONNET
    assert t.resolve("GPT-4O") == SONNET
    assert t.resolve("openai/gpt-4o-mini") == HAIKU
    assert t.resolve("anthropic/claude-sonnet-4-20250514") == "claude-sonnet-4-20250514"
    assert t.resolve("claude-future-9") == "claude-future-9"
    assert t.resolve("llama-3") is None
    assert t.resolve("") is None


def test_user_aliases_override_and_chain() -> None:
    t = ModelTable({"gpt-4o": OPUS, "fast": "haiku", "claude-3-opus": "opus"})
    assert t.resolve("gpt-4o") == OPUS
    assert t.resolve("FAST") == HAIKU
    assert t.resolve("claude-3-opus") == OPUS  # an alias wins over claude-… passthrough
    assert ModelTable().resolve("gpt-4o") == SONNET  # defaults not mutated


def test_load(tmp_path: pathlib.Path) -> None:
    assert ModelTable.load(tmp_path / "missing.json").resolve("sonnet") == SONNET
    f = tmp_path / "models.json"
    f.write_bytes(orjson.dumps({"aliases": {"cursor-claude": "claude-opus-4-1-20250805"}}))
    t = ModelTable.load(f)
    assert t.resolve("cursor-claude") == "claude-opus-4-1-20250805" and t.resolve("haiku") == HAIKU


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"aliases": []}',
        b'{"aliases": {"x": 3}}',
        b'{"aliases": {"x": ""}}',
        b'{"alias": {}}',
    ],
)
def test_load_bad_file_names_it(tmp_path: pathlib.Path, content: bytes) -> None:
    f = tmp_path / "models.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=r"models\.json"):
        ModelTable.load(f)


def test_catalog_list_and_model_parse_in_the_openai_sdk() -> None:
    catalog = ModelCatalog(ModelTable({"my-model": "sonnet"}))
    listing = catalog.page(limit=None, after_id=None, before_id=None)
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert len(ids) == len(set(ids))
    assert {m["id"] for m in KNOWN_MODELS} <= set(ids)
    assert {"gpt-4o", "sonnet", "my-model"} <= set(ids)
    for m in listing["data"]:
        Model.model_validate(m)
        assert m["object"] == "model" and m["owned_by"] == "anthropic" and isinstance(m["created"], int)
    assert catalog.get("gpt-4o") == next(m for m in listing["data"] if m["id"] == "gpt-4o")
    assert catalog.get("claude-sonnet-4-5-20250929")["created"] > 0  # type: ignore[index]
    assert catalog.get("nope") is None


def test_thinking_cache_lru_and_filters() -> None:
    c = ThinkingCache(max_entries=2)
    blk = {"type": "thinking", "thinking": "t", "signature": "s"}
    c.remember(["a", "b"], [blk])
    assert c.recall("a") == [blk]
    c.remember(["c"], [blk])  # evicts the least recently used: b
    assert c.recall("b") is None and c.recall("a") == [blk] and c.recall("c") == [blk]
    got = c.recall("a")
    assert got is not None
    got.clear()  # callers can't corrupt the cache
    assert c.recall("a") == [blk]
    c.remember(["d"], [{"type": "thinking", "thinking": "x", "signature": ""}, {"type": "text", "text": "x"}])
    assert c.recall("d") is None  # unsigned thinking is useless upstream


def test_thinking_cache_byte_bound() -> None:
    c = ThinkingCache(max_entries=100, max_bytes=10_000)
    big = {"type": "thinking", "thinking": "x" * 4000, "signature": "s"}
    for i in range(10):
        c.remember([f"id{i}"], [big])
    assert len(c) == 2 and c.recall("id9") is not None and c.recall("id0") is None


# --- the catalog: upstream list, fetched on first use; aliases follow it ------------------------------

UPSTREAM_LIST = [
    {"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
    {"id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z"},
    {"id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1", "created_at": "2025-08-05T00:00:00Z"},
    {"id": "claude-opus-4-5-20251101", "display_name": "Claude Opus 4.5", "created_at": "2025-11-01T00:00:00Z"},
]


def _catalog(fetched: list[int], models: list[dict[str, Any]] | None = UPSTREAM_LIST) -> ModelCatalog:
    async def fetch() -> list[dict[str, Any]] | None:
        fetched.append(1)
        return models

    return ModelCatalog(ModelTable(), fetch)


def test_catalog_fetches_the_upstream_list_on_first_use_right_after_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    # time.monotonic() counts from boot: an autostarted daemon sees small values.
    monkeypatch.setattr(modelcatalog.time, "monotonic", lambda: 5.0)
    fetched: list[int] = []
    catalog = _catalog(fetched)
    trio.run(catalog.refresh_if_stale)
    assert fetched == [1]
    ids = [m["id"] for m in catalog.page(limit=None, after_id=None, before_id=None)["data"]]
    assert ids[: len(UPSTREAM_LIST)] == [m["id"] for m in UPSTREAM_LIST]
    assert catalog.get("claude-no-such-model") is None  # the upstream's list is known: unknown is a 404
    trio.run(catalog.refresh_if_stale)
    assert fetched == [1]  # cached


def test_catalog_retries_a_failed_fetch_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [5.0]
    monkeypatch.setattr(modelcatalog.time, "monotonic", lambda: now[0])
    fetched: list[int] = []
    catalog = _catalog(fetched, None)
    trio.run(catalog.refresh_if_stale)
    trio.run(catalog.refresh_if_stale)
    assert fetched == [1]
    now[0] += modelcatalog.RETRY_SECONDS + 1
    trio.run(catalog.refresh_if_stale)
    assert fetched == [1, 1]


def test_aliases_follow_the_models_the_upstream_lists() -> None:
    catalog = _catalog([])
    trio.run(catalog.refresh_if_stale)
    listed = {m["id"] for m in UPSTREAM_LIST}
    assert catalog.table.resolve("opus") == "claude-opus-4-5-20251101"  # newest Opus listed
    assert catalog.table.resolve("gpt-4o") == "claude-sonnet-4-5-20250929"
    assert catalog.table.resolve("gpt-4o-mini") == "claude-haiku-4-5-20251001"
    assert catalog.resolve_anthropic("sonnet") == "claude-sonnet-4-5-20250929"
    for item in catalog.page(limit=None, after_id=None, before_id=None)["data"]:
        datetime.datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))  # valid for the SDK
        if "alias_of" in item:
            assert item["alias_of"] in listed, item
            assert item["created"] > 0
        assert catalog.get(item["id"]) is not None


def test_user_alias_to_an_explicit_id_is_kept() -> None:
    catalog = ModelCatalog(ModelTable({"mine": "claude-opus-4-1-20250805", "fast": "haiku"}), None)
    retargeted = catalog.table.retargeted(UPSTREAM_LIST)
    assert retargeted.resolve("mine") == "claude-opus-4-1-20250805"
    assert retargeted.resolve("fast") == "claude-haiku-4-5-20251001"
    explicit = ModelTable({"pinned": "claude-sonnet-3-9"}).retargeted(UPSTREAM_LIST)
    assert explicit.resolve("pinned") == "claude-sonnet-3-9"


@pytest.mark.parametrize(
    ("name", "base"),
    [("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("chatgpt-4o-latest", "gpt-4o"),
     ("o1-mini", "gpt-4o-mini"), ("gpt-5.1", "gpt-5"), ("gpt-4-0613", "gpt-4"), ("gpt-4-1106-preview", "gpt-4"),
     ("openai/gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini")],
)
def test_dated_and_latest_openai_ids_resolve_like_their_base(name: str, base: str) -> None:
    t = ModelTable()
    assert t.resolve(name) == t.resolve(base) is not None
    item = ModelCatalog(t, None).get(name)
    assert item is not None and item["id"] == name and item["alias_of"] == t.resolve(base)


def test_catalog_refuses_control_characters_in_a_model_id() -> None:
    assert ModelCatalog(ModelTable(), None).get("claude-\x1b[31mx") is None


def test_a_request_naming_an_alias_learns_the_upstream_list_first() -> None:
    fetched: list[int] = []
    catalog = _catalog(fetched)

    async def main() -> None:
        await catalog.refresh_for_alias("claude-sonnet-4-5-20250929")  # a Claude id needs no list
        assert fetched == []
        await catalog.refresh_for_alias("gpt-4o")
        assert fetched == [1]

    trio.run(main)
    assert catalog.resolve_anthropic("sonnet") == "claude-sonnet-4-5-20250929"


def test_a_slow_model_list_holds_an_alias_request_only_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelcatalog, "ALIAS_WAIT_SECONDS", 0.05)
    calls: list[int] = []

    async def hang() -> list[dict[str, Any]] | None:
        calls.append(1)
        await trio.sleep_forever()
        return None

    catalog = ModelCatalog(ModelTable(), hang)

    async def main() -> None:
        with trio.fail_after(5):
            await catalog.refresh_for_alias("sonnet")
            await catalog.refresh_for_alias("sonnet")  # not again at once: the retry is RETRY_SECONDS away

    trio.run(main)
    assert calls == [1]
    assert catalog.resolve_anthropic("sonnet") == SONNET


def test_a_hostile_model_list_cannot_smuggle_control_characters() -> None:
    hostile: list[Any] = [
        {"id": "claude-sonnet-9\x1b[31m", "display_name": "x", "created_at": "2030-01-01T00:00:00Z"},
        {"id": 7}, "claude-haiku-9", None,
        {"id": "claude-opus-4-5-20251101", "display_name": "Opus\x1b]0;pwned\x07",
         "created_at": "2025-11-01T00:00:00Z"},
    ]
    catalog = _catalog([], hostile)
    trio.run(catalog.refresh_if_stale)
    page = catalog.page(limit=None, after_id=None, before_id=None)["data"]
    assert all("\x1b" not in item["id"] and "\x1b" not in item["display_name"] for item in page)
    assert catalog.resolve_anthropic("sonnet") == SONNET  # no listed Sonnet to follow: the built-in stays
    assert catalog.resolve_anthropic("opus") == "claude-opus-4-5-20251101"
