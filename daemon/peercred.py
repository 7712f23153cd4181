"""Who is on the other end of a local socket: the kernel's answer, not the peer's word.

Stdlib only and light on purpose: `dario-ctl` and the tray use it before they send a secret.

- Unix sockets: SO_PEERCRED on Linux (socket(7)), LOCAL_PEERCRED on macOS/FreeBSD (unix(4);
  the call behind getpeereid(3)).
- Loopback TCP, Linux only: the kernel's socket table holds the uid of the process that opened
  each socket. NETLINK_SOCK_DIAG answers for one exact connection (sock_diag(7), inet_diag);
  /proc/net/tcp{,6} (proc(5)) is the slower fallback where netlink is not allowed.
  macOS and Windows have no such table open to an unprivileged process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys

# <linux/netlink.h>, <linux/sock_diag.h>, <linux/inet_diag.h>
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_NLMSG_HDR = struct.Struct("=IHHII")
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then the socket id
_NOCOOKIE = b"\xff" * 8
_UID_OFFSET = _NLMSG_HDR.size + 4 + 48 + 12  # inet_diag_msg: 4 bytes, id (48), expires/rqueue/wqueue


class PeerUnknown(Exception):
    """The kernel could not say who the peer is."""


def unix_peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    if sys.platform.startswith("linux"):
        _pid, uid, _gid = struct.unpack("=iii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(uid)
    if sys.platform == "darwin" or sys.platform.startswith(("freebsd", "dragonfly")):
        # struct xucred {u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16];}
        sol_local, local_peercred = 0, 1
        raw = sock.getsockopt(sol_local, local_peercred, 76)
        _version, uid = struct.unpack_from("=II", raw)
        return int(uid)
    if sys.platform.startswith("openbsd"):
        _uid_gid_pid = struct.unpack("=III", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(_uid_gid_pid[0])
    raise PeerUnknown(f"cannot ask the kernel for a Unix socket's peer on {sys.platform}")


def tcp_owner_uid(local: tuple[str, int], remote: tuple[str, int]) -> int:
    """The uid owning the TCP socket whose own address is `local` and whose peer is `remote`.

    For a connection dario accepted, `local` is the client's address and `remote` dario's:
    the client's end is on this machine too, so the kernel knows whose it is.
    """
    if not sys.platform.startswith("linux"):
        raise PeerUnknown("only Linux shows the owner of another process's TCP socket")
    try:
        return netlink_owner_uid(local, remote)
    except PermissionError:
        return proc_owner_uid(local, remote)
    except PeerUnknown:
        raise
    except OSError:
        return proc_owner_uid(local, remote)


def netlink_owner_uid(local: tuple[str, int], remote: tuple[str, int]) -> int:
    src, dst = ipaddress.ip_address(local[0]), ipaddress.ip_address(remote[0])
    if src.version != dst.version:
        raise PeerUnknown("mixed IPv4/IPv6 addresses")
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    sockid = (struct.pack("!HH", local[1], remote[1]) + src.packed.ljust(16, b"\0") + dst.packed.ljust(16, b"\0")
              + struct.pack("=I", 0) + _NOCOOKIE)
    payload = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(payload), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.sendall(header + payload)
        reply = nl.recv(8192)
    if len(reply) < _NLMSG_HDR.size:
        raise PeerUnknown("short sock_diag reply")
    _length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", reply, _NLMSG_HDR.size)
        if err in (-1, -13):  # EPERM, EACCES: a hardened kernel; /proc may still answer
            raise PermissionError(-err, os.strerror(-err))
        raise PeerUnknown(f"no such local connection ({os.strerror(-err) if err else 'no answer'})")
    if kind != _SOCK_DIAG_BY_FAMILY or len(reply) < _UID_OFFSET + 4:
        raise PeerUnknown("unexpected sock_diag reply")
    (uid,) = struct.unpack_from("=I", reply, _UID_OFFSET)
    return int(uid)


def proc_owner_uid(local: tuple[str, int], remote: tuple[str, int]) -> int:
    want_local = (ipaddress.ip_address(local[0]), local[1])
    want_remote = (ipaddress.ip_address(remote[0]), remote[1])
    table = "/proc/net/tcp" if want_local[0].version == 4 else "/proc/net/tcp6"
    with open(table, encoding="ascii") as rows:
        next(rows, None)  # header
        for row in rows:
            fields = row.split()
            if len(fields) < 8:
                continue
            if _proc_addr(fields[1]) == want_local and _proc_addr(fields[2]) == want_remote:
                return int(fields[7])
    raise PeerUnknown("no such local connection")


def _proc_addr(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    # proc(5): the address is hex of the kernel's in-memory words (host byte order per 32-bit word).
    hexaddr, hexport = text.split(":")
    raw = bytes.fromhex(hexaddr)
    words = b"".join(struct.pack("=I", int.from_bytes(raw[i:i + 4], "big")) for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(hexport, 16)
