"""Serving a fake upstream's ASGI app until SIGTERM/SIGINT: shared by the test fakes.

A fake prints one line, ``READY http://HOST:PORT``, once bound; the handles in the fakes' own
modules wait for that line. Nothing here imports dario: the fakes stay independent of the code
they test.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import threading
import urllib.request
from functools import partial
from pathlib import Path
from typing import IO, Any, NoReturn, Self

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

REPO_ROOT = Path(__file__).resolve().parent.parent


async def answer_lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol, for a fake with nothing to start or stop
    (https://asgi.readthedocs.io/en/latest/specs/lifespan.html)."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


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


class FakeProcess:
    """A fake server in a subprocess (`python -m <module> ...`), started and stopped from a test.

    Subclasses name the server and give its command line; this waits for its READY line, keeps
    its stderr for failure messages, and stops it.
    """

    name = "fake server"

    def __init__(self) -> None:
        self.url = ""
        self.returncode: int | None = None  # the server's exit status once stopped
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        # Loopback only: never let a proxy from the environment see the admin calls.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Self:
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            self.command(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        # A reader thread keeps the wait portable (select() on pipes is POSIX-only).
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout).decode().strip()
        except queue.Empty:
            self._fail(f"no READY line within {timeout:g}s")
        if not line.startswith("READY http://"):
            self._fail(f"unexpected first line {line!r}")
        self.url = line.split(" ", 1)[1]
        return self

    def _fail(self, why: str) -> NoReturn:
        err = self.stderr()
        self.stop()
        self._close_stderr()
        raise RuntimeError(f"{self.name} failed to start: {why}\n--- stderr ---\n{err}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.returncode = proc.returncode
        if proc.stdout is not None:
            proc.stdout.close()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._close_stderr()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        """What the server wrote to stderr so far (tracebacks from the ASGI app end up here)."""
        if self._stderr is None:
            return ""
        fd = self._stderr.fileno()
        # pread leaves the offset alone: the child writes through the same open file.
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
