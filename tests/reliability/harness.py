"""Small helpers the reliability tests share: a dariod on a pool of fake accounts, raw HTTP,
/proc readings, polling with a deadline, and the summary tables printed at the end of a run."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tests.reliability import load
from tests.support import Dariod

TABLES: list[str] = []  # printed by conftest.pytest_terminal_summary
T = TypeVar("T")
MODEL = load.MODEL


def report(table: str) -> None:
    """Print this table in pytest's terminal summary at the end of the run."""
    TABLES.append(table)


def start_pool(fake: Any, *aliases: str, args: list[str] | None = None, env: dict[str, str] | None = None,
               home: Path | None = None) -> Dariod:
    """A dariod (upstream read timeout 2 s) with the given accounts from load.KEYS on `fake`."""
    full_env = {"DARIO_UPSTREAM_TIMEOUT": str(load.UPSTREAM_TIMEOUT)}
    full_env.update(env or {})
    d = Dariod(home, args=args, env=full_env).start()
    try:
        for alias in aliases:
            d.login(alias, load.KEYS[alias], fake.url)
    except BaseException:
        d.cleanup()
        raise
    return d


def account(d: Dariod, alias: str) -> dict[str, Any]:
    accounts = d.ctl_json("accounts", "list")["accounts"]
    return next(a for a in accounts if a["alias"] == alias)


def post(url: str, path: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"}
    h.update(headers or {})
    req = urllib.request.Request(url + path, data=data, method="POST", headers=h)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def ask(text: str, *, stream: bool = False, max_tokens: int = 256) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


def chat(text: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


def attempts(fake: Any, marker: str) -> list[dict[str, Any]]:
    """The fake's log entries for /v1/messages* requests whose body carries `marker`."""
    out = []
    for r in fake.requests():
        if r["path"].startswith("/v1/messages") and marker in orjson.dumps(r.get("body")).decode():
            out.append(r)
    return sorted(out, key=lambda r: r["n"])


def wait_for(check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T | None:
    """Poll `check` until it returns something truthy or `timeout` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value


def rss_kb(pid: int) -> int:
    return load.proc_status_kb(pid, "VmRSS")


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0,
                rcvbuf: int | None = None) -> socket.socket:
    """Open a plain TCP connection to dariod and send one request; the caller reads the answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.sendall(head + body)
    return s


def request_head(method: str, path: str, port: int, headers: dict[str, str] | None = None,
                 body_len: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body_len is not None:
        lines.append(f"content-length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
