"""The settings that point tools at dario: addresses, key variables, and each shell's quoting."""

from __future__ import annotations

import subprocess

import pytest

from dario.ctl.toolenv import PLACEHOLDER_KEY, apply, client_address, render, tool_env, tool_name

AWKWARD = "it's a $HOME `x` \\ \"q\""  # quotes, expansions and backslashes: must come through verbatim


@pytest.mark.parametrize(("listen", "address"), [
    ("http://127.0.0.1:3456", "http://127.0.0.1:3456"),
    ("http://127.0.0.1:4000/", "http://127.0.0.1:4000"),
    ("http://0.0.0.0:3456", "http://127.0.0.1:3456"),
    ("http://[::]:3456", "http://[::1]:3456"),
    ("http://[::1]:3456", "http://[::1]:3456"),
    ("http://localhost:80", "http://localhost:80"),
])
def test_client_address(listen: str, address: str) -> None:
    assert client_address(listen) == address


def test_base_urls_follow_what_each_sdk_appends() -> None:
    env = tool_env("http://127.0.0.1:4000", None)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"  # the SDK adds /v1/messages
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:4000/v1"  # the SDK adds /chat/completions
    assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"] == PLACEHOLDER_KEY
    assert env["ANTHROPIC_AUTH_TOKEN"] is None


def test_claude_gets_the_key_as_a_bearer_token() -> None:
    env = tool_env("http://127.0.0.1:4000", "dario-k", "claude")
    assert env["ANTHROPIC_AUTH_TOKEN"] == "dario-k" and env["ANTHROPIC_API_KEY"] is None
    assert env["OPENAI_API_KEY"] == "dario-k"


def test_apply_sets_unsets_and_drops_the_master_key() -> None:
    out = apply({"PATH": "/bin", "DARIO_API_KEY": "master", "ANTHROPIC_AUTH_TOKEN": "stray"},
                tool_env("http://127.0.0.1:1", "dario-k"))
    assert out["PATH"] == "/bin" and out["ANTHROPIC_API_KEY"] == "dario-k"
    assert "DARIO_API_KEY" not in out and "ANTHROPIC_AUTH_TOKEN" not in out


@pytest.mark.parametrize(("command", "name"), [
    ("claude", "claude"), ("/usr/local/bin/aider", "aider"), (r"C:\Tools\Claude.EXE", "Claude"),
    ("python3.11", "python3.11"), ("my tool!", "my-tool"), ("...", "tool"),
])
def test_tool_name(command: str, name: str) -> None:
    assert tool_name(command) == name


def test_sh_output_round_trips_through_a_real_shell() -> None:
    text = render({"ANTHROPIC_API_KEY": AWKWARD, "ANTHROPIC_AUTH_TOKEN": None}, "sh")
    out = subprocess.run(["sh", "-c", text + 'printf %s "$ANTHROPIC_API_KEY|${ANTHROPIC_AUTH_TOKEN-unset}"'],
                         env={"ANTHROPIC_AUTH_TOKEN": "stray", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == AWKWARD + "|unset"


def test_fish_syntax() -> None:
    text = render({"A": "it's \\ x", "B": None}, "fish")
    assert text == "set -gx A 'it\\'s \\\\ x'\nset -e B\n"


def test_powershell_syntax() -> None:
    text = render({"A": "it's $env:X", "B": None}, "powershell")
    assert text == "$env:A = 'it''s $env:X'\nRemove-Item Env:B -ErrorAction SilentlyContinue\n"


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="sh, fish, powershell"):
        render({"A": "x"}, "csh")
