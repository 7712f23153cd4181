"""`dario-ctl run -- claude`: Claude Code started by dario-ctl, reading only what `run` set.

Needs the `claude` binary (see test_claude_code.py); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_claude_code import CLAUDE
from tests.support import Dariod

pytestmark = [
    pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (tests/run installs it)"),
    pytest.mark.timeout(240),
]
MASTER = "dario-master-key-for-run-claude-test"


def run_claude(d: Dariod, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CLAUDE is not None
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "claude").unlink(missing_ok=True)
    (bin_dir / "claude").symlink_to(CLAUDE)  # on PATH as `claude`, as an installed one is
    env = {
        **d.env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        # The test machine has no internet: no telemetry or update checks.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
    }
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "dario.ctl.cli", "--socket", str(d.socket), "run", "--", "claude", *args],
        cwd=home, env=env, capture_output=True, text=True, timeout=200,
    )


def test_run_claude_with_a_required_key(dariod_factory: Callable[..., Dariod], upstream: Any,
                                        tmp_path: Path) -> None:
    d = dariod_factory(env={"DARIO_API_KEY": MASTER})
    d.login("work", "sk-run-claude-e2e", upstream.url)
    for _ in range(2):  # the second run reuses the key the first one made
        out = run_claude(d, tmp_path, "-p", "Say hello", "--output-format", "json")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        result = json.loads(out.stdout)
        assert result["is_error"] is False and result["result"] == "Hello from the fake upstream."
    assert [k["name"] for k in d.ctl_json("keys", "list")["keys"]] == ["claude"]
    usage = d.ctl_json("usage", "--window", "1h")
    assert {g["key"] for g in usage["by_client"]} == {"claude"}
    calls = [r for r in upstream.requests() if r["path"] == "/v1/messages"]
    assert calls and all(c["key"] == "sk-run-claude-e2e" for c in calls)  # the account's key upstream
