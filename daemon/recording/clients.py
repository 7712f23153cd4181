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


class FamilyCache:
    """User-Agent → family, remembered for the few agents a machine's tools send.

    The key is the client's own string, up to the 64 KB a request head may carry: a cap on
    entries alone let 1,024 long agents hold 64 MB for good. Only the first MAX_KEY bytes
    are looked at and kept (a real agent names its tool within its first few dozen), so the
    cache is bounded by bytes too, and a long agent costs no more to classify than a short one.
    """

    MAX_ENTRIES = 1024
    MAX_KEY = 512

    def __init__(self) -> None:
        self._names: dict[bytes | None, str] = {}
        self.key_bytes = 0

    def __len__(self) -> int:
        return len(self._names)

    def family(self, user_agent: bytes | None) -> str:
        key = user_agent[: self.MAX_KEY] if user_agent is not None else None
        name = self._names.get(key)
        if name is None:
            name = client_family(key.decode("latin-1") if key else None)
            if len(self._names) < self.MAX_ENTRIES:
                self._names[key] = name
                self.key_bytes += len(key or b"")
        return name
