"""`/v1/models` serves both SDKs from one path, from the upstream's own list when it can."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.support import Dariod


def test_both_sdks_list_and_look_up_models(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-models", upstream.url)
    a = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
    o = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    anthropic_ids = [m.id for m in a.models.list(limit=1000)]
    openai_ids = [m.id for m in o.models.list()]
    assert anthropic_ids == openai_ids
    assert "claude-sonnet-5-5" in anthropic_ids  # from the upstream's own list
    assert "gpt-4o" in openai_ids  # dario's aliases follow it
    assert a.models.retrieve("claude-sonnet-5-5").id == "claude-sonnet-5-5"
    assert o.models.retrieve("gpt-4o").id == "gpt-4o"
    # The upstream's list is known, so an id it does not have is a 404 (Claude Code relies on it).
    with pytest.raises(anthropic.NotFoundError):
        a.models.retrieve("claude-no-such-model-1")
    with pytest.raises(openai.NotFoundError):
        o.models.retrieve("no-such-model")


def test_pagination_follows_the_anthropic_protocol(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-models", upstream.url)
    a = anthropic.Anthropic(base_url=dariod.url, api_key="x", max_retries=0)
    first = a.models.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    everything = [m.id for m in a.models.list(limit=3)]  # the SDK follows after_id itself
    assert everything == [m.id for m in a.models.list(limit=1000)]
    assert len(everything) == len(set(everything))


def test_dated_and_latest_openai_ids_work_like_their_base_names(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-models", upstream.url)
    o = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    base = o.models.retrieve("gpt-4o")
    for name in ("gpt-4o-2024-08-06", "chatgpt-4o-latest", "gpt-4o-mini-2024-07-18", "o1-mini", "gpt-5.1"):
        assert o.models.retrieve(name).id == name
        reply = o.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        assert reply.model == name
    sent = [r["body"]["model"] for r in upstream.requests() if r["path"] == "/v1/messages"]
    assert sent[0] == sent[1] == (base.model_extra or {})["alias_of"]  # both are gpt-4o
    assert all(s.startswith("claude-") for s in sent)


def test_an_unknown_model_on_the_openai_route_counts_as_an_error(dariod: Dariod, upstream: Any) -> None:
    import httpx

    dariod.login("work", "sk-models", upstream.url)
    o = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        o.chat.completions.create(model="gpt-no-such-model", messages=[{"role": "user", "content": "hi"}])
    usage = httpx.get(dariod.url + "/analytics?window=1h").json()
    assert usage["totals"]["requests"] == 1 and usage["totals"]["errors"] == 1
    (row,) = usage["by_model"]
    assert row["key"] == "gpt-no-such-model" and row["errors_by_type"] == {"not_found_error": 1}
    assert usage["recent"][0]["account"] is None and usage["recent"][0]["status"] == 404
    assert [a["key"] for a in usage["by_account"]] == ["(none)"]
    metrics = httpx.get(dariod.url + "/metrics")
    assert metrics.status_code == 200 and 'status="404"' in metrics.text
    assert "Traceback" not in dariod.stderr()


def test_an_alias_request_learns_the_upstream_list_first(dariod: Dariod, upstream: Any) -> None:
    dariod.login("work", "sk-models", upstream.url)
    upstream.clear()  # logging in may have checked the key upstream
    o = openai.OpenAI(base_url=dariod.url + "/v1", api_key="x", max_retries=0)
    o.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    paths = [r["path"] for r in upstream.requests()]
    assert paths.index("/v1/models") < paths.index("/v1/messages"), paths
    listed = {m.id for m in o.models.list()}
    sent = [r["body"]["model"] for r in upstream.requests() if r["path"] == "/v1/messages"]
    assert sent[0] in listed
