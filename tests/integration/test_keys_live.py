"""Client keys against a real `dariod`: shown once, stored hashed, used for attribution and auth.

`dario-ctl keys create NAME` prints a key once; requests carrying it (as `x-api-key` or as
`Authorization: Bearer`) are counted under NAME in usage; with DARIO_API_KEY set on the daemon
the client key is accepted in its place, and a revoked key is refused with 401 at once.
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support import Dariod

pytestmark = pytest.mark.timeout(90)

MODEL = "claude-haiku-4-5-20251001"
ACCOUNT_KEY = "sk-ant-keys-live-account"
MASTER = "dario-master-key-for-keys-live-test"
KEY_RE = re.compile(r"dario-[A-Za-z0-9_-]{43}")  # "dario-" + secrets.token_urlsafe(32)
HELLO = [{"role": "user", "content": "Hello"}]


def keys_file(d: Dariod) -> Path:
    return d.home / "config" / "dario" / "client-keys.json"


def create_key(d: Dariod, name: str) -> str:
    out = d.ctl("keys", "create", name)
    assert out.returncode == 0, out.stderr
    found = KEY_RE.findall(out.stdout)
    assert len(found) == 1, out.stdout  # printed exactly once
    assert "not shown again" in out.stdout
    return found[0]


def by_client(d: Dariod) -> dict[str, int]:
    usage = d.ctl_json("usage", "--window", "1h")
    assert usage["problem"] is None
    return {g["key"]: g["requests"] for g in usage["by_client"]}


def ask_anthropic(d: Dariod, key: str | None) -> anthropic.types.Message:
    """One Messages request; `key` goes out as x-api-key (the SDK's way), None sends no key at all."""
    headers = {"x-api-key": anthropic.Omit()} if key is None else None
    with anthropic.Anthropic(base_url=d.url, api_key=key or "unused", max_retries=0, timeout=30,
                             default_headers=headers) as a:
        return a.messages.create(model=MODEL, max_tokens=32, messages=HELLO)


def ask_openai(d: Dariod, key: str) -> Any:
    """One Chat Completions request; the OpenAI SDK sends `key` as Authorization: Bearer."""
    with openai.OpenAI(base_url=d.url + "/v1", api_key=key, max_retries=0, timeout=30) as o:
        return o.chat.completions.create(model=MODEL, messages=HELLO)


def raw(d: Dariod, method: str, path: str, headers: dict[str, str] | None = None,
        body: Any = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request(method, path, body=None if body is None else orjson.dumps(body), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def assert_key_nowhere(d: Dariod, *keys: str) -> None:
    """Neither `keys list` form nor the keys file holds a key itself."""
    human = d.ctl("keys", "list")
    listed = d.ctl("keys", "list", "--json")
    assert human.returncode == 0 and listed.returncode == 0, human.stderr + listed.stderr
    text = keys_file(d).read_text()
    for key in keys:
        for where, content in (("keys list", human.stdout), ("keys list --json", listed.stdout),
                               ("client-keys.json", text)):
            assert key not in content, where
            assert key[10:30] not in content, where  # not even a part beyond the shown prefix
    assert stat.S_IMODE(os.stat(keys_file(d)).st_mode) == 0o600


def test_client_keys_attribute_usage_and_authenticate(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory()
    d.login("work", ACCOUNT_KEY, upstream.url)

    # -- shown once, stored as a hash only --------------------------------------------
    ci = create_key(d, "ci")
    listed = d.ctl_json("keys", "list")["keys"]
    assert [(k["name"], k["prefix"], k["last_used"]) for k in listed] == [("ci", ci[:10], None)]
    assert_key_nowhere(d, ci)
    again = d.ctl("keys", "create", "ci")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert not KEY_RE.search(again.stdout + again.stderr)

    # -- attribution without DARIO_API_KEY: the key names the caller --------------------
    assert ask_anthropic(d, ci).usage.output_tokens > 0  # x-api-key
    assert ask_openai(d, ci).usage.completion_tokens > 0  # Authorization: Bearer
    ask_anthropic(d, "anything")  # no client key: named after its User-Agent
    assert by_client(d) == {"ci": 2, "anthropic-python": 1}
    # dario never forwards a client's key: the upstream only ever saw the account's.
    seen = [r for r in upstream.requests() if r["path"].startswith("/v1/messages")]
    assert len(seen) == 3 and {r["key"] for r in seen} == {ACCOUNT_KEY}
    assert ci not in orjson.dumps(seen).decode()
    assert d.ctl_json("keys", "list")["keys"][0]["last_used"] is not None

    # -- with DARIO_API_KEY: the client key is a credential too ------------------------
    assert d.stop() == 0
    d = dariod_factory(home=d.home, env={"DARIO_API_KEY": MASTER})
    assert d.ctl_json("status")["auth_required"] is True

    with pytest.raises(anthropic.AuthenticationError):
        ask_anthropic(d, None)
    with pytest.raises(anthropic.AuthenticationError):
        ask_anthropic(d, "dario-" + "x" * 43)  # looks like a client key, is not one
    with pytest.raises(openai.AuthenticationError):
        ask_openai(d, "wrong")
    ask_anthropic(d, MASTER)
    ask_anthropic(d, ci)
    ask_openai(d, ci)
    status, body = raw(d, "GET", "/analytics?window=1h")
    assert status == 401 and orjson.loads(body)["error"]["type"] == "authentication_error"
    assert raw(d, "GET", "/analytics?window=1h", {"x-api-key": ci})[0] == 200
    assert raw(d, "GET", "/metrics", {"authorization": f"Bearer {ci}"})[0] == 200
    assert raw(d, "GET", "/health")[0] == 200  # open, by design
    assert raw(d, "GET", "/")[0] == 200  # the dashboard's shell; its data needs the key

    # A key created while the daemon runs works at once; a revoked one is refused at once.
    ci2 = create_key(d, "ci2")
    ask_anthropic(d, ci2)
    out = d.ctl("keys", "revoke", "ci")
    assert out.returncode == 0, out.stderr
    with pytest.raises(anthropic.AuthenticationError):
        ask_anthropic(d, ci)
    with pytest.raises(openai.AuthenticationError):
        ask_openai(d, ci)
    ask_anthropic(d, ci2)
    assert [k["name"] for k in d.ctl_json("keys", "list")["keys"]] == ["ci2"]
    assert_key_nowhere(d, ci, ci2)
    assert '"ci"' not in keys_file(d).read_text()

    # Refused requests never reached an account; accepted ones are each counted under their key.
    counts = by_client(d)
    assert counts == {"ci": 4, "ci2": 2, "anthropic-python": 2}, counts
    seen = [r for r in upstream.requests() if r["path"].startswith("/v1/messages")]
    assert len(seen) == 3 + 5
    blob = orjson.dumps(seen).decode()
    assert ci not in blob and ci2 not in blob and MASTER not in blob


def test_revoked_key_stays_revoked_across_a_restart(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(env={"DARIO_API_KEY": MASTER})
    d.login("work", ACCOUNT_KEY, upstream.url)
    keep, drop = create_key(d, "keep"), create_key(d, "drop")
    assert d.ctl("keys", "revoke", "drop").returncode == 0
    missing = d.ctl("keys", "revoke", "drop")
    assert missing.returncode == 1 and "drop" in missing.stderr
    assert d.stop() == 0
    d = dariod_factory(home=d.home, env={"DARIO_API_KEY": MASTER})
    ask_anthropic(d, keep)
    with pytest.raises(anthropic.AuthenticationError):
        ask_anthropic(d, drop)
    assert collections.Counter(by_client(d)) == {"keep": 1}
    assert_key_nowhere(d, keep, drop)
