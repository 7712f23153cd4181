"""`dario-ctl run -- CMD [ARGS...]`: run a tool with its environment pointed at dario.

On POSIX the tool replaces this process (exec), so its signals, terminal and exit status are
its own; on Windows, where exec would detach the console, it runs as a child and its exit code
is passed through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from dario.ctl.toolenv import apply, tool_env, tool_name
from dario.ctl.toolkeys import KeyringStore, KeyStore, key_for_tool
from dario.daemon.commands import command

if TYPE_CHECKING:
    from dario.ctl.client import ControlClient
    from dario.daemon.control.api import Status

# What POSIX shells return for a command that cannot be found / cannot be executed.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
START_TIMEOUT_S = 20.0


class StartFailed(Exception):
    """`--start` could not bring a daemon up."""


def strip_separator(command: Sequence[str]) -> list[str]:
    """argparse keeps the `--` in front of a REMAINDER; the tool's own `--` later on stays."""
    return list(command[1:] if command and command[0] == "--" else command)


def start_daemon(client: ControlClient, timeout: float = START_TIMEOUT_S) -> Status:
    """Start dariod in its own session (it outlives the tool) and wait until it answers."""
    from dario.ctl.autostart import daemon_command
    from dario.ctl.client import DaemonNotRunning

    argv = [*daemon_command(), "--socket", str(client.socket_path)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.status()
        except (DaemonNotRunning, OSError):
            pass
        code = proc.poll()
        if code is not None:
            raise StartFailed(f"dariod exited with status {code} while starting; run `dariod` to see why")
        if time.monotonic() > deadline:
            raise StartFailed(f"dariod did not answer on {client.socket_path} within {timeout:g} s")
        time.sleep(0.1)  # polling a socket that does not exist yet: there is nothing to wait on


def daemon_status(client: ControlClient, start: bool) -> Status:
    from dario.ctl.client import DaemonNotRunning

    try:
        return client.status()
    except DaemonNotRunning as exc:
        if not start:
            exc.args = (f"{exc}; or let run start it: {command('dario-ctl')} run --start -- CMD",)
            raise
    return start_daemon(client)


def environment_for(client: ControlClient, status: Status, name: str, tool: str | None,
                    store: KeyStore | None = None) -> dict[str, str | None]:
    """The variables for a tool; a client key named `name` only if the daemon wants one."""
    key = key_for_tool(client, name, store or KeyringStore()) if status["auth_required"] else None
    return tool_env(status["listen"], key, tool)


def launch(command: list[str], env: dict[str, str]) -> int:
    """Run the tool; returns only on Windows, or when the command cannot be started."""
    try:
        if sys.platform == "win32":
            return _wait_for(command, env)
        _exec(command, env)
    except FileNotFoundError:
        print(f"dario-ctl run: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"dario-ctl run: {command[0]}: permission denied", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE


def _exec(command: list[str], env: dict[str, str]) -> NoReturn:
    # exec discards Python's buffers: write out what is pending first.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)


def _wait_for(command: list[str], env: dict[str, str]) -> int:
    import shutil
    import signal

    exe = shutil.which(command[0], path=env.get("PATH")) or command[0]
    # Ctrl+C reaches the whole console; the tool decides what it means, we wait for its code.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run([exe, *command[1:]], env=env).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def run(client: ControlClient, command: list[str], name: str | None, start: bool) -> int:
    status = daemon_status(client, start)
    tool = tool_name(command[0])
    env = environment_for(client, status, name or tool, tool)
    return launch(command, apply(os.environ, env))
