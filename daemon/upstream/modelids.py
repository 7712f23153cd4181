"""Each account kind's own id for an Anthropic model, and which kinds and regions offer it.

A client names a model the Anthropic way (`claude-sonnet-4-5`, `claude-sonnet-4-5-20250929`, or an
alias the alias table turns into one). Amazon Bedrock takes its own id in the path,
`anthropic.claude-sonnet-4-5-20250929-v1:0`, or a cross-region inference profile made by prefixing
it (`us.`, `eu.`, `jp.`, `apac.`, `global.`); Vertex AI takes `claude-sonnet-4-5@20250929`.
`ModelIds` holds one entry per Anthropic model id:

    "claude-sonnet-4-5-20250929": {
        "names": ["claude-sonnet-4-5"],                      # other Anthropic ids for the same model
        "display_name": "Claude Sonnet 4.5",                 # optional, for /v1/models
        "bedrock": {"id": "anthropic.claude-sonnet-4-5-20250929-v1:0",
                    "profiles": ["global", "us", "eu", "jp"],  # inference profiles that carry it
                    "profile_only": true,                      # no in-region (on-demand) use
                    "regions": ["us-east-1", ...]},            # account regions that offer it
        "vertex": {"id": "claude-sonnet-4-5@20250929", "regions": ["global", "us-east5", ...]}
    }

A kind's value may be the id alone (`"vertex": "claude-…@2025…"`) or null (that kind does not offer
the model); a restriction left out means "no restriction known". The built-in entries follow the
public model tables (https://docs.aws.amazon.com/bedrock/latest/userguide/models-supported.html,
https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude and Anthropic's
per-platform model id tables); users extend or override them in models.json (routing/models.py
reads the file). The table lives in the upstream room because the adapters take their ids from
it and may not import routing; routing loads, extends and serves it.

An id already in a kind's own form passes through for that kind only: a Bedrock id (or ARN) to
Bedrock accounts, a Vertex `name@YYYYMMDD` id to Vertex accounts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

BEDROCK = "bedrock"
VERTEX = "vertex"
KINDS = (BEDROCK, VERTEX)
# Bedrock's geographic and global cross-region inference profiles
# (https://docs.aws.amazon.com/bedrock/latest/userguide/inference-profiles-support.html).
PROFILE_PREFIXES = frozenset({"us", "eu", "apac", "jp", "global"})

BEDROCK_NATIVE = re.compile(
    r"^((us|eu|apac|jp|global)\.)?anthropic\.[a-z0-9.-]+(:\d+)?$|^arn:aws[a-z-]*:bedrock:"
)
VERTEX_NATIVE = re.compile(r"^claude-[a-z0-9.-]+@\d{8}$")
_DATE = re.compile(r"-(\d{4})(\d{2})(\d{2})$")


@dataclass(frozen=True, slots=True)
class Offer:
    """How one kind offers one model."""

    id: str
    regions: frozenset[str] | None = None  # account regions/locations that offer it; None: any
    profiles: frozenset[str] | None = None  # Bedrock: inference-profile prefixes that carry it; None: any
    profile_only: bool = False  # Bedrock: only through an inference profile, not in-region


@dataclass(frozen=True, slots=True)
class Entry:
    """One Anthropic model and what each kind calls it."""

    model: str  # the Anthropic id
    names: tuple[str, ...] = ()
    display_name: str | None = None
    offers: Mapping[str, Offer | None] = field(default_factory=dict)  # kind → offer; None: not offered

    def offer(self, kind: str) -> Offer | None:
        return self.offers.get(kind)


_ALL = None  # readability: no restriction known


def _bedrock(base: str, profiles: Iterable[str] | None = _ALL, profile_only: bool = False) -> Offer:
    return Offer(base, None, None if profiles is None else frozenset(profiles), profile_only)


def _builtin(model: str, names: tuple[str, ...], display: str, bedrock: Offer | None, vertex: str | None) -> Entry:
    return Entry(model, names, display, {BEDROCK: bedrock, VERTEX: None if vertex is None else Offer(vertex)})


# Claude 3.7 Sonnet and later are invoked on Bedrock through inference profiles only (the base id
# answers "on-demand throughput isn't supported"); the profile columns are Anthropic's Bedrock table.
BUILTIN: tuple[Entry, ...] = (
    _builtin("claude-opus-4-6", (), "Claude Opus 4.6",
             _bedrock("anthropic.claude-opus-4-6-v1", ("global", "us", "eu", "jp", "apac"), True),
             "claude-opus-4-6"),
    _builtin("claude-sonnet-4-6", (), "Claude Sonnet 4.6",
             _bedrock("anthropic.claude-sonnet-4-6", ("global", "us", "eu", "jp"), True), "claude-sonnet-4-6"),
    _builtin("claude-opus-4-5-20251101", ("claude-opus-4-5",), "Claude Opus 4.5",
             _bedrock("anthropic.claude-opus-4-5-20251101-v1:0", ("global", "us", "eu"), True),
             "claude-opus-4-5@20251101"),
    _builtin("claude-haiku-4-5-20251001", ("claude-haiku-4-5",), "Claude Haiku 4.5",
             _bedrock("anthropic.claude-haiku-4-5-20251001-v1:0", _ALL, True), "claude-haiku-4-5@20251001"),
    _builtin("claude-sonnet-4-5-20250929", ("claude-sonnet-4-5",), "Claude Sonnet 4.5",
             _bedrock("anthropic.claude-sonnet-4-5-20250929-v1:0", ("global", "us", "eu", "jp"), True),
             "claude-sonnet-4-5@20250929"),
    _builtin("claude-opus-4-1-20250805", ("claude-opus-4-1",), "Claude Opus 4.1",
             _bedrock("anthropic.claude-opus-4-1-20250805-v1:0", ("us",), True), "claude-opus-4-1@20250805"),
    _builtin("claude-opus-4-20250514", ("claude-opus-4", "claude-opus-4-0"), "Claude Opus 4",
             _bedrock("anthropic.claude-opus-4-20250514-v1:0", _ALL, True), "claude-opus-4@20250514"),
    _builtin("claude-sonnet-4-20250514", ("claude-sonnet-4", "claude-sonnet-4-0"), "Claude Sonnet 4",
             _bedrock("anthropic.claude-sonnet-4-20250514-v1:0", ("global", "us", "eu", "apac"), True),
             "claude-sonnet-4@20250514"),
    _builtin("claude-3-7-sonnet-20250219", ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"), "Claude Sonnet 3.7",
             _bedrock("anthropic.claude-3-7-sonnet-20250219-v1:0", ("us", "eu", "apac"), True),
             "claude-3-7-sonnet@20250219"),
    _builtin("claude-3-5-haiku-20241022", ("claude-3-5-haiku-latest", "claude-3-5-haiku"), "Claude Haiku 3.5",
             _bedrock("anthropic.claude-3-5-haiku-20241022-v1:0"), "claude-3-5-haiku@20241022"),
    _builtin("claude-3-5-sonnet-20241022", ("claude-3-5-sonnet-latest",), "Claude Sonnet 3.5 v2",
             _bedrock("anthropic.claude-3-5-sonnet-20241022-v2:0"), "claude-3-5-sonnet-v2@20241022"),
    _builtin("claude-3-5-sonnet-20240620", (), "Claude Sonnet 3.5",
             _bedrock("anthropic.claude-3-5-sonnet-20240620-v1:0"), "claude-3-5-sonnet@20240620"),
    _builtin("claude-3-haiku-20240307", (), "Claude Haiku 3",
             _bedrock("anthropic.claude-3-haiku-20240307-v1:0"), "claude-3-haiku@20240307"),
    _builtin("claude-3-opus-20240229", (), "Claude Opus 3",
             _bedrock("anthropic.claude-3-opus-20240229-v1:0"), "claude-3-opus@20240229"),
)


def is_native(model: str, kind: str) -> bool:
    """Whether `model` is already in `kind`'s own form (passed through as is)."""
    if kind == BEDROCK:
        return BEDROCK_NATIVE.match(model) is not None
    if kind == VERTEX:
        return VERTEX_NATIVE.match(model) is not None
    return False


