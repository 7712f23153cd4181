"""dario speaks to the upstream as itself: `user-agent: dario/<version>`, the account's own key, and
none of the client's identifying headers (SDK user agent, `x-stainless-*` telemetry,
`anthropic-dangerous-direct-browser-access`, `x-app`, cookies, the client's own key, proxy hints).

The clients are the official anthropic and openai SDKs (which add their own telemetry headers), plus
extra headers a browser, Claude Code or a proxy would add; the fake upstream's log shows exactly
what reached it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from dario.daemon import __version__
from tests.reliability import load
from tests.reliability.harness import attempts, start_pool
from tests.support import Dariod

MODEL = load.MODEL
CLIENT_KEY = "sk-ant-client-own-key-" + uuid.uuid4().hex
IDENTIFYING = {
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "cookie": "session=abc123; _ga=GA1.2.3",
    "x-stainless-custom": "yes",
    "x-claude-code-session-id": "0f0f0f0f",
    "x-forwarded-for": "10.1.2.3",
    "forwarded": "for=10.1.2.3",
    "x-real-ip": "10.1.2.3",
    "referer": "http://127.0.0.1/",
    "openai-organization": "org-client",
    "openai-project": "proj-client",
    "idempotency-key": "client-idem-1",
    "x-request-id": "client-request-id",
    "anthropic-beta": "prompt-caching-2024-07-31",  # the one client header dario does pass on
}
# Everything an upstream request from dario may carry.
ALLOWED = {"host", "x-api-key", "anthropic-version", "anthropic-beta", "content-type", "content-length",
           "user-agent", "accept"}


@pytest.fixture(scope="module")
def dariod(big_fake: load.BigLogFake) -> Iterator[Dariod]:
    big_fake.clear()
    d = start_pool(big_fake, "a")
    yield d
    d.cleanup()


def _check(entry: dict[str, Any], *, beta: bool) -> None:
    h = entry["headers"]
    assert h.get("user-agent") == f"dario/{__version__}", h.get("user-agent")
    assert h.get("x-api-key") == load.KEYS["a"]
    assert "authorization" not in h
    assert CLIENT_KEY not in repr(h)
    leaked = sorted(set(h) - ALLOWED)
    assert not leaked, f"client headers reached the upstream: { {k: h[k] for k in leaked} }"
    assert not any(k.startswith("x-stainless") for k in h)
    if beta:
        assert h.get("anthropic-beta") == IDENTIFYING["anthropic-beta"]


def test_anthropic_sdk_requests_reach_the_upstream_as_dario(dariod: Dariod, big_fake: load.BigLogFake) -> None:
    client = anthropic.Anthropic(base_url=dariod.url, api_key=CLIENT_KEY, max_retries=0,
                                 default_headers=IDENTIFYING)
    marker = uuid.uuid4().hex
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": marker + " a"}])
    with client.messages.stream(model=MODEL, max_tokens=32,
                                messages=[{"role": "user", "content": marker + " b"}]) as s:
        assert s.get_final_text()
    client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": marker + " c"}])
    # Claude Code's own way in: an auth token instead of a key, and ?beta=true.
    cc = anthropic.Anthropic(base_url=dariod.url, auth_token=CLIENT_KEY, max_retries=0,
                             default_headers={**IDENTIFYING, "user-agent": "claude-cli/2.0.0 (external, cli)"})
    cc.beta.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": marker + " d"}])
    seen = attempts(big_fake, marker)
    assert len(seen) == 4
    for entry in seen:
        _check(entry, beta=True)


def test_openai_sdk_requests_reach_the_upstream_as_dario(dariod: Dariod, big_fake: load.BigLogFake) -> None:
    client = openai.OpenAI(base_url=dariod.url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                           default_headers=IDENTIFYING, organization="org-sdk", project="proj-sdk")
    marker = uuid.uuid4().hex
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": marker + " a"}])
    stream = client.chat.completions.create(model=MODEL, stream=True,
                                            messages=[{"role": "user", "content": marker + " b"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    seen = attempts(big_fake, marker)
    assert len(seen) == 2
    for entry in seen:
        _check(entry, beta=True)


def test_dario_own_upstream_calls_carry_only_its_identity(dariod: Dariod, big_fake: load.BigLogFake) -> None:
    """The model list dario fetches for /v1/models, and the key check at login, are dario's own calls."""
    client = anthropic.Anthropic(base_url=dariod.url, api_key=CLIENT_KEY, max_retries=0,
                                 default_headers=IDENTIFYING)
    assert list(client.models.list())
    models_calls = [r for r in big_fake.requests() if r["path"] == "/v1/models"]
    assert models_calls  # the login's key check at least
    for entry in models_calls:
        _check(entry, beta=False)
        assert "anthropic-beta" not in entry["headers"]
