"""Another local user: a planted control folder or socket, and the public port.

The runs as a second user need root (CI runs as root): a throwaway system user
`dario-test-other` is created once, and its processes are started with setpriv. Without root,
the folder checks are still covered with folders of our own that are symlinks or open to others.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import ROOT, Dariod, base_env, stop_process, wait_until

pytestmark = pytest.mark.timeout(90)

OTHER_USER = "dario-test-other"
SECRET = "sk-ant-planted-socket-must-never-see-this"
SYSTEM_PYTHON = "/usr/bin/python3"  # the test's own interpreter may sit in a folder other users cannot enter

# A listener run as the other user: it accepts on a Unix socket and, once stdin closes, prints how
# many bytes all its connections sent.
RECORDER = r"""
import os, selectors, socket, sys
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(8)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ, "accept")
sel.register(sys.stdin, selectors.EVENT_READ, "stop")
total = 0
conns = 0
while True:
    for key, _ in sel.select():
        if key.data == "stop":
            print(conns, total, flush=True)
            sys.exit(0)
        if key.data == "accept":
            conn, _ = srv.accept()
            conns += 1
            sel.register(conn, selectors.EVENT_READ, "conn")
        else:
            data = key.fileobj.recv(65536)
            total += len(data)
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
"""

# A client run as the other user: raw HTTP to dario's public port, answers as JSON on stdout.
CALLER = r"""
import json, socket, sys
port = int(sys.argv[1]); key = sys.argv[2]
body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
out = []
for method, path in [("POST", "/v1/messages"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                     ("GET", "/accounts"), ("GET", "/analytics"), ("GET", "/metrics"), ("GET", "/health")]:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += "content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
    if key:
        head += f"x-api-key: {key}\r\n"
    payload = body.encode() if method == "POST" else b""
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    out.append([path, int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode("latin-1")])
print(json.dumps(out))
"""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module", name="other_user")
def other_user_fixture() -> tuple[int, int]:
    if not _is_root():
        pytest.skip("needs root to act as a second local user")
    if shutil.which("setpriv") is None or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs setpriv and /usr/bin/python3")
    if subprocess.run(["id", "-u", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True, capture_output=True)
    uid = int(subprocess.run(["id", "-u", OTHER_USER], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", OTHER_USER], capture_output=True, text=True, check=True).stdout)
    return uid, gid


def as_user(user: tuple[int, int], *argv: str) -> list[str]:
    uid, gid = user
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


@pytest.fixture(name="home")
def home_fixture() -> Iterator[Path]:
    # Short (socket paths are limited to 108 bytes) and enterable by the other user.
    path = Path(tempfile.mkdtemp(prefix="dario-lu-"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Recorder:
    """A Unix socket listener run as the other user that counts the bytes it is sent."""

    def __init__(self, user: tuple[int, int], path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(as_user(user, SYSTEM_PYTHON, "-c", RECORDER, str(path)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        wait_until(lambda: path.exists() or self.proc.poll() is not None, 10, "the planted socket")
        assert self.proc.poll() is None, "the recorder did not start"

    def finish(self) -> tuple[int, int]:
        """(connections, bytes received)."""
        out, _ = self.proc.communicate(timeout=10)
        conns, total = out.split()
        return int(conns), int(total)


def ctl_env(home: Path, **extra: str) -> dict[str, str]:
    env = base_env(home)
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    env.update(extra)
    return env


def run_ctl(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dario.ctl.cli", *args], cwd=ROOT, env=env, input=input,
                          capture_output=True, text=True, timeout=60)


def run_dariod(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dario.daemon.main", "--port", "0", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


# -- a planted control folder or socket ----------------------------------------------------------


def test_folder_planted_in_shared_tmp_by_another_user_gets_no_secret(home: Path, other_user: tuple[int, int]) -> None:
    # No XDG_RUNTIME_DIR: the folder is $TMPDIR/dario-<uid>, which anyone can create first in a shared /tmp.
    tmp = home / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    folder = tmp / f"dario-{os.getuid()}"
    subprocess.run(as_user(other_user, "mkdir", "-m", "0777", str(folder)), check=True)
    recorder = Recorder(other_user, folder / "ctl.sock")
    env = ctl_env(home, TMPDIR=str(tmp))
    env.pop("XDG_RUNTIME_DIR", None)

    login = run_ctl(env, "login", "work", input=SECRET + "\n")
    status = run_ctl(env, "status", "--json")
    assert recorder.finish() == (0, 0)  # not a connection, not a byte
    for result in (login, status):
        assert result.returncode == 1, result
        assert str(folder) in result.stderr and "belongs to uid" in result.stderr, result.stderr
        assert "XDG_RUNTIME_DIR" in result.stderr
        assert SECRET not in result.stderr + result.stdout

    daemon = run_dariod(env)
    assert daemon.returncode == 1 and str(folder) in daemon.stderr, daemon
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o777 and folder.lstat().st_uid == other_user[0]


def test_socket_of_another_user_gets_no_secret(home: Path, other_user: tuple[int, int]) -> None:
    # An explicit socket in a shared folder: the folder is no one's to check, the peer's uid is.
    shared = home / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = shared / "ctl.sock"
    recorder = Recorder(other_user, planted)
    env = ctl_env(home)

    login = run_ctl(env, "--socket", str(planted), "login", "work", input=SECRET + "\n")
    conns, received = recorder.finish()
    assert received == 0 and conns >= 1, (conns, received)  # it connected, asked the kernel, and left
    assert login.returncode == 1, login
    assert str(planted) in login.stderr and f"uid {other_user[0]}" in login.stderr, login.stderr
    assert SECRET not in login.stderr + login.stdout


def test_dariod_will_not_take_over_a_socket_another_user_holds(home: Path, other_user: tuple[int, int]) -> None:
    shared = home / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = shared / "ctl.sock"
    recorder = Recorder(other_user, planted)
    daemon = run_dariod(ctl_env(home), "--socket", str(planted))
    recorder.finish()
    assert daemon.returncode == 1, daemon
    assert f"uid {other_user[0]}" in daemon.stderr and str(planted) in daemon.stderr


def test_symlinked_runtime_folder_is_refused_and_its_target_left_alone(home: Path) -> None:
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    target = home / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o755)
    (runtime / "dario").symlink_to(target)
    env = ctl_env(home, XDG_RUNTIME_DIR=str(runtime))

    daemon = run_dariod(env)
    assert daemon.returncode == 1, daemon
    assert str(runtime / "dario") in daemon.stderr and "symbolic link" in daemon.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not chmod-ed through the link
    assert list(target.iterdir()) == []

    login = run_ctl(env, "login", "work", input=SECRET + "\n")
    assert login.returncode == 1 and "symbolic link" in login.stderr, login
    assert SECRET not in login.stderr + login.stdout


def test_runtime_folder_open_to_others_is_refused_by_clients(home: Path) -> None:
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    folder = runtime / "dario"
    folder.mkdir()
    os.chmod(folder, 0o777)
    # Our own listener in there: a client that trusted the folder would send it the secret.
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(folder / "ctl.sock"))
    srv.listen(1)
    srv.setblocking(False)
    try:
        env = ctl_env(home, XDG_RUNTIME_DIR=str(runtime))
        login = run_ctl(env, "login", "work", input=SECRET + "\n")
        assert login.returncode == 1, login
        assert str(folder) in login.stderr and "chmod 700" in login.stderr, login.stderr
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody even connected
    finally:
        srv.close()


# -- the public port ----------------------------------------------------------------------------


@pytest.fixture
def shared_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dario-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def call_as(user: tuple[int, int], port: int, key: str = "") -> dict[str, tuple[int, Any]]:
    result = subprocess.run(as_user(user, SYSTEM_PYTHON, "-c", CALLER, str(port), key),
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    return {path: (status, body) for path, status, body in orjson.loads(result.stdout)}


GATED_PATHS = ("/v1/messages", "/v1/chat/completions", "/v1/models", "/accounts", "/analytics", "/metrics")


def test_other_local_user_is_refused_on_the_public_port(dariod_factory: Callable[..., Dariod], upstream: Any,
                                                        other_user: tuple[int, int]) -> None:
    d = dariod_factory()
    d.login("work", "sk-ant-local-users-account", upstream.url)
    upstream.clear()

    answers = call_as(other_user, d.port)
    for path in GATED_PATHS:
        status, body = answers[path]
        assert status == 403, (path, status, body)
        parsed = orjson.loads(body)
        error = parsed["error"]
        if path.startswith("/v1/chat"):
            assert error["code"] == "permission_error" or error["type"] == "permission_error", parsed
        else:
            assert parsed["type"] == "error" and error["type"] == "permission_error", parsed
        assert "DARIO_API_KEY" in error["message"] and "client key" in error["message"]
        assert "work" not in body  # no account names either
    assert answers["/health"][0] == 200
    assert upstream.requests() == []

    # A client key is the way to share: the same user with one is served.
    key = d.ctl_json("keys", "create", "colleague")["key"]
    shared = call_as(other_user, d.port, key)
    assert {path: shared[path][0] for path in GATED_PATHS} == dict.fromkeys(GATED_PATHS, 200)

    # dario's own user is served as always.
    own = subprocess.run([sys.executable, "-c", CALLER, str(d.port), ""], capture_output=True, text=True,
                         timeout=60, check=True)
    assert all(status == 200 for _, status, _ in orjson.loads(own.stdout))


def test_with_dario_api_key_the_key_decides_for_other_users(dariod_factory: Callable[..., Dariod], upstream: Any,
                                                            other_user: tuple[int, int]) -> None:
    d = dariod_factory(env={"DARIO_API_KEY": "local-users-gate"})
    d.login("work", "sk-ant-local-users-account", upstream.url)
    upstream.clear()
    keyed = call_as(other_user, d.port, "local-users-gate")
    assert all(keyed[path][0] == 200 for path in GATED_PATHS), keyed
    unkeyed = call_as(other_user, d.port)
    assert all(unkeyed[path][0] == 401 for path in GATED_PATHS), unkeyed


# -- the control API on TCP ---------------------------------------------------------------------


def test_control_over_tcp_with_a_token(dariod_factory: Callable[..., Dariod], upstream: Any) -> None:
    d = dariod_factory(env={"DARIO_CONTROL": "tcp"})
    assert not d.socket.exists()
    endpoint = d.socket.with_name("control-tcp.json")
    info = orjson.loads(endpoint.read_bytes())
    assert stat.S_IMODE(endpoint.stat().st_mode) == 0o600 and endpoint.stat().st_uid == os.getuid()
    assert len(info["token"]) >= 32

    d.login("work", "sk-ant-tcp-control-account", upstream.url)
    accounts = d.ctl_json("accounts", "list")["accounts"]
    assert [a["alias"] for a in accounts] == ["work"]
    assert d.ctl_json("status")["pid"] == d.proc.pid  # type: ignore[union-attr]
    # The tray and a ctl started without DARIO_CONTROL find the TCP file beside the missing socket.
    env = dict(d.env)
    env.pop("DARIO_CONTROL")
    plain = subprocess.run([sys.executable, "-m", "dario.ctl.cli", "--socket", str(d.socket), "status", "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and orjson.loads(plain.stdout)["accounts"][0]["alias"] == "work", plain.stderr

    for auth in ("", "Bearer wrong", f"Bearer {info['token'][:-1]}", info["token"]):
        head = "GET /v1/status HTTP/1.1\r\nHost: dario.sock\r\nConnection: close\r\n"
        if auth:
            head += f"Authorization: {auth}\r\n"
        reply = _raw(info["port"], (head + "\r\n").encode())
        assert reply.startswith(b"HTTP/1.1 401"), (auth, reply[:200])
        assert b"work" not in reply
    ok = _raw(info["port"], f"GET /v1/status HTTP/1.1\r\nHost: dario.sock\r\nConnection: close\r\n"
                            f"Authorization: Bearer {info['token']}\r\n\r\n".encode())
    assert ok.startswith(b"HTTP/1.1 200")

    assert d.stop() == 0
    assert not endpoint.exists()
    gone = d.ctl("status")
    assert gone.returncode == 3, gone  # not running


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_tcp_control_token_goes_only_to_our_own_listener(home: Path, other_user: tuple[int, int]) -> None:
    # A daemon that died left its file; another user has taken the port since.
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    folder = runtime / "dario"
    folder.mkdir(mode=0o700)
    grab = subprocess.Popen(as_user(other_user, SYSTEM_PYTHON, "-c", _PORT_RECORDER), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert grab.stdout is not None
        port = int(grab.stdout.readline())
        token = "tcp-token-for-our-daemon-only-0123456789"
        endpoint = folder / "control-tcp.json"
        endpoint.write_bytes(orjson.dumps({"port": port, "token": token, "pid": 1}))
        os.chmod(endpoint, 0o600)
        env = ctl_env(home, XDG_RUNTIME_DIR=str(runtime), DARIO_CONTROL="tcp")
        login = run_ctl(env, "login", "work", input=SECRET + "\n")
        assert login.returncode == 1 and f"uid {other_user[0]}" in login.stderr, login
        out, _ = grab.communicate(timeout=10)
        assert out.split() == ["0"]  # bytes received: no token, no secret
    finally:
        stop_process(grab)


_PORT_RECORDER = r"""
import selectors, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
print(srv.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ, "accept"); sel.register(sys.stdin, selectors.EVENT_READ, "stop")
total = 0
while True:
    for key, _ in sel.select():
        if key.data == "stop":
            print(total, flush=True); sys.exit(0)
        if key.data == "accept":
            conn, _ = srv.accept(); sel.register(conn, selectors.EVENT_READ, "conn")
        else:
            data = key.fileobj.recv(65536); total += len(data)
            if not data:
                sel.unregister(key.fileobj); key.fileobj.close()
"""
