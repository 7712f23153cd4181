"""The Claude model table: dario's built-in model list and the alias table both dialects resolve through.

A request on either API may name a Claude id ("claude-sonnet-4-5-20250929"), a tier ("sonnet"),
an OpenAI model name ("gpt-4o", "gpt-4o-2024-08-06", "openai/gpt-4o") or a user's own alias from
models.json; `ModelTable.resolve` turns each into a Claude id. The listings served on /v1/models,
and the upstream's own list that re-points the aliases, are catalog.py's.

The same file carries the per-kind model ids (`ModelTable.ids`, upstream/modelids.py): for each
Claude id, its Amazon Bedrock id and Vertex AI id and where they are offered, built-ins extended
by the file's "models" object. A bad entry there is logged once, at load, and left out; the rest
of the file still applies.
"""

from __future__ import annotations

import copy
import logging
import pathlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

from dario.daemon.atomicfile import read_config_json
from dario.daemon.upstream.modelids import ModelIds, parse_entries

log = logging.getLogger("dario.models")

# A model id travels into response headers, log lines and terminals: no ASCII control characters.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f]")


def model_id_ok(model: str) -> bool:
    """A model id dario can accept and echo (in `x-dario-model`, logs, views): no control characters."""
    return CONTROL_CHARACTERS.search(model) is None

# The newest model of each tier as of this release (the anthropic SDK's own model list, newest
# first). Users re-point them in models.json; dario serves the upstream's live list when it can.
OPUS = "claude-opus-5-5"
SONNET = "claude-sonnet-5-5"
HAIKU = "claude-haiku-5-5"

# OpenAI model names map to the Claude tier with the same cost/latency role, so a tool configured with
# a hard-coded OpenAI name gets what its author chose it for: flagship reasoning models (o1, o3, gpt-5)
# → Opus, general-purpose large models → Sonnet, and the small/cheap ones (mini, nano, 3.5) → Haiku,
# because those are picked for speed and price (autocomplete, titles, summaries), not depth.
DEFAULT_ALIASES: dict[str, str] = {
    "opus": OPUS,
    "sonnet": SONNET,
    "haiku": HAIKU,
    "o1": OPUS,
    "o3": OPUS,
    "gpt-5": OPUS,
    "gpt-4o": SONNET,
    "gpt-4.1": SONNET,
    "gpt-4-turbo": SONNET,
    "gpt-4": SONNET,
    "gpt-4o-mini": HAIKU,
    "gpt-4.1-mini": HAIKU,
    "gpt-4.1-nano": HAIKU,
    "gpt-3.5-turbo": HAIKU,
    "o3-mini": HAIKU,
    "o4-mini": HAIKU,
    "gpt-5-mini": HAIKU,
    "gpt-5-nano": HAIKU,
    "o1-mini": HAIKU,
    "chatgpt-4o": SONNET,
}
# dario's own guesses; once the upstream's list is known, an alias whose guess the upstream lacks follows
# the newest model of the same tier instead (a user's explicit Claude id is left as written).
_TIERS = ("opus", "sonnet", "haiku")
_BUILT_IN_TARGETS = frozenset(DEFAULT_ALIASES.values())

