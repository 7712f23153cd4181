"""Automatic prompt-cache breakpoints for OpenAI-dialect clients, with the official openai SDK.

The fake upstream keeps a real prompt cache per key, so a second turn reads the first turn's prefix
only if dario marked it: that is the whole point of the option.
"""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from tests.support import Dariod

KEY = "sk-openai-auto-cache"
SYSTEM = "You are a careful assistant for a large code base. " * 100
KEY_RE = re.compile(r"dario-[A-Za-z0-9_-]{43}")


def two_turns(client: openai.OpenAI) -> tuple[Any, Any]:
    """A conversation of two turns: the second resends the first with the answer and a new question."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is in main.py?"}]
    first = client.chat.completions.create(model="sonnet", messages=messages)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And in utils.py?"},
    ]
    stream = client.chat.completions.create(
        model="sonnet", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    second = [c for c in stream if c.usage is not None][-1]
    return first.usage, second.usage


def cached(usage: Any) -> int:
    details = usage.prompt_tokens_details
    return int(details.cached_tokens or 0) if details is not None else 0


@pytest.fixture
def cache_upstream(upstream: Any) -> Any:
    upstream.set_prompt_cache(True, clear=True)
    return upstream


def breakpoints_sent(upstream: Any) -> list[int]:
    out = []
    for r in upstream.requests():
        if r["path"] != "/v1/messages":
            continue
        body = r["body"]
        blocks = [*body.get("tools", []), *body.get("system", [])]
        blocks += [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
        out.append(sum(1 for b in blocks if "cache_control" in b))
    return out


def test_without_the_option_nothing_is_cached(dariod: Dariod, cache_upstream: Any) -> None:
    dariod.login("work", KEY, cache_upstream.url)
    with openai.OpenAI(base_url=dariod.url + "/v1", api_key="anything", max_retries=0) as client:
        first, second = two_turns(client)
    assert (cached(first), cached(second)) == (0, 0)
    assert breakpoints_sent(cache_upstream) == [0, 0]


def test_dario_auto_cache_reads_the_first_turn_on_the_second(dariod_factory: Any, cache_upstream: Any) -> None:
    dariod = dariod_factory(env={"DARIO_AUTO_CACHE": "1"})
    dariod.login("work", KEY, cache_upstream.url)
    with openai.OpenAI(base_url=dariod.url + "/v1", api_key="anything", max_retries=0) as client:
        first, second = two_turns(client)
    assert cached(first) == 0
    # The second turn reads the whole first request (system prompt and first question) from the cache.
    assert cached(second) > len(SYSTEM) // 4 * 0.9, (first, second)
    assert second.prompt_tokens > cached(second)  # prompt_tokens includes cached input, as OpenAI's does
    assert breakpoints_sent(cache_upstream) == [2, 2]  # system prompt and latest message; no tools here


def test_a_client_key_created_with_auto_cache_turns_it_on_for_that_key_only(
    dariod: Dariod, cache_upstream: Any
) -> None:
    dariod.login("work", KEY, cache_upstream.url)
    out = dariod.ctl("keys", "create", "agent", "--auto-cache")
    assert out.returncode == 0, out.stderr
    (agent_key,) = KEY_RE.findall(out.stdout)
    listed = {k["name"]: k for k in dariod.ctl_json("keys", "list")["keys"]}
    assert listed["agent"]["auto_cache"] is True
    plain = dariod.ctl_json("keys", "create", "plain")
    assert plain["auto_cache"] is False
    with openai.OpenAI(base_url=dariod.url + "/v1", api_key=agent_key, max_retries=0) as client:
        first, second = two_turns(client)
    assert cached(first) == 0 and cached(second) > 0
    cache_upstream.set_prompt_cache(True, clear=True)
    with openai.OpenAI(base_url=dariod.url + "/v1", api_key=plain["key"], max_retries=0) as client:
        first, second = two_turns(client)
    assert (cached(first), cached(second)) == (0, 0)
    assert breakpoints_sent(cache_upstream)[-2:] == [0, 0]
