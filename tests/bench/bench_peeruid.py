"""Cost of the peer-uid lookup dariod makes once per new public connection (Linux).

    python -m tests.bench.bench_peeruid [OPEN_CONNECTIONS ...] [--quick]

For each count, that many loopback connections are held open (the kernel's socket table grows
with them; /proc/net/tcp is read whole, sock_diag answers for one socket), then one connection's
owner is looked up repeatedly, by netlink and by /proc. Prints one JSON object: µs per lookup.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import orjson

from dario.daemon import peercred


def _per_lookup_us(fn: Any, local: tuple[str, int], remote: tuple[str, int], budget_s: float) -> float:
    n = 0
    start = time.perf_counter()
    while True:
        fn(local, remote)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s and n >= 5:
            return round(elapsed / n * 1e6, 1)


def measure(open_connections: int, budget_s: float) -> dict[str, Any]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    held: list[socket.socket] = []
    try:
        for _ in range(max(open_connections, 1)):
            c = socket.create_connection(srv.getsockname())
            a, _addr = srv.accept()
            held += [c, a]
        probe = held[0]
        local, remote = probe.getsockname(), probe.getpeername()
        assert peercred.netlink_owner_uid(local, remote) == peercred.proc_owner_uid(local, remote)
        return {
            "open_connections": open_connections,
            "netlink_us": _per_lookup_us(peercred.netlink_owner_uid, local, remote, budget_s),
            "proc_us": _per_lookup_us(peercred.proc_owner_uid, local, remote, budget_s),
        }
    finally:
        for s in held:
            s.close()
        srv.close()


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    counts = [int(a) for a in argv if not a.startswith("--")] or [1, 100, 1000]
    out = [measure(n, 0.3 if quick else 1.0) for n in counts]
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