def created_at(model_id: str) -> str:
    """The release date in a dated Anthropic id (…-YYYYMMDD) as RFC 3339, else ""."""
    m = _DATE.search(model_id)
    return f"{m[1]}-{m[2]}-{m[3]}T00:00:00Z" if m else ""


class ModelIds:
    """Anthropic model id → each kind's id and restrictions; read-only after construction."""

    def __init__(self, entries: Iterable[Entry] = BUILTIN) -> None:
        self.entries: dict[str, Entry] = {}
        for entry in entries:
            self.entries[entry.model.lower()] = entry
        self._by_name: dict[str, Entry] = {}
        for entry in self.entries.values():
            for name in entry.names:
                self._by_name.setdefault(name.lower(), entry)
        for key, entry in self.entries.items():
            self._by_name[key] = entry  # an entry's own id wins over another entry's extra name

    def entry(self, model: str) -> Entry | None:
        return self._by_name.get(model.strip().lower())

    def native_id(self, model: str, kind: str, profile_prefix: str | None = None) -> str | None:
        """The id `kind` takes for `model` (with the inference-profile prefix for Bedrock), or None."""
        if is_native(model, kind):
            return model
        entry = self.entry(model)
        offer = entry.offer(kind) if entry is not None else None
        if offer is None:
            return None
        if kind == BEDROCK and profile_prefix:
            return f"{profile_prefix}.{offer.id}"
        return offer.id

    def bedrock_id(self, model: str, profile_prefix: str | None) -> str | None:
        return self.native_id(model, BEDROCK, profile_prefix)

    def vertex_id(self, model: str) -> str | None:
        return self.native_id(model, VERTEX)

    def offers(self, model: str, kind: str, region: str | None = None, profile_prefix: str | None = None) -> bool:
        """Whether an account of `kind` in `region` (with Bedrock's `profile_prefix`) can serve `model`.

        Kinds this table does not cover (anthropic, anthropic-compatible) serve any Anthropic id and
        let their upstream judge it; only ids in another kind's own form are refused there.
        """
        if kind not in KINDS:
            return not any(is_native(model, k) for k in KINDS)
        if is_native(model, kind):
            return True
        entry = self.entry(model)
        offer = entry.offer(kind) if entry is not None else None
        if offer is None:
            return False
        if offer.regions is not None and region is not None and region not in offer.regions:
            return False
        if kind == BEDROCK:
            if profile_prefix:
                return offer.profiles is None or profile_prefix in offer.profiles
            return not offer.profile_only
        return True

    def models_for(self, kind: str, region: str | None = None, profile_prefix: str | None = None) -> list[Entry]:
        """The entries an account of this kind, region and profile can serve, in table order."""
        return [e for e in self.entries.values() if self.offers(e.model, kind, region, profile_prefix)]

    def extended(self, overrides: Mapping[str, Entry]) -> ModelIds:
        """A copy with `overrides` merged over: a kind given replaces that kind's offer, names add up."""
        merged = dict(self.entries)
        for key, new in overrides.items():
            old = merged.get(key.lower())
            if old is None:
                merged[key.lower()] = new
                continue
            names = tuple(dict.fromkeys((*old.names, *new.names)))
            offers = {**old.offers, **new.offers}
            merged[key.lower()] = replace(old, names=names, display_name=new.display_name or old.display_name,
                                          offers=offers)
        return ModelIds(merged.values())


