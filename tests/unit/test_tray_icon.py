"""The tray glyph: colours by health, crisp at the sizes trays use."""

from __future__ import annotations

import pytest

from dario.tray import icon
from dario.tray.model import TrayHealth

SIZES = (16, 32, 64)


def band(size: int) -> tuple[int, int]:
    # Top centre, between the glyph's edge and its white mark: solid fill at every size.
    return size // 2, int(size * 0.2)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("health", "colour"),
    [
        (TrayHealth.HEALTHY, icon.GREEN),
        (TrayHealth.DEGRADED, icon.AMBER),
        (TrayHealth.UNAVAILABLE, icon.RED),
        (TrayHealth.STOPPED, icon.GREY),
    ],
)
def test_fill_colour_says_health(health: TrayHealth, colour: tuple[int, ...], size: int) -> None:
    image = icon.draw_icon(health, size)
    assert image.size == (size, size)
    assert image.mode == "RGBA"
    assert image.getpixel(band(size)) == colour
    assert image.getpixel((0, 0)) == icon.CLEAR  # rounded corner: transparent, not a square tile


@pytest.mark.parametrize("size", SIZES)
def test_empty_is_an_outline(size: int) -> None:
    image = icon.draw_icon(TrayHealth.EMPTY, size)
    edge = (size // 2, size // 16)  # inside the 2/16-wide outline
    assert image.getpixel(edge) == icon.EMPTY_OUTLINE
    assert image.getpixel((size // 2, size // 2)) == icon.CLEAR
    assert image.getpixel(band(size)) == icon.CLEAR


@pytest.mark.parametrize("size", SIZES)
def test_mark_differs_when_nothing_can_serve(size: int) -> None:
    # Not colour alone: a ring (hollow centre) for the others, a solid bar when unavailable.
    centre = (size // 2, size // 2)
    assert icon.draw_icon(TrayHealth.UNAVAILABLE, size).getpixel(centre) == icon.MARK
    assert icon.draw_icon(TrayHealth.HEALTHY, size).getpixel(centre) == icon.GREEN
    ring_top = (size // 2, round(size * (0.5 - icon._RING_OUTER + icon._RING_WIDTH / 2)))
    assert icon.draw_icon(TrayHealth.HEALTHY, size).getpixel(ring_top) == icon.MARK


def test_edges_are_antialiased() -> None:
    # Downsampled from 4x: the rounded corner has partly transparent pixels, not a jagged step.
    image = icon.draw_icon(TrayHealth.HEALTHY, 32)
    alphas = {image.getpixel((x, y))[3] for x in range(8) for y in range(8)}
    assert any(0 < a < 255 for a in alphas)


def test_every_health_has_a_distinct_look() -> None:
    images = [icon.draw_icon(h, 32).tobytes() for h in TrayHealth]
    assert len(set(images)) == len(TrayHealth)


def test_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        icon.draw_icon(TrayHealth.HEALTHY, 4)
