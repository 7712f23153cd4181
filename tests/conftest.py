from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Dariod


@pytest.fixture(scope="session")
def fake() -> Iterator[Any]:
    """One fake Anthropic upstream for the session; tests clear it before use."""
    from tests.fakeupstream import FakeUpstream

    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def upstream(fake: Any) -> Any:
    fake.clear()
    return fake


@pytest.fixture
def dariod_factory() -> Iterator[Callable[..., Dariod]]:
    started: list[Dariod] = []

    def make(*, args: list[str] | None = None, env: dict[str, str] | None = None,
             home: Path | None = None, start: bool = True) -> Dariod:
        d = Dariod(home, args=args, env=env)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.cleanup()


@pytest.fixture
def dariod(dariod_factory: Callable[..., Dariod]) -> Dariod:
    return dariod_factory()
