"""Model aliases/listings and the thinking cache (dario.daemon.openai.models/thinking)."""

from __future__ import annotations

import pathlib

import orjson
import pytest
from openai.types import Model

from dario.daemon.openai.models import DEFAULT_ALIASES, HAIKU, KNOWN_MODELS, OPUS, SONNET, ModelTable
from dario.daemon.openai.thinking import ThinkingCache


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


def test_openai_list_and_model() -> None:
    t = ModelTable({"my-model": "sonnet"})
    listing = t.openai_list()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert len(ids) == len(set(ids))
    assert {m["id"] for m in KNOWN_MODELS} <= set(ids)
    assert {"gpt-4o", "sonnet", "my-model"} <= set(ids)
    for m in listing["data"]:
        Model.model_validate(m)
        assert m["object"] == "model" and m["owned_by"] == "anthropic" and isinstance(m["created"], int)
    assert t.openai_model("gpt-4o") == next(m for m in listing["data"] if m["id"] == "gpt-4o")
    assert t.openai_model("claude-sonnet-4-5-20250929")["created"] > 0  # type: ignore[index]
    assert t.openai_model("nope") is None


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
