"""systemd socket activation: take over the listening socket a service manager passed in.

The protocol is sd_listen_fds(3): the manager sets LISTEN_PID to our pid and LISTEN_FDS to the
number of sockets, passed as fds 3, 4, …; LISTEN_PID guards against a variable inherited from a
parent that was itself activated. dariod uses the first one (fd 3) as its public port; the
control socket stays its own, created beside its lock. packaging/linux/dario.socket declares
ListenStream=127.0.0.1:3456, so the first connection to the port starts dariod and waits in the
socket's backlog instead of being refused.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

log = logging.getLogger("dario")

SD_LISTEN_FDS_START = 3  # sd-daemon.h


@dataclass(frozen=True)
class InheritedSocket:
    fd: int
    host: str
    port: int


def listen_fds(environ: Mapping[str, str], pid: int) -> int:
    """How many sockets were passed to this process (0 if none, or if they were meant for another)."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return 0
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return 0
    return max(count, 0)


def take_inherited_socket(environ: MutableMapping[str, str] | None = None,
                          pid: int | None = None) -> InheritedSocket | None:
    """The listening TCP socket passed as fd 3, or None when dariod was not socket-activated.

    Like sd_listen_fds(1): unsets LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES so nothing we start
    inherits them, and marks the fd close-on-exec.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    count = listen_fds(environ, pid)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if count == 0:
        return None
    if count > 1:
        log.warning("%d sockets were passed; dariod serves its public port on the first (fd 3) only", count)
    fd = SD_LISTEN_FDS_START
    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
    # socket(fileno=…) detects family and type; detach() leaves the fd to hypercorn ("fd://3").
    sock = socket.socket(fileno=fd)
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError("the socket passed as fd 3 is not a TCP socket: use ListenStream=HOST:PORT")
        host, port = sock.getsockname()[:2]
    finally:
        sock.detach()
    return InheritedSocket(fd, host, port)


def same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.strip("[]").lower() == b.strip("[]").lower()