# -- models.json ---------------------------------------------------------------------------


def _strings(value: object, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return frozenset(v.strip() for v in value)


def _offer(kind: str, raw: object) -> Offer | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"id": raw}
    if not isinstance(raw, dict):
        raise ValueError(f'"{kind}" must be an id string, an object with "id", or null')
    unknown = set(raw) - {"id", "regions", "profiles", "profile_only"}
    if unknown:
        raise ValueError(f'"{kind}" has unknown key(s) {sorted(unknown)}')
    if kind != BEDROCK and ("profiles" in raw or "profile_only" in raw):
        raise ValueError(f'"profiles" and "profile_only" apply to bedrock only, not "{kind}"')
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip() or re.search(r"[\x00-\x20\x7f/]", model_id):
        raise ValueError(f'"{kind}.id" must be a model id without spaces or slashes')
    profiles = _strings(raw.get("profiles"), f'"{kind}.profiles"')
    if profiles is not None and not profiles <= PROFILE_PREFIXES:
        raise ValueError(f'"{kind}.profiles" may hold only {sorted(PROFILE_PREFIXES)}')
    profile_only = raw.get("profile_only", False)
    if not isinstance(profile_only, bool):
        raise ValueError(f'"{kind}.profile_only" must be true or false')
    if kind == BEDROCK and model_id.split(".", 1)[0] in PROFILE_PREFIXES:
        raise ValueError(f'"{kind}.id" is the base id; the account\'s profile prefix is added per account')
    return Offer(model_id.strip(), _strings(raw.get("regions"), f'"{kind}.regions"'), profiles, profile_only)


def parse_entry(model: str, raw: Any) -> Entry:
    """One models.json entry; ValueError says what is wrong with it (never more than the entry)."""
    if not isinstance(model, str) or not model.strip() or re.search(r"[\x00-\x20\x7f]", model):
        raise ValueError("the model id must be a non-empty string without spaces")
    if not isinstance(raw, dict):
        raise ValueError("must be an object")
    unknown = set(raw) - {"names", "display_name", *KINDS}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; known: names, display_name, {', '.join(KINDS)}")
    names = raw.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError('"names" must be a list of non-empty strings')
    display = raw.get("display_name")
    if display is not None and not isinstance(display, str):
        raise ValueError('"display_name" must be a string')
    offers = {kind: _offer(kind, raw[kind]) for kind in KINDS if kind in raw}
    return Entry(model.strip(), tuple(n.strip() for n in names), display, offers)


def parse_entries(raw: object) -> tuple[dict[str, Entry], list[str]]:
    """models.json's "models" object → (good entries, one warning per bad entry)."""
    if not isinstance(raw, dict):
        return {}, ['"models" must be an object mapping Anthropic model ids to their per-kind ids']
    good: dict[str, Entry] = {}
    warnings: list[str] = []
    for model, value in raw.items():
        try:
            good[str(model)] = parse_entry(model, value)
        except ValueError as exc:
            warnings.append(f"model {str(model)[:80]!r}: {exc}; entry ignored")
    return good, warnings
