"""dario-ctl and the tray carry no dead code: vulture finds no unused function, method or name.

A name listed in KEPT is used from outside the code vulture reads (a library calls it back or
reads it); each says who.
"""

from __future__ import annotations

from pathlib import Path

import vulture

ROOT = Path(__file__).resolve().parents[2]
KEPT = {
    ("tray/app.py", "item"),  # pystray calls a menu action as action(icon, item)
    ("tray/app.py", "visible"),  # pystray's Icon.visible property shows the icon
}


def test_ctl_and_tray_have_no_unused_code() -> None:
    v = vulture.Vulture()
    v.scavenge([str(ROOT / "ctl"), str(ROOT / "tray")])
    unused = {(Path(item.filename).relative_to(ROOT).as_posix(), item.name, item.first_lineno)
              for item in v.get_unused_code(min_confidence=60)}
    assert sorted(u for u in unused if u[:2] not in KEPT) == []
