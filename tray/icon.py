"""The tray glyph: a rounded square whose colour says the pool's health.

Drawn at 4x and reduced with a box filter, so edges are smooth at 16 px and every pixel fully
inside a shape keeps its exact colour (tests read pixels against the constants below).
The white mark differs too (a ring, or a bar when nothing can serve) so the icon does not rely
on colour alone.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from dario.tray.model import TrayHealth

RGBA = tuple[int, int, int, int]

GREEN: RGBA = (46, 160, 67, 255)
AMBER: RGBA = (230, 150, 0, 255)
RED: RGBA = (208, 36, 48, 255)
GREY: RGBA = (128, 128, 128, 255)
MARK: RGBA = (255, 255, 255, 255)
CLEAR: RGBA = (0, 0, 0, 0)

FILL: dict[TrayHealth, RGBA] = {
    TrayHealth.HEALTHY: GREEN,
    TrayHealth.DEGRADED: AMBER,
    TrayHealth.UNAVAILABLE: RED,
    TrayHealth.STOPPED: GREY,
}
EMPTY_OUTLINE: RGBA = GREY  # EMPTY draws only the outline: the daemon runs, there is nothing to show

# Geometry as fractions of the icon's side, chosen so that at 16 px the margin is 1 px,
# outline, ring and bar 2 px, and the coloured band between edge and mark 3 px: whole pixels.
_MARGIN = 1 / 16
_RADIUS = 0.25
_OUTLINE = 2 / 16
_RING_OUTER = 0.25
_RING_WIDTH = 2 / 16
_BAR_HALF_W = 0.25
_BAR_HALF_H = 1 / 16

_SCALE = 4


def draw_icon(health: TrayHealth, size: int = 64) -> Image.Image:
    if size < 8:
        raise ValueError(f"icon size {size} is too small to draw")
    big = size * _SCALE
    image = Image.new("RGBA", (big, big), CLEAR)
    draw = ImageDraw.Draw(image)
    lo, hi = _MARGIN * big, (1 - _MARGIN) * big - 1
    radius = _RADIUS * big
    if health is TrayHealth.EMPTY:
        draw.rounded_rectangle((lo, lo, hi, hi), radius=radius, outline=EMPTY_OUTLINE,
                               width=round(_OUTLINE * big))
    else:
        draw.rounded_rectangle((lo, lo, hi, hi), radius=radius, fill=FILL[health])
        centre = big / 2
        if health is TrayHealth.UNAVAILABLE:
            draw.rectangle(
                (centre - _BAR_HALF_W * big, centre - _BAR_HALF_H * big,
                 centre + _BAR_HALF_W * big - 1, centre + _BAR_HALF_H * big - 1),
                fill=MARK,
            )
        else:
            r = _RING_OUTER * big
            draw.ellipse((centre - r, centre - r, centre + r - 1, centre + r - 1), outline=MARK,
                         width=round(_RING_WIDTH * big))
    # BOX averages each 4x4 block: pixels wholly inside a shape keep its exact colour.
    return image.resize((size, size), Image.Resampling.BOX)
