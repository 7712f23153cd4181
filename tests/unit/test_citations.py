"""Comments cite public sources: a reader of the repository must be able to follow every reference.

Section signs are fine after a public standard ("RFC 9110 §7.8", "ECMA-48 §5.3"); a bare "§1.8",
an item number such as "E12", or the name of a document that is not in the repository is not.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for part in ("daemon", "ctl", "tray", "tests") for p in (ROOT / part).rglob("*.py")
                 if p != Path(__file__).resolve())  # this file names what it looks for
PRIVATE_DOCUMENTS = re.compile(r"\b(protocol|DESIGN|daemon-anchors|gateway-anchors)\.md\b|-anchors §")
ITEM_NUMBER = re.compile(r"\bE\d{1,2}\b")
PUBLIC_STANDARD = re.compile(r"\b(RFC \d+|ECMA-\d+) §")


def _offending_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1)
            if PRIVATE_DOCUMENTS.search(line) or ITEM_NUMBER.search(line)
            or len(PUBLIC_STANDARD.findall(line)) < line.count("§")]


def test_references_are_public() -> None:
    found = []
    for path in [*SOURCES, ROOT / "README.md"]:
        lines = path.read_text(encoding="utf-8").splitlines()
        found += [f"{path.relative_to(ROOT)}:{n}: {lines[n - 1].strip()}" for n in _offending_lines("\n".join(lines))]
    assert found == []


def test_the_check_catches_what_it_should() -> None:
    sample = "# see protocol.md §1.8\n# (E4)\nx = 1  # RFC 9110 §7.8\n# as in §3\n# 0xE1, E501, ECMA-48 §5.3\n"
    assert _offending_lines(sample) == [1, 2, 4]
