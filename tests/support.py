"""Test helpers: run a real `dariod` subprocess with its own temporary folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
REAL_KEYRING = os.environ.get("DARIO_TEST_KEYRING") == "secretservice"


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARIO_", "XDG_", "HTTP", "HTTPS", "ALL_PROXY"))}
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        NO_PROXY="*",
    )
    if not REAL_KEYRING:
        env["PYTHON_KEYRING_BACKEND"] = "tests.keyring_backend.FileKeyring"
        env["DARIO_TEST_KEYRING_FILE"] = str(home / "keyring.json")
    return env


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll a condition until it holds (there is no event to wait on across processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Dariod:
    """One dariod process on an ephemeral port, with private XDG folders and socket."""

    def __init__(self, home: Path | None = None, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        # Short paths: a Unix socket path must fit in 108 bytes.
        self.home = home or Path(tempfile.mkdtemp(prefix="dario-"))
        self.runtime = self.home / "run"
        self.socket = self.runtime / "dario" / "ctl.sock"
        self.args = args or []
        self.env = base_env(self.home)
        self.env["XDG_RUNTIME_DIR"] = str(self.runtime)
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self.stderr_path = self.home / "dariod.stderr"
        self.stdout_lines: list[str] = []

    def start(self, timeout: float = 20.0) -> Dariod:
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dario.daemon.main", "--port", "0", "--socket", str(self.socket), *self.args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
        )
        stderr.close()
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.stdout_lines.append(line)
                if " listening on " in line and not ready.is_set():
                    self.url = line.split(" listening on ", 1)[1].split()[0]
                    self.port = int(self.url.rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dariod did not start:\n{self.stderr()}")
        return self

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ctl(self, *args: str, input: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dario.ctl.cli", "--socket", str(self.socket), *args],
            cwd=ROOT, env=self.env, input=input, capture_output=True, text=True, timeout=timeout,
        )

    def ctl_json(self, *args: str) -> Any:
        result = self.ctl(*args, "--json")
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout)

    def login(self, alias: str, key: str, base_url: str, kind: str = "anthropic-compatible") -> None:
        result = self.ctl("login", alias, "--kind", kind, "--base-url", base_url, input=key + "\n")
        assert result.returncode == 0, f"login failed: {result.stdout}\n{result.stderr}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Dariod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
