"""Model ids per account kind through a real dariod: unknown and native ids, models.json, per-kind
prices, and a pool of an Anthropic account and a Bedrock account (`test_cross_kind_pool`), where a
model only some kinds offer goes only to them. The pool-level rules are in
tests/unit/test_models_per_kind.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support import Dariod

BEDROCK_NATIVE = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"


def test_a_model_only_another_kind_offers_is_a_404_at_once(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-kinds", upstream.url)
    upstream.clear()
    a = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as info:
        a.messages.create(model=BEDROCK_NATIVE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = info.value.body["error"]["message"]  # type: ignore[index]
    assert BEDROCK_NATIVE in message and "checked: anthropic-compatible" in message
    assert [r for r in upstream.requests() if r["path"] == "/v1/messages"] == []  # never sent upstream
    # A Vertex id on the OpenAI route: 404 as well, in OpenAI's shape.
    o = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        o.chat.completions.create(model="claude-sonnet-4-5@20250929", messages=[{"role": "user", "content": "hi"}])
    # Anthropic ids still go through.
    reply = a.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert reply.content
    assert "Traceback" not in dariod.stderr()


def test_models_json_entries_and_per_kind_prices(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(start=False)
    config = d.home / "config" / "dario"
    config.mkdir(parents=True, exist_ok=True)
    (config / "models.json").write_text(json.dumps({
        "aliases": {"team-default": "claude-sonnet-4-5"},
        "models": {
            "claude-sonnet-9": {"vertex": "claude-sonnet-9@20270101"},
            "claude-broken": {"bedrock": {"id": "us.anthropic.claude-broken-v1:0"}},
        },
    }))
    # Accounts logged in by the test helper are of kind anthropic-compatible: their own prices.
    (config / "prices.json").write_text(json.dumps({
        "anthropic-compatible": {"claude-sonnet-4-5": {"input": 30, "output": 150}},
    }))
    d.start()
    d.login("work", "sk-kinds", upstream.url)
    a = anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0)
    reply = a.messages.create(model="team-default", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.input_tokens > 0
    warnings = [line for line in d.stderr().splitlines() if "claude-broken" in line]
    assert len(warnings) == 1 and "entry ignored" in warnings[0]  # warned once; the rest applies
    listed = {m.id for m in a.models.list(limit=1000)}
    assert "claude-sonnet-9" not in listed  # only a Vertex account would serve it
    usage = httpx.get(d.url + "/analytics?window=1h").json()
    (row,) = usage["recent"]
    expected = (reply.usage.input_tokens * 30 + reply.usage.output_tokens * 150) / 1_000_000
    assert row["cost_usd"] == pytest.approx(expected, abs=2e-6)


def test_cross_kind_pool(dariod: Dariod, upstream: Any) -> None:
    from tests.fakebedrock import FakeBedrock

    with FakeBedrock(api_keys=["br-key"]) as fake:
        dariod.login("anth", "sk-kinds", upstream.url, kind="anthropic")
        done = dariod.ctl("login", "br", "--kind", "bedrock", "--region", "eu-west-1", "--inference-profile", "eu",
                          "--bedrock-api-key", "--base-url", fake.url, input="br-key\n")
        assert done.returncode == 0, done.stderr
        fake.clear()  # forget login's credential check
        a = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
        # Opus 4.1 is offered on Bedrock through the us profile only: every request goes to Anthropic.
        for _ in range(6):
            a.messages.create(model="claude-opus-4-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert fake.requests() == []
        # A Bedrock id reaches Bedrock only, with the account's profile id as sent.
        a.messages.create(model=BEDROCK_NATIVE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        paths = [r["path"] for r in fake.requests()]
        assert paths == [f"/model/{BEDROCK_NATIVE}/invoke"]
        ids = [m.id for m in a.models.list(limit=1000)]
        assert len(ids) == len(set(ids)) and "claude-sonnet-4-5-20250929" in ids
