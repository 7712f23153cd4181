"""What every dialect adapter offers the edge, and what the edge tells it about a request.

The public app reads a request body, then hands it to the adapter for its path: the adapter
parses it into an `Incoming`, makes the `Sink` that writes answers back in its dialect, and
shapes the errors dario answers itself. The edge never needs to know which dialect it serves.
"""

from __future__ import annotations

from typing import Any, Protocol

from dario.daemon.asgi import Send
from dario.daemon.dialects.link import ClientLink
from dario.daemon.errors import DarioError
from dario.daemon.exchange import Dialect, Incoming, Sink
from dario.daemon.routing.models import ModelTable


class RequestInfo:
    """What the edge learnt about a request before its body was read."""

    __slots__ = ("auto_cache", "client", "owner", "request_id", "t_start")

    def __init__(self, t_start: float, request_id: str, client: str, owner: str = "",
                 auto_cache: bool = False) -> None:
        self.t_start = t_start
        self.request_id = request_id
        self.client = client
        self.owner = owner  # who this caller is, for state private to a client (thinking blocks)
        self.auto_cache = auto_cache  # OpenAI dialect: add prompt-cache breakpoints (settings or client key)


class LinkedSink(Sink, Protocol):
    """A sink that sends through a ClientLink, so a hang-up watcher can tell an early leave from the end."""

    link: ClientLink


class DialectAdapter(Protocol):
    """One API dialect: its request parsing, its sink and its error shape."""

    name: Dialect  # what Incoming.dialect and the usage records say
    endpoint: str  # "messages" | "count_tokens" | "chat"
    upstream_path: str  # where the translated request goes upstream

    def parse(self, body: bytes, parsed: dict[str, Any], headers: list[tuple[bytes, bytes]], query: bytes,
              info: RequestInfo, models: ModelTable, force_model: str | None) -> tuple[Incoming, Any]:
        """A request body already read and JSON-decoded → (what goes upstream, context for `sink`).

        Raises DarioError for a request the dialect refuses; the edge answers it with `sink(...).error`."""
        ...

    def sink(self, send: Send, info: RequestInfo, context: Any = None) -> LinkedSink:
        """Where the answer goes; without a context (before parsing) it can only send errors."""
        ...

    def error_response(self, err: DarioError, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """An error dario answers itself, in this dialect's shape: (status, headers, body)."""
        ...
