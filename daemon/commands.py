"""How to name dario's own commands in a hint so that the user's shell can run them.

The README's install leaves `dariod` and `dario-ctl` in a virtualenv's bin folder, which is not
on PATH unless the venv is active. A hint that says "run: dario-ctl login" would then answer
"command not found"; it names the absolute path instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def command(name: str) -> str:
    """`name` when PATH finds this install's copy (or nothing better is known), else its full path."""
    # Not resolved: in a venv, sys.executable is a symlink inside the venv's bin folder, beside the scripts.
    sibling = Path(sys.executable).parent / name
    if not (sibling.is_file() and os.access(sibling, os.X_OK)):
        return name
    found = shutil.which(name)
    if found is not None and _same_file(Path(found), sibling):
        return name
    return shlex.quote(str(sibling))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
