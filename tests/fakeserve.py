"""Serving a fake upstream's ASGI app until SIGTERM/SIGINT: shared by the test fakes.

A fake prints one line, ``READY http://HOST:PORT``, once bound; the handles in the fakes' own
modules wait for that line. Nothing here imports dario: the fakes stay independent of the code
they test.
"""

from __future__ import annotations

import signal
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


async def serve_until_signal(app: Any, config: Config) -> None:
    """Serve `app` with `config`, print the READY line, and stop on SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def shutdown_trigger() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            run = partial(serve, app, config, shutdown_trigger=shutdown_trigger, mode="asgi")
            binds = await nursery.start(run)
            print(f"READY {binds[0]}", flush=True)
