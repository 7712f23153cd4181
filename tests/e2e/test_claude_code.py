"""Claude Code itself, pointed at dario the way a user would, against the fake upstream.

Needs the `claude` binary: on PATH, or at $DARIO_CLAUDE_CODE (tests/run installs it from npm
into .cache/claude-code when npm is available). Skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Dariod


def claude_binary() -> str | None:
    candidates = [
        os.environ.get("DARIO_CLAUDE_CODE", ""),
        str(ROOT / ".cache/claude-code/node_modules/@anthropic-ai/claude-code/bin/claude.exe"),
        shutil.which("claude") or "",
    ]
    for path in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


CLAUDE = claude_binary()
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (tests/run installs it)")


def run_claude(dariod: Dariod, prompt: str) -> dict[str, Any]:
    assert CLAUDE is not None
    home = tempfile.mkdtemp(prefix="dario-cc-")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "ANTHROPIC_BASE_URL": dariod.url,
        "ANTHROPIC_API_KEY": "dario-local",  # any value: dario holds the real key
        # Keep Claude Code to the API calls under test: no telemetry or update checks
        # (the test machine has no internet).
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    try:
        result = subprocess.run(
            [CLAUDE, "-p", prompt, "--output-format", "json"],
            env=env, cwd=home, capture_output=True, text=True, timeout=180,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return dict(json.loads(result.stdout))


def test_claude_code_works_through_dario(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-claude-code-e2e", upstream.url)
    out = run_claude(dariod, "Say hello")
    assert out["is_error"] is False
    assert out["result"] == "Hello from the fake upstream."
    calls = [r for r in upstream.requests() if r["path"] == "/v1/messages"]
    assert calls, "Claude Code's request never reached the upstream"
    for call in calls:
        assert call["key"] == "sk-claude-code-e2e"  # the account's key, not the tool's
        assert call["headers"]["user-agent"].startswith("dario/")
        assert call["query"] == "beta=true"  # the beta path, with its query string
        assert call["headers"].get("anthropic-beta")  # forwarded verbatim


def test_claude_code_streams_thinking_through_dario(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-claude-code-e2e", upstream.url)
    out = run_claude(dariod, "Think first. [[thinking]]")
    assert out["is_error"] is False
    assert out["result"] == "Hello from the fake upstream."
