"""`dario-ctl run` and `dario-ctl env` against a real dariod, with tools that read only their environment.

The tools are the official anthropic and openai SDKs, built with no arguments: whatever reaches
dario comes from the variables `run`/`env` set. With DARIO_API_KEY on the daemon, each tool gets
a client key of its own, kept in the keyring and attributed in usage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from dario.ctl.toolenv import tool_name
from tests.support import ROOT, Dariod

pytestmark = pytest.mark.timeout(120)

MODEL = "claude-haiku-4-5-20251001"
MASTER = "dario-master-key-for-run-env-test"
ACCOUNT_KEY = "sk-ant-run-env-account"

# Each prints one JSON line: what the SDK answered and the variables it saw.
ANTHROPIC_TOOL = f"""
import anthropic, json, os
with anthropic.Anthropic(max_retries=0, timeout=30) as a:
    m = a.messages.create(model={MODEL!r}, max_tokens=16, messages=[{{"role": "user", "content": "Hi"}}])
print(json.dumps({{"pid": os.getpid(), "type": m.type, "env": {{k: v for k, v in os.environ.items()
      if k.startswith(("ANTHROPIC_", "OPENAI_", "DARIO_"))}}}}))
"""
OPENAI_TOOL = f"""
import openai, json, os
with openai.OpenAI(max_retries=0, timeout=30) as o:
    c = o.chat.completions.create(model={MODEL!r}, messages=[{{"role": "user", "content": "Hi"}}])
print(json.dumps({{"pid": os.getpid(), "object": c.object, "env": {{k: v for k, v in os.environ.items()
      if k.startswith(("ANTHROPIC_", "OPENAI_", "DARIO_"))}}}}))
"""


@pytest.fixture
def gateway(dariod_factory: Callable[..., Dariod], upstream: Any) -> Dariod:
    d = dariod_factory()
    d.login("main", ACCOUNT_KEY, upstream.url)
    return d


@pytest.fixture
def locked_gateway(dariod_factory: Callable[..., Dariod], upstream: Any) -> Dariod:
    d = dariod_factory(env={"DARIO_API_KEY": MASTER})
    d.login("main", ACCOUNT_KEY, upstream.url)
    return d


def run_tool(d: Dariod, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dario-ctl run ARGS` with the test's environment plus `env` (e.g. a stray key in the shell)."""
    return subprocess.run(
        [sys.executable, "-m", "dario.ctl.cli", "--socket", str(d.socket), "run", *args],
        cwd=ROOT, env={**d.env, **(env or {})}, capture_output=True, text=True, timeout=90,
    )


