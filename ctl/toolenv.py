"""The environment that points a tool at dario, and how each shell spells it.

Pure: an address, a key and a shell in, text or a variable map out. `dario-ctl run` and
`dario-ctl env` use it, and the tray's "Copy settings for tools" prints the same text.

What the tools read:
- the Anthropic SDKs read ANTHROPIC_BASE_URL and append `/v1/messages` themselves, so the base
  carries no `/v1`; they send ANTHROPIC_API_KEY as `x-api-key`, ANTHROPIC_AUTH_TOKEN as
  `Authorization: Bearer` (both when both are set);
- the OpenAI SDKs read OPENAI_BASE_URL and append `/chat/completions`, so that base ends in `/v1`;
  the key goes out from OPENAI_API_KEY as `Authorization: Bearer`;
- Claude Code asks before it uses an ANTHROPIC_API_KEY found in the environment, but takes
  ANTHROPIC_AUTH_TOKEN without asking (https://docs.anthropic.com/en/docs/claude-code/settings),
  so it gets the token and not the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

SHELLS = ("sh", "fish", "powershell")
# SDKs refuse to start without a key even when the gateway needs none; any value does then.
PLACEHOLDER_KEY = "dario"
# Tools that want the key as a bearer token (ANTHROPIC_AUTH_TOKEN) rather than ANTHROPIC_API_KEY.
BEARER_TOOLS = frozenset({"claude"})
# A wildcard bind is not an address a client can connect to; the same host's loopback is.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}
_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# The variables `run` and `env` manage; a value of None means "unset it".
ToolEnv = dict[str, "str | None"]


def client_address(listen: str) -> str:
    """The daemon's listen URL as a client should use it (wildcard binds become loopback)."""
    try:
        parts = urlsplit(listen.rstrip("/"))
        port = parts.port
    except ValueError:  # not a URL we can take apart: show it as it is rather than fail
        return listen.rstrip("/")
    host = parts.hostname or "127.0.0.1"
    bracketed = f"[{host}]" if ":" in host else host
    host = _WILDCARDS.get(bracketed, bracketed)
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme or "http", netloc, "", "", ""))


def tool_name(command: str) -> str:
    """A client-key name for a command: its file name without a Windows extension (`claude`)."""
    base = re.split(r"[\\/]", command)[-1]
    stem = re.sub(r"\.(exe|cmd|bat|ps1)$", "", base, flags=re.IGNORECASE)
    name = _NAME_SAFE.sub("-", stem).strip("-.")[:64]
    return name or "tool"


def tool_env(listen: str, key: str | None, tool: str | None = None) -> ToolEnv:
    """The variables for one tool: base URLs for both SDK families and the key (or a placeholder)."""
    base = client_address(listen)
    secret = key or PLACEHOLDER_KEY
    env: ToolEnv = {
        "ANTHROPIC_BASE_URL": base,
        "ANTHROPIC_API_KEY": secret,
        # Unset, so a token left in the shell for another service is not sent alongside the key.
        "ANTHROPIC_AUTH_TOKEN": None,
        "OPENAI_BASE_URL": f"{base}/v1",
        "OPENAI_API_KEY": secret,
    }
    if tool in BEARER_TOOLS:
        env["ANTHROPIC_AUTH_TOKEN"], env["ANTHROPIC_API_KEY"] = secret, None
    return env


def apply(environ: Mapping[str, str], env: ToolEnv) -> dict[str, str]:
    """`environ` with `env` applied: values set, Nones removed, and the daemon's master key dropped."""
    out = {k: v for k, v in environ.items() if k != "DARIO_API_KEY"}
    for name, value in env.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _fish_quote(value: str) -> str:
    # fish single quotes: only \\ and \' are escapes inside them (fish-doc "Quotes").
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ps_quote(value: str) -> str:
    # PowerShell single-quoted strings are verbatim; a quote is written twice (about_Quoting_Rules).
    return "'" + value.replace("'", "''") + "'"


def render(env: ToolEnv, shell: str = "sh") -> str:
    """Lines that set (and unset) `env` in `shell`, for `eval`, `source` or `Invoke-Expression`."""
    lines: list[str] = []
    for name, value in env.items():
        if shell == "sh":
            lines.append(f"unset {name}" if value is None else f"export {name}={_sh_quote(value)}")
        elif shell == "fish":
            lines.append(f"set -e {name}" if value is None else f"set -gx {name} {_fish_quote(value)}")
        elif shell == "powershell":
            lines.append(
                f"Remove-Item Env:{name} -ErrorAction SilentlyContinue"
                if value is None
                else f"$env:{name} = {_ps_quote(value)}"
            )
        else:
            raise ValueError(f"unknown shell {shell!r}; one of {', '.join(SHELLS)}")
    return "\n".join(lines) + "\n"