# dario's fallback list when no account can fetch the upstream's own. Release dates are given
# only where they are published in the SDK; the others are listed with an unknown date.
KNOWN_MODELS: list[dict[str, Any]] = [
    {"id": OPUS, "display_name": "Claude Opus 5.5", "created_at": ""},
    {"id": SONNET, "display_name": "Claude Sonnet 5.5", "created_at": ""},
    {"id": HAIKU, "display_name": "Claude Haiku 5.5", "created_at": ""},
    {"id": "claude-opus-5", "display_name": "Claude Opus 5", "created_at": ""},
    {"id": "claude-sonnet-5", "display_name": "Claude Sonnet 5", "created_at": ""},
    {"id": "claude-opus-4-8", "display_name": "Claude Opus 4.8", "created_at": ""},
    {"id": "claude-opus-4-7", "display_name": "Claude Opus 4.7", "created_at": ""},
    {"id": "claude-sonnet-4-6", "display_name": "Claude Sonnet 4.6", "created_at": ""},
    {"id": "claude-opus-4-6", "display_name": "Claude Opus 4.6", "created_at": ""},
    {"id": "claude-opus-4-5-20251101", "display_name": "Claude Opus 4.5", "created_at": "2025-11-01T00:00:00Z"},
    {"id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z"},
    {"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
]


# OpenAI publishes dated snapshots (gpt-4o-2024-08-06, gpt-4-0613, gpt-3.5-turbo-0125), moving pointers
# (chatgpt-4o-latest), previews (gpt-4-1106-preview) and point releases (gpt-5.1) of its base models;
# each is the same model for a client's purposes, so it resolves like its base name.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_POINT_RELEASE = re.compile(r"^(gpt-\d+)\.\d+(?=-|$)")


def _openai_base_names(key: str) -> Iterator[str]:
    """Lower-case name → ever more general names it may be a variant of (not including itself)."""
    steps = (
        lambda k: k.removesuffix("-latest"),
        lambda k: k.removesuffix("-preview"),
        lambda k: _SNAPSHOT.sub("", k),
        lambda k: "gpt-" + k[len("chatgpt-"):] if k.startswith("chatgpt-") else k,
        lambda k: _POINT_RELEASE.sub(r"\1", k),
    )
    for step in steps:
        shorter = step(key)
        if shorter != key and shorter:
            key = shorter
            yield key


def _tier(model_id: str) -> str | None:
    low = model_id.lower()
    return next((t for t in _TIERS if t in low), None)


def _strip_provider(name: str) -> str:
    # LiteLLM-style clients (Aider, …) send "openai/gpt-4o" or "anthropic/claude-…".
    slash = name.rfind("/")
    return name[slash + 1 :] if slash >= 0 else name


class ModelTable:
    """Alias (case-insensitive) → Claude id, built-ins merged with the user's; read-only after construction."""

    def __init__(self, aliases: dict[str, str] | None = None, ids: ModelIds | None = None) -> None:
        self.ids = ModelIds() if ids is None else ids  # per-kind model ids (Bedrock, Vertex)
        merged = dict(DEFAULT_ALIASES)
        if aliases:
            merged.update(aliases)
        # Keys are matched case-insensitively. A value may itself name an alias ("fast": "haiku").
        lowered = {k.strip().lower(): v.strip() for k, v in merged.items()}
        self._aliases: dict[str, str] = {}
        for key, value in lowered.items():
            target, hops = value, 0
            while target.lower() in lowered and hops < 8:
                nxt = lowered[target.lower()]
                if nxt.lower() == target.lower():
                    break
                target, hops = nxt, hops + 1
            self._aliases[key] = target
        # Display names as written (first spelling wins), for the listing.
        self._display: dict[str, str] = {}
        for k in merged:
            self._display.setdefault(k.strip().lower(), k.strip())

    @classmethod
    def load(cls, path: pathlib.Path) -> ModelTable:
        """User file {"aliases": {"name": "claude-id", ...}, "models": {"claude-id": {...}}} merged over
        the built-ins. A bad "models" entry is logged and skipped; a bad file or alias raises ValueError."""
        data = read_config_json(path, "model alias file")
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f'{path}: model alias file must be a JSON object like {{"aliases": {{...}}}}')
        unknown = set(data) - {"aliases", "models"}
        if unknown:
            raise ValueError(f'{path}: unknown key(s) {sorted(unknown)}; only "aliases" and "models" are allowed')
        ids = ModelIds()
        if "models" in data:
            entries, warnings = parse_entries(data["models"])
            for warning in warnings:
                log.warning("%s: %s", path, warning)
            ids = ids.extended(entries)
        aliases = data.get("aliases", {})
        if not isinstance(aliases, dict):
            raise ValueError(f'{path}: "aliases" must be an object mapping names to Claude model ids')
        for k, v in aliases.items():
            if not isinstance(v, str) or not v.strip() or not k.strip():
                raise ValueError(
                    f"{path}: alias {k!r} must map a non-empty name to a non-empty model id string"
                )
        return cls(aliases, ids)

    @property
    def aliases(self) -> dict[str, str]:
        """Alias (lower-case) → resolved Claude id."""
        return dict(self._aliases)

    def retargeted(self, available: Iterable[dict[str, Any]]) -> ModelTable:
        """A copy whose built-in aliases point at models in `available` (the upstream's own list).

        An alias whose built-in target the upstream lacks follows the newest listed model of its tier
        (newest by created_at; ties keep the upstream's order, which the Models API gives newest first).
        """
        listed = [m for m in available if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]
        ids = {m["id"] for m in listed}
        newest = sorted(listed, key=lambda m: str(m.get("created_at") or ""), reverse=True)
        by_tier: dict[str, str] = {}
        for m in newest:
            tier = _tier(m["id"])
            if tier is not None:
                by_tier.setdefault(tier, m["id"])
        out = copy.copy(self)
        out._aliases = {}
        for key, target in self._aliases.items():
            tier = _tier(target)
            if target not in ids and target in _BUILT_IN_TARGETS and tier in by_tier:
                target = by_tier[tier]
            out._aliases[key] = target
        return out

    def resolve(self, name: str) -> str | None:
        """Alias → Claude id; any "claude-…" id passes through unchanged; unknown → None.

        OpenAI snapshot, -latest, -preview and point-release names resolve like their base alias."""
        if not isinstance(name, str):
            return None
        name = name.strip()
        key = name.lower()
        hit = self._aliases.get(key)
        if hit is not None:
            return hit
        bare = _strip_provider(name)
        if bare is not name:
            hit = self._aliases.get(bare.lower())
            if hit is not None:
                return hit
        if bare.lower().startswith("claude-"):
            return bare
        for key in _openai_base_names(bare.lower()):
            hit = self._aliases.get(key)
            if hit is not None:
                return hit
        return None
