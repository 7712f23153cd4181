"""The persister: the pool's state (cooldowns, windows) and the client keys, written after changes.

One background task writes, at most twice a second, off the event loop; a last write at
shutdown. Restoring the pool's state at start-up is here too, so the file has one owner.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from dario.daemon import atomicfile
from dario.daemon.accounts.clientkeys import ClientKeyStore
from dario.daemon.routing.pool import Pool

log = logging.getLogger("dario.persist")


class Persister:
    def __init__(self, pool: Pool, client_keys: ClientKeyStore, pool_state_file: Path) -> None:
        self.pool = pool
        self.client_keys = client_keys
        self.pool_state_file = pool_state_file
        self._dirty = trio.Event()
        pool.on_change = self.mark_dirty

    def mark_dirty(self) -> None:
        self._dirty.set()

    def load_pool_state(self) -> None:
        """Cooldowns and windows from the last run; an unreadable file is ignored (and said so)."""
        try:
            self.pool.import_state(atomicfile.read_json(self.pool_state_file, {}))
        except ValueError:
            log.warning("ignoring unreadable %s", self.pool_state_file)

    async def persist_forever(self) -> None:
        """Write pool state (cooldowns, windows) after changes, at most twice a second."""
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await trio.to_thread.run_sync(self.save_pool_state)
                if self.client_keys.dirty:
                    await trio.to_thread.run_sync(self.client_keys.flush)
                await trio.sleep(0.5)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.save_pool_state)
                await trio.to_thread.run_sync(self.client_keys.flush)

    def save_pool_state(self) -> None:
        try:
            atomicfile.write_json_atomic(self.pool_state_file, self.pool.export_state())
        except OSError as exc:
            log.warning("could not save pool state to %s: %s", self.pool_state_file, exc)
