"""systemd socket activation: dariod serves on a listening socket it inherits as fd 3.

A small wrapper plays the service manager (sd_listen_fds(3)): it puts the socket at fd 3, sets
LISTEN_FDS=1 and LISTEN_PID to its own pid, then execs dariod (same pid). A client that connected
before dariod started waits in the socket's backlog and gets its answer once dariod is up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dario.daemon.edge import activation
from tests.support import ROOT, base_env, stop_process, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX fds")

WRAPPER = """\
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)  # dup2 clears close-on-exec on fd 3
os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="public")
os.execv(sys.executable, [sys.executable, "-m", "dario.daemon.main", *sys.argv[2:]])
"""


@pytest.fixture
def home() -> Iterator[Path]:
    # Short: the control socket's path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="dario-sa-"))
    (path / "run").mkdir(mode=0o700)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def start_activated(home: Path, listener: socket.socket, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = base_env(home)
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    fd = listener.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(fd), "--socket", str(home / "run" / "ctl.sock"), *args],
        cwd=ROOT, env=env, pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def http_get(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_dariod_serves_on_the_inherited_socket(home: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # Connect (and send) before dariod exists: the kernel queues it in the listener's backlog.
    early = socket.create_connection(("127.0.0.1", port), timeout=30)
    http_get(early, "/health")
    proc, lines = start_activated(home, listener, "--port", "9")  # --port is moot: fd 3 decides
    listener.close()  # only dariod holds it now
    try:
        wait_until(lambda: any(" listening on " in line for line in lines) or proc.poll() is not None, 30,
                   "dariod to start")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert f"listening on http://127.0.0.1:{port} " in "".join(lines)
        answer = read_all(early)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        late = socket.create_connection(("127.0.0.1", port), timeout=30)
        http_get(late, "/health")
        assert read_all(late).startswith(b"HTTP/1.1 200")
        late.close()
    finally:
        early.close()
        stop_process(proc, 30)


def test_a_socket_on_another_address_than_host_is_refused(home: Path) -> None:
    # --host decides the security checks (non-loopback needs DARIO_API_KEY): they must agree.
    listener = socket.create_server(("127.0.0.1", 0))
    proc, _ = start_activated(home, listener, "--host", "127.0.0.2")
    listener.close()
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc, 10)
    assert proc.returncode == 1
    assert "make ListenStream and --host agree" in err and "Traceback" not in err


def test_listen_pid_of_another_process_is_ignored() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert activation.listen_fds(env, 4242) == 0
    assert activation.take_inherited_socket(env, 4242) is None
    assert env == {}  # unset either way, so nothing dariod starts inherits them
    assert activation.listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, 4242) == 2
    assert activation.listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "x"}, 4242) == 0


def test_packaged_socket_unit_listens_on_the_default_port() -> None:
    text = (ROOT / "packaging/linux/dario.socket").read_text()
    assert "ListenStream=127.0.0.1:3456\n" in text
    assert os.path.exists(ROOT / "packaging/linux/dario.service")  # same name: the socket starts it
