"""The persister: pool state written after a change and at shutdown, read back at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
import trio

from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.persist import Persister
from dario.daemon.routing.pool import Pool


def make(tmp_path: Path) -> tuple[Pool, Persister, Path]:
    pool = Pool()
    state_file = tmp_path / "pool-state.json"
    return pool, Persister(pool, ClientKeyStore(tmp_path / "keys.json"), state_file), state_file


def test_a_pool_change_is_written_and_the_last_state_is_saved_at_shutdown(tmp_path: Path) -> None:
    pool, persister, state_file = make(tmp_path)
    pool.upsert("main", "anthropic", "https://api.anthropic.com", 0.0, "sk-ant-secret", True)

    async def main() -> None:
        written = trio.Event()
        token = trio.lowlevel.current_trio_token()
        save = persister.save_pool_state

        def save_and_say() -> None:  # runs in a worker thread
            save()
            token.run_sync_soon(written.set)

        persister.save_pool_state = save_and_say  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persister.persist_forever)
            pool.observe_transient(pool.accounts["main"], "connection reset")  # marks the pool dirty
            await written.wait()
            assert state_file.exists()
            pool.observe_auth_failure(pool.accounts["main"], 401, "invalid x-api-key")
            nursery.cancel_scope.cancel()  # shutdown: one last, shielded write

    trio.run(main)
    saved = orjson.loads(state_file.read_bytes())
    assert saved["accounts"]["main"]["needs_login"]
    assert b"sk-ant-secret" not in state_file.read_bytes()

    pool2, persister2, _ = make(tmp_path)
    pool2.upsert("main", "anthropic", "https://api.anthropic.com", 0.0, None, True)
    persister2.load_pool_state()
    assert pool2.accounts["main"].needs_login == pool.accounts["main"].needs_login


def test_an_unreadable_state_file_is_ignored_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, persister, state_file = make(tmp_path)
    state_file.write_text("{not json")
    with caplog.at_level(logging.WARNING, "dario.persist"):
        persister.load_pool_state()
    assert f"ignoring unreadable {state_file}" in caplog.text
