"""Model prices, for the cost column of usage analytics.

USD per million tokens, keyed by model-id prefix (longest prefix wins). Users override
or extend them in prices.json: {"models": {"claude-foo": {"input": 1, "output": 5}}};
cache rates left out of an entry follow the usual multiples of its input rate.

A provider may charge differently from Anthropic (Bedrock's and Vertex AI's regional endpoints,
for one): a section named after an account kind, {"bedrock": {"claude-sonnet-4-5": {...}}},
prices the requests that accounts of that kind served. A model it does not name, or rates an
entry leaves out, cost what they cost on Anthropic's own price list (the "models" section).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dario.daemon.atomicfile import read_config_json

RATE_KEYS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
# Anthropic's cache pricing, as multiples of the input rate.
CACHE_MULTIPLIERS = {"cache_write_5m": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1}


def _rates(input: float, output: float) -> dict[str, float]:
    rates = {"input": float(input), "output": float(output)}
    for key, mult in CACHE_MULTIPLIERS.items():
        rates[key] = round(input * mult, 6)
    return rates


DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4-5": _rates(5, 25),
    "claude-opus-4-1": _rates(15, 75),
    # Opus 4.0 by its two spellings, not "claude-opus-4": that prefix would also price
    # every later Opus 4.x at the old 15/75. An unknown model shows "cost unknown" instead.
    "claude-opus-4-0": _rates(15, 75),
    "claude-opus-4-2025": _rates(15, 75),
    "claude-sonnet-4": _rates(3, 15),
    "claude-3-7-sonnet": _rates(3, 15),
    "claude-3-5-sonnet": _rates(3, 15),
    "claude-haiku-4-5": _rates(1, 5),
    "claude-3-5-haiku": _rates(0.8, 4),
    "claude-3-haiku": _rates(0.25, 1.25),
    "claude-3-opus": _rates(15, 75),
}


def _normalise(model: str) -> str:
    # "anthropic/claude-…" (LiteLLM/OpenRouter style) names the same model.
    return model.strip().lower().rsplit("/", 1)[-1]


class _Prefixes:
    """Model-id prefix → rates, longest prefix first."""

    def __init__(self, prices: dict[str, dict[str, float]]) -> None:
        self.prices = {k.lower(): dict(v) for k, v in prices.items()}
        self.order = sorted(self.prices, key=len, reverse=True)

    def match(self, name: str) -> dict[str, float] | None:
        for prefix in self.order:
            if name.startswith(prefix):
                return self.prices[prefix]
        return None


class PriceTable:
    def __init__(self, prices: dict[str, dict[str, float]] | None = None,
                 kinds: dict[str, dict[str, dict[str, float]]] | None = None) -> None:
        self._default = _Prefixes(DEFAULT_PRICES if prices is None else prices)
        # Per account kind: overrides consulted first for requests that kind served.
        self._kinds = {kind.lower(): _Prefixes(table) for kind, table in (kinds or {}).items()}

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        doc = read_config_json(path, "price file")
        if doc is None:
            return cls()
        shape = (f'price file {path} must look like {{"models": {{"<model prefix>": {{...}}}}}}, optionally with '
                 f'per-kind sections like {{"bedrock": {{"<model prefix>": {{...}}}}}}')
        if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) for v in doc.values()):
            raise ValueError(shape)
        prices = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
        for prefix, entry in doc.get("models", {}).items():
            prices[prefix.lower()] = cls._parse_entry(path, prefix, entry, prices.get(prefix.lower()))
        default = _Prefixes(prices)
        kinds: dict[str, dict[str, dict[str, float]]] = {}
        for kind, section in doc.items():
            if kind == "models":
                continue
            table: dict[str, dict[str, float]] = {}
            for prefix, entry in section.items():
                # A kind's entry starts from the Anthropic price of the same model.
                base = default.match(_normalise(prefix)) if prefix else None
                table[prefix.lower()] = cls._parse_entry(path, f"{kind}: {prefix}" if prefix else "", entry, base)
            kinds[kind] = table
        return cls(prices, kinds)

    @staticmethod
    def _parse_entry(path: Path, prefix: str, entry: Any, base: dict[str, float] | None) -> dict[str, float]:
        where = f"price file {path}, model {prefix!r}"
        if not prefix:
            raise ValueError(f"price file {path}: empty model prefix")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object of rates (USD per million tokens)")
        unknown = set(entry) - set(RATE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown rate(s) {sorted(unknown)}; known: {list(RATE_KEYS)}")
        given: dict[str, float] = {}
        for key, value in entry.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{where}: {key} must be a non-negative number")
            given[key] = float(value)
        if base is None:
            if "input" not in given or "output" not in given:
                raise ValueError(f"{where}: a new model needs at least 'input' and 'output'")
            base = {}
        rates = dict(base)
        rates.update(given)
        # A changed input rate moves the cache rates with it, unless they were given too.
        if "input" in given:
            for key, mult in CACHE_MULTIPLIERS.items():
                if key not in given:
                    rates[key] = round(given["input"] * mult, 6)
        return rates

    def rates(self, model: str, kind: str | None = None) -> dict[str, float] | None:
        """The rates for `model` as served by an account of `kind` (None: Anthropic's own prices)."""
        name = _normalise(model)
        if kind is not None and self._kinds:
            table = self._kinds.get(kind.lower())
            hit = table.match(name) if table is not None else None
            if hit is not None:
                return hit
        return self._default.match(name)

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
        cache_read: int = 0,
        kind: str | None = None,
    ) -> float | None:
        rates = self.rates(model, kind) if model else None
        if rates is None:
            return None
        total = (
            input_tokens * rates["input"]
            + output_tokens * rates["output"]
            + cache_write_5m * rates["cache_write_5m"]
            + cache_write_1h * rates["cache_write_1h"]
            + cache_read * rates["cache_read"]
        )
        return total / 1_000_000