def last_json(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def by_client(d: Dariod) -> dict[str, int]:
    usage = d.ctl_json("usage", "--window", "1h")
    return {g["key"]: g["requests"] for g in usage["by_client"]}


def keyring_names(d: Dariod) -> list[str]:
    return [k["name"] for k in d.ctl_json("keys", "list")["keys"]]


# -- without DARIO_API_KEY -----------------------------------------------------------------------


def test_run_points_both_sdks_at_the_daemons_real_address(gateway: Dariod) -> None:
    seen = last_json(run_tool(gateway, "--", sys.executable, "-c", ANTHROPIC_TOOL))
    assert seen["type"] == "message"
    assert seen["env"]["ANTHROPIC_BASE_URL"] == gateway.url  # the ephemeral port, not 3456
    assert seen["env"]["ANTHROPIC_API_KEY"] == "dario"  # a placeholder: no key is needed
    seen = last_json(run_tool(gateway, "--", sys.executable, "-c", OPENAI_TOOL))
    assert seen["object"] == "chat.completion"
    assert seen["env"]["OPENAI_BASE_URL"] == gateway.url + "/v1"
    assert keyring_names(gateway) == []  # no key is made when none is required


def test_run_replaces_the_process_and_passes_exit_codes_and_signals(gateway: Dariod) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dario.ctl.cli", "--socket", str(gateway.socket), "run", "--",
         sys.executable, "-c", "import os; print(os.getpid())"],
        cwd=ROOT, env=gateway.env, stdout=subprocess.PIPE, text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert int(out) == proc.pid  # exec: the tool is the process dario-ctl was
    assert run_tool(gateway, "--", "sh", "-c", "exit 7").returncode == 7
    assert run_tool(gateway, "--", "sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM
    missing = run_tool(gateway, "--", "no-such-tool-for-dario")
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_run_without_a_command_is_a_usage_error(gateway: Dariod) -> None:
    out = run_tool(gateway, "--name", "x")
    assert out.returncode == 2 and "no command given" in out.stderr


def test_run_without_a_daemon_exits_3_with_the_start_command(dariod_factory: Callable[..., Dariod]) -> None:
    d = dariod_factory(start=False)
    out = run_tool(d, "--", "sh", "-c", "echo ran")
    assert out.returncode == 3
    from dario.daemon.commands import command

    assert "dariod is not running" in out.stderr and f"start it with: {command('dariod')}" in out.stderr
    assert "dario-ctl run --start" in out.stderr
    assert "ran" not in out.stdout
    env = d.ctl("env")
    assert env.returncode == 3 and env.stdout == ""  # nothing for eval to run


def test_run_start_starts_the_daemon_first(dariod_factory: Callable[..., Dariod]) -> None:
    d = dariod_factory(start=False)
    d.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = run_tool(d, "--start", "--", sys.executable, "-c",
                   "import os; print(os.environ['ANTHROPIC_BASE_URL'])", env={"DARIO_PORT": "0"})
    try:
        assert out.returncode == 0, out.stderr
        status = d.ctl_json("status")
        assert out.stdout.strip() == status["listen"]
    finally:
        if d.socket.exists():
            os.kill(d.ctl_json("status")["pid"], signal.SIGTERM)


def test_eval_env_in_sh_then_an_sdk_call(gateway: Dariod) -> None:
    script = f'eval "$("$PY" -m dario.ctl.cli --socket "{gateway.socket}" env)" && exec "$PY" -c "$TOOL"'
    out = subprocess.run(["sh", "-c", script], cwd=ROOT, env={**gateway.env, "TOOL": OPENAI_TOOL, "PY": sys.executable,
                         "ANTHROPIC_AUTH_TOKEN": "stray-token"}, capture_output=True, text=True, timeout=90)
    seen = last_json(out)
    assert seen["object"] == "chat.completion"
    assert seen["env"]["OPENAI_BASE_URL"] == gateway.url + "/v1"
    assert "ANTHROPIC_AUTH_TOKEN" not in seen["env"]  # unset, not sent along with the key


def test_env_speaks_fish_and_powershell(gateway: Dariod) -> None:
    fish = gateway.ctl("env", "--shell", "fish")
    assert fish.returncode == 0, fish.stderr
    assert f"set -gx ANTHROPIC_BASE_URL '{gateway.url}'" in fish.stdout.splitlines()
    assert f"set -gx OPENAI_BASE_URL '{gateway.url}/v1'" in fish.stdout.splitlines()
    assert "set -e ANTHROPIC_AUTH_TOKEN" in fish.stdout.splitlines()
    ps = gateway.ctl("env", "--shell", "powershell")
    assert f"$env:ANTHROPIC_BASE_URL = '{gateway.url}'" in ps.stdout.splitlines()
    assert "$env:OPENAI_API_KEY = 'dario'" in ps.stdout.splitlines()
    assert "Remove-Item Env:ANTHROPIC_AUTH_TOKEN -ErrorAction SilentlyContinue" in ps.stdout.splitlines()


# -- with DARIO_API_KEY ------------------------------------------------------------------------


def test_run_makes_a_client_key_per_tool_and_reuses_it(locked_gateway: Dariod) -> None:
    d = locked_gateway
    stray = {"DARIO_API_KEY": MASTER}  # the user's shell may hold the master key: it must not leak
    first = last_json(run_tool(d, "--", sys.executable, "-c", ANTHROPIC_TOOL, env=stray))
    second = last_json(run_tool(d, "--", sys.executable, "-c", OPENAI_TOOL, env=stray))
    name = tool_name(sys.executable)  # named after the command
    assert keyring_names(d) == [name]
    key = first["env"]["ANTHROPIC_API_KEY"]
    assert key.startswith("dario-") and key != MASTER
    assert second["env"]["OPENAI_API_KEY"] == key  # reused, not made again
    assert "DARIO_API_KEY" not in first["env"] and "DARIO_API_KEY" not in second["env"]
    assert by_client(d).get(name) == 2


def test_run_name_and_revocation(locked_gateway: Dariod) -> None:
    d = locked_gateway
    first = last_json(run_tool(d, "--name", "aider", "--", sys.executable, "-c", ANTHROPIC_TOOL))
    assert d.ctl("keys", "revoke", "aider").returncode == 0
    again = last_json(run_tool(d, "--name", "aider", "--", sys.executable, "-c", ANTHROPIC_TOOL))
    assert again["env"]["ANTHROPIC_API_KEY"] != first["env"]["ANTHROPIC_API_KEY"]  # a new key
    assert keyring_names(d) == ["aider"]
    assert by_client(d).get("aider") == 2


def test_run_refuses_a_name_whose_key_it_does_not_hold(locked_gateway: Dariod) -> None:
    d = locked_gateway
    assert d.ctl("keys", "create", "claude").returncode == 0  # made by hand, secret not in the keyring
    out = run_tool(d, "--", "sh", "-c", "echo ran")
    assert out.returncode == 0  # the command is "sh": its own name
    out = run_tool(d, "--name", "claude", "--", "sh", "-c", "echo ran")
    assert out.returncode == 1 and "ran" not in out.stdout
    assert "dario-ctl keys revoke claude" in out.stderr and "--name" in out.stderr


def test_run_claude_gets_a_bearer_token(locked_gateway: Dariod, tmp_path: Any) -> None:
    # A stand-in `claude` on PATH shows what Claude Code would be given.
    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\necho \"token=${ANTHROPIC_AUTH_TOKEN:-} key=${ANTHROPIC_API_KEY:-none}\"\n")
    fake.chmod(0o755)
    out = run_tool(locked_gateway, "--", "claude", env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("token=dario-") and out.stdout.strip().endswith("key=none")
    assert keyring_names(locked_gateway) == ["claude"]


def test_eval_env_with_a_required_key(locked_gateway: Dariod) -> None:
    d = locked_gateway
    script = f'eval "$("$PY" -m dario.ctl.cli --socket "{d.socket}" env --name scripts)" && exec "$PY" -c "$TOOL"'
    out = subprocess.run(["sh", "-c", script], cwd=ROOT, env={**d.env, "TOOL": ANTHROPIC_TOOL, "PY": sys.executable},
                         capture_output=True, text=True, timeout=90)
    seen = last_json(out)
    assert seen["type"] == "message"
    assert by_client(d).get("scripts") == 1
    assert MASTER not in d.ctl("env", "--name", "scripts").stdout


TRAY_COPY = """
import sys
from pathlib import Path
from dario.ctl.client import ControlClient
from dario.tray import app
copied = []
effects = app.Effects(open_url=print, copy_text=lambda t: copied.append(t) or True,
                      show_text=lambda title, text: False, start_daemon=print,
                      notify=lambda m: None, quit=lambda: None)
client = ControlClient(Path(sys.argv[1]))
app.dispatch("copy-settings", client, client.status(), effects)
sys.stdout.write(copied[0])
"""


def test_tray_copies_what_env_prints(locked_gateway: Dariod) -> None:
    d = locked_gateway
    tray = subprocess.run([sys.executable, "-c", TRAY_COPY, str(d.socket)], cwd=ROOT, env=d.env,
                          capture_output=True, text=True, timeout=60)
    assert tray.returncode == 0, tray.stderr
    env = d.ctl("env")
    assert env.returncode == 0, env.stderr
    assert tray.stdout == env.stdout  # the same client key ("shell"), made once and reused
    assert "export ANTHROPIC_API_KEY='dario-" in tray.stdout and keyring_names(d) == ["shell"]
