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
