from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from dario.daemon.recording.prices import DEFAULT_PRICES, PriceTable


@pytest.mark.parametrize(
    ("model", "inp", "out"),
    [
        ("claude-opus-4-5-20251101", 5, 25),
        ("claude-opus-4-1-20250805", 15, 75),
        ("claude-opus-4-20250514", 15, 75),
        ("claude-opus-4-0", 15, 75),
        ("claude-sonnet-4-5-20250929", 3, 15),
        ("claude-sonnet-4-20250514", 3, 15),
        ("claude-3-7-sonnet-20250219", 3, 15),
        ("claude-haiku-4-5-20251001", 1, 5),
        ("claude-3-5-haiku-20241022", 0.8, 4),
        ("anthropic/claude-sonnet-4-5", 3, 15),
        ("Claude-Haiku-4-5", 1, 5),
    ],
)
def test_default_rates_by_longest_prefix(model: str, inp: float, out: float) -> None:
    table = PriceTable()
    assert table.cost(model, 1_000_000, 0) == pytest.approx(inp)
    assert table.cost(model, 0, 1_000_000) == pytest.approx(out)


def test_cache_rates_are_multiples_of_input() -> None:
    for rates in DEFAULT_PRICES.values():
        assert rates["cache_write_5m"] == pytest.approx(rates["input"] * 1.25)
        assert rates["cache_write_1h"] == pytest.approx(rates["input"] * 2)
        assert rates["cache_read"] == pytest.approx(rates["input"] * 0.1)
    cost = PriceTable().cost(
        "claude-opus-4-5", 1000, 2000, cache_write_5m=3000, cache_write_1h=4000, cache_read=5000
    )
    assert cost == pytest.approx((1000 * 5 + 2000 * 25 + 3000 * 6.25 + 4000 * 10 + 5000 * 0.5) / 1e6)


def test_unknown_model_has_no_price() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o", 100, 100) is None
    assert table.cost("", 100, 100) is None
    # A later Opus 4.x must not silently get Opus 4.0's price.
    assert table.cost("claude-opus-4-9", 100, 100) is None


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    table = PriceTable.load(tmp_path / "prices.json")
    assert table.cost("claude-sonnet-4-5", 1_000_000, 0) == pytest.approx(3)


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(
        orjson.dumps(
            {
                "models": {
                    "claude-sonnet-4": {"input": 4},
                    "claude-sonnet-4-5-special": {"input": 10, "output": 50, "cache_read": 0},
                    "my-local": {"input": 0, "output": 0},
                }
            }
        )
    )
    table = PriceTable.load(path)
    assert table.rates("claude-sonnet-4-5") == {
        "input": 4.0,
        "output": 15.0,  # kept from the default
        "cache_write_5m": 5.0,  # follows the new input rate
        "cache_write_1h": 8.0,
        "cache_read": pytest.approx(0.4),
    }
    special = table.rates("claude-sonnet-4-5-special-2026")
    assert special is not None and special["input"] == 10 and special["cache_read"] == 0
    assert special["cache_write_1h"] == 20
    assert table.cost("my-local-llama", 10**6, 10**6) == 0.0
    assert table.cost("claude-opus-4-5", 10**6, 0) == pytest.approx(5)  # untouched default


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"models": []}',
        b'{"models": {"x": {"input": 1}}}',  # a new model needs output too
        b'{"models": {"x": {"input": 1, "output": -2}}}',
        b'{"models": {"x": {"input": 1, "output": "2"}}}',
        b'{"models": {"claude-sonnet-4": {"inptu": 1}}}',
    ],
)
def test_bad_file_is_value_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"prices\.json"):
        PriceTable.load(path)
