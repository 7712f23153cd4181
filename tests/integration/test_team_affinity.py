"""Prompt-cache affinity across team-mode instances: two real dariod sharing one Redis, turns alternating.

Behind a load balancer a conversation's turns land on different instances. The fake upstream runs
in its prompt-cache mode (one cache per key), so a follow-up reads its own history only when it
goes to the account that served the turn before, which the instance serving it learned from
Redis's `dario:aff` messages. Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.integration.test_cache_affinity import (
    CONVERSATIONS,
    KEYS,
    TURNS,
    Conversation,
    cached_upstream,
    share,
    turn,
)
from tests.redisserver import REDIS_SERVER, RedisServer
from tests.support import Dariod, wait_until

pytestmark = [pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
              pytest.mark.timeout(240)]
pytest.importorskip("redis")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def conversation_counts(d: Dariod) -> dict[str, int]:
    return {a["alias"]: a.get("conversations", 0) for a in d.ctl_json("status")["accounts"]}


def alternate(instances: list[Dariod], synced: bool) -> list[Conversation]:
    """Turn n of every conversation goes to instance n % 2; `synced`: wait until both know the answer's prefixes."""
    # Project notes of its own in each system prompt: no prefix shared between conversations, so they spread.
    convs = [Conversation(f"team-{i}-{uuid.uuid4().hex[:8]}", own_system=True) for i in range(CONVERSATIONS)]
    clients = [anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0) for d in instances]
    try:
        for n in range(TURNS):
            for conv in convs:
                turn(clients[n % 2], conv, n)
                if synced:
                    wait_until(lambda: (c := [conversation_counts(d) for d in instances])[0] == c[1] or None,
                               10, "both instances' affinity maps agree")
    finally:
        for client in clients:
            client.close()
    return convs


def test_follow_ups_on_another_instance_go_to_the_account_holding_the_cache(
    dariod_factory: Any, upstream: Any, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cached_upstream(upstream)
    instances = [dariod_factory(args=["--store", redis_server.url, "--no-analytics"]) for _ in range(2)]
    for d in instances:
        for alias, key in KEYS.items():
            d.login(alias, key, upstream.url)

    unsynced = alternate(instances, synced=False)  # as a client behind a balancer would: no waiting
    synced = alternate(instances, synced=True)
    moved = sum(len(set(c.accounts)) > 1 for c in unsynced)
    with capsys.disabled():
        print(
            f"\nteam cache-affinity: 2 instances, {CONVERSATIONS} conversations x {TURNS} turns alternating; "
            f"follow-ups reading their own history: {share(unsynced):.0%} sent back to back "
            f"({moved} conversations changed account), {share(synced):.0%} once both instances knew the prefixes; "
            f"accounts per conversation: {[''.join(c.accounts) for c in unsynced]}"
        )
    for c in synced:  # each conversation stays where its cache is, whichever instance serves the turn
        assert len(set(c.accounts)) == 1, c.accounts
    assert share(synced) == 1.0
