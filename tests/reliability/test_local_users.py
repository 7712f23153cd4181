"""Abuse by another local user, counted for the summary: planted control sockets, and the public port.

Needs root to act as a second user (the throwaway `dario-test-other`); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_local_users import (  # noqa: F401 (the fixtures "home" and "other_user")
    GATED_PATHS,
    SECRET,
    Recorder,
    as_user,
    call_as,
    ctl_env,
    home_fixture,
    other_user_fixture,
    run_ctl,
)
from tests.reliability import harness
from tests.support import Dariod

pytestmark = pytest.mark.timeout(300)

COMMANDS: list[tuple[list[str], str | None]] = [
    (["login", "work"], SECRET + "\n"),
    (["login", "work", "--kind", "anthropic-compatible", "--base-url", "http://127.0.0.1:9"], SECRET + "\n"),
    (["keys", "create", "laptop"], None),
    (["accounts", "list", "--json"], None),
    (["status", "--json"], None),
]


def _planted_tmp_folder(home: Path, user: tuple[int, int]) -> tuple[Recorder, dict[str, str], list[str]]:
    tmp = home / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    folder = tmp / f"dario-{os.getuid()}"
    subprocess.run(as_user(user, "mkdir", "-m", "0777", str(folder)), check=True)
    env = ctl_env(home, TMPDIR=str(tmp))
    env.pop("XDG_RUNTIME_DIR")
    return Recorder(user, folder / "ctl.sock"), env, []


def _planted_shared_socket(home: Path, user: tuple[int, int]) -> tuple[Recorder, dict[str, str], list[str]]:
    shared = home / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = shared / "ctl.sock"
    return Recorder(user, planted), ctl_env(home), ["--socket", str(planted)]


def test_planted_control_sockets_receive_nothing(home: Path, other_user: tuple[int, int]) -> None:
    rows = []
    total_refused = total_commands = total_bytes = 0
    for name, plant in (("folder planted in a shared $TMPDIR", _planted_tmp_folder),
                        ("socket of another uid (--socket)", _planted_shared_socket)):
        recorder, env, prefix = plant(home, other_user)
        refused = 0
        for args, stdin in COMMANDS:
            result = run_ctl(env, *prefix, *args, input=stdin)
            assert SECRET not in result.stdout + result.stderr
            refused += result.returncode == 1
        _conns, received = recorder.finish()
        total_refused += refused
        total_commands += len(COMMANDS)
        total_bytes += received
        rows.append(f"  {name}: {refused}/{len(COMMANDS)} dario-ctl commands refused; "
                    f"bytes sent to the planted peer: {received}")
    harness.report("planted socket (another local user):\n" + "\n".join(rows)
                   + f"\n  in all: {total_refused}/{total_commands} refused, secret bytes sent to planted peers: "
                   f"{total_bytes}\n")
    assert total_bytes == 0 and total_refused == total_commands


def test_other_user_gets_403_from_every_gated_endpoint(dariod_factory: Callable[..., Dariod], upstream: Any,
                                                       other_user: tuple[int, int]) -> None:
    d = dariod_factory()
    d.login("work", "sk-ant-reliability-local-users", upstream.url)
    upstream.clear()
    rounds = 10
    refused = attempted = health_ok = 0
    for _ in range(rounds):
        answers = call_as(other_user, d.port)
        attempted += len(GATED_PATHS)
        refused += sum(answers[p][0] == 403 and "permission_error" in answers[p][1] for p in GATED_PATHS)
        health_ok += answers["/health"][0] == 200
    upstream_seen = len(upstream.requests())
    harness.report(
        "other local user on the public port (no DARIO_API_KEY, Linux):\n"
        f"  403 permission_error / requests attempted: {refused}/{attempted}; /health answered "
        f"{health_ok}/{rounds}; requests that reached the upstream: {upstream_seen}\n"
    )
    assert refused == attempted and health_ok == rounds and upstream_seen == 0
