"""Name the tool behind a request from its User-Agent, for per-client usage.

Families, not versions: analytics groups by this string, so it must stay low-cardinality
and safe to print (only [a-z0-9._-], at most 32 characters).
"""

from __future__ import annotations

import re

UNKNOWN = "unknown"
_MAX_LEN = 32

# Checked in order against the lower-cased User-Agent; first match wins. Tools come before
# the SDKs they wrap ("aider/0.60 (OpenAI/Python 1.54)" is aider), SDKs before HTTP libraries.
_FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bclaude-cli\b"), "claude-cli"),
    (re.compile(r"\baider\b"), "aider"),
    (re.compile(r"\blitellm\b"), "litellm"),
    (re.compile(r"\b(?:async)?anthropic/python\b"), "anthropic-python"),
    (re.compile(r"\b(?:async)?anthropic/js\b"), "anthropic-js"),
    (re.compile(r"\b(?:async)?openai/python\b"), "openai-python"),
    (re.compile(r"\b(?:async)?openai/js\b"), "openai-js"),
    (re.compile(r"^curl/"), "curl"),
    (re.compile(r"^python-httpx/"), "httpx"),
)

_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def client_family(user_agent: str | None) -> str:
    if not user_agent:
        return UNKNOWN
    ua = user_agent.strip().lower()
    for pattern, family in _FAMILIES:
        if pattern.search(ua):
            return family
    # Unknown tool: its first product token ("Foo/1.2 (bar)" -> "foo"), scrubbed.
    token = re.split(r"[/\s(;]", ua, maxsplit=1)[0]
    token = _UNSAFE.sub("", token)[:_MAX_LEN]
    return token or UNKNOWN
