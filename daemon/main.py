"""`dariod`: the process. Arguments, signals, the lock, sockets and binds, and one trio nursery
serving both apps and running the background tasks of the Daemon that `app.build` wires."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dario.daemon import __version__, app, paths, peercred, teamconfig
from dario.daemon.accounts.errors import AccountError, KeyringUnavailable
from dario.daemon.accounts.sources import SecretUnavailable, source_for
from dario.daemon.atomicfile import write_json_atomic
from dario.daemon.edge import activation
from dario.daemon.settings import Settings, SettingsError, from_namespace, is_loopback_host, parse_args
from dario.daemon.teamconfig import TeamConfig

log = logging.getLogger("dario")


class StartupError(Exception):
    """dariod cannot start; the message says why and what to do."""


def take_lock(socket_path: Path) -> int:
    """Hold an exclusive lock beside the socket for the daemon's lifetime.

    The connect-probe alone leaves a gap: two daemons starting at the same moment would both
    find nothing answering. The lock closes it; the kernel drops it when the process dies.
    """
    _prepare_socket_dir(socket_path.parent)
    lock_path = socket_path.with_name(socket_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        _lock_exclusive(fd)
    except (BlockingIOError, PermissionError):
        os.close(fd)
        raise StartupError(
            f"another dariod is already running (or starting) on {socket_path}. Stop it first, or give "
            "this one its own --socket (and --port)."
        ) from None
    return fd


def _lock_exclusive(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt's byte-range lock does the same job
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def claim_socket(path: Path) -> None:
    """Refuse to start if another dariod answers on `path`; clear a stale socket file.

    hypercorn would silently unlink a live socket and take its path over.
    """
    _prepare_socket_dir(path.parent)
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        # Never delete what is not a socket: --socket may point at a file by mistake.
        raise StartupError(f"{path} exists and is not a socket; move it aside or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
        _refuse_foreign_listener(probe, path)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left behind by a dead daemon
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            path.unlink(missing_ok=True)
            return
        raise StartupError(f"cannot check the control socket {path}: {exc}") from None
    finally:
        probe.close()
    raise StartupError(
        f"another dariod is already running on {path}. Stop it first, or give this one its own "
        "--socket (and --port)."
    )


def _refuse_foreign_listener(probe: socket.socket, path: Path) -> None:
    try:
        uid = peercred.unix_peer_uid(probe)
    except (peercred.PeerUnknown, OSError):
        return
    if hasattr(os, "getuid") and uid != os.getuid():
        raise StartupError(
            f"{path} is held by a process of uid {uid}, not yours; another local user may have planted it. "
            "Choose another --socket, or point XDG_RUNTIME_DIR at a folder of your own."
        )


def _prepare_socket_dir(folder: Path) -> None:
    """Make the socket's folder 0700 when it is dario's own: the default one, or one created now.

    An existing folder named with --socket (say /tmp, or the home folder) keeps its mode: changing
    it would break everyone else who uses it, and the socket itself (0600) keeps other users out.
    """
    if folder.exists() and folder != paths.runtime_dir():
        return
    paths.ensure_private_dir(folder)


def _hypercorn_config(bind: str, settings: Settings) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.grace_period
    config.keep_alive_timeout = 75
    config.keep_alive_max_requests = 10_000_000  # hypercorn would close a busy connection every 1,000
    config.backlog = 4096
    config.umask = 0o177  # socket file 0600
    config.include_server_header = False
    config.h11_max_incomplete_size = 64 * 1024  # larger request heads are refused
    return config


def serve_http1_only() -> None:
    """Turn hypercorn's cleartext HTTP/2 off: no `Upgrade: h2c` switch, no prior-knowledge preface.

    hypercorn serves h2c whenever the h2 package is installed and has no setting for it. No
    client of dario needs HTTP/2 without TLS (the SDKs and curl speak HTTP/1.1 to http:// URLs),
    and it is a second, larger parser exposed to every local process. RFC 9110 §7.8 lets a
    server ignore Upgrade; a prior-knowledge preface is then just a request HTTP/1.1 refuses.
    """
    from hypercorn.protocol.h11 import H11Protocol

    async def check_protocol(self: H11Protocol, event: object) -> None:
        return None

    H11Protocol._check_protocol = check_protocol  # type: ignore[method-assign]


async def run(settings: Settings, team: TeamConfig | None = None) -> None:
    # Take SIGINT/SIGTERM over before anything else, so a signal during start-up still
    # leads to an orderly shutdown (socket removed, state saved).
    if not settings.http2_cleartext:
        serve_http1_only()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await _run(settings, signals, team)


async def _run(settings: Settings, signals: AsyncIterator[int], team: TeamConfig | None) -> None:
    lock_fd = take_lock(settings.socket)
    try:
        await _serve_all(settings, signals, team)
    finally:
        os.close(lock_fd)


def public_bind(settings: Settings, host: str) -> str:
    """hypercorn's bind for the public port: the socket systemd passed (fd://3), else host:port."""
    try:
        inherited = activation.take_inherited_socket()
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot use the socket passed by the service manager: {exc}") from None
    if inherited is None:
        return f"{host}:{settings.port}"
    # --host decides the security checks (a non-loopback address needs DARIO_API_KEY), so the
    # socket must listen where --host says.
    if not (activation.same_host(inherited.host, settings.host)
            or (settings.host == "localhost" and is_loopback_host(inherited.host))):
        raise StartupError(
            f"the socket passed by the service manager listens on {inherited.host}:{inherited.port}, but --host "
            f"is {settings.host}; make ListenStream and --host agree"
        )
    return f"fd://{inherited.fd}"


async def _serve_all(settings: Settings, signals: AsyncIterator[int], team: TeamConfig | None) -> None:
    tcp_control = paths.control_mode() == "tcp"
    if not tcp_control:
        claim_socket(settings.socket)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    bind = public_bind(settings, host)
    daemon = app.build(settings, tcp_control=tcp_control, team=team)
    endpoint_file = paths.control_endpoint_file(settings.socket)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as background:
            background.start_soon(_watch_signals, signals, stop)
            await background.start(daemon.run_background)
            # serve() returns after `stop`, once in-flight requests end or the grace period runs out.
            async with trio.open_nursery() as servers:
                binds = await servers.start(_serve, daemon.public, _hypercorn_config(bind, settings), stop)
                daemon.listening(host, int(binds[0].rsplit(":", 1)[1]))
                if daemon.control_token is not None:
                    control_binds = await servers.start(
                        _serve, daemon.control, _hypercorn_config("127.0.0.1:0", settings), stop)
                    control_port = int(control_binds[0].rsplit(":", 1)[1])
                    await trio.to_thread.run_sync(_write_endpoint_file, endpoint_file, control_port,
                                                  daemon.control_token)
                    where = f"control on 127.0.0.1:{control_port}, token in {endpoint_file}"
                else:
                    control_config = _hypercorn_config(f"unix:{settings.socket}", settings)
                    await servers.start(_serve, daemon.control, control_config, stop)
                    os.chmod(settings.socket, 0o600)
                    where = f"control socket {settings.socket}"
                # One line a supervisor or a test can wait for.
                print(f"dariod {__version__} listening on {daemon.view.listen} ({where})", flush=True)
                await stop.wait()
                log.info("shutting down; in-flight requests get up to %g s", settings.grace_period)
            background.cancel_scope.cancel()
    finally:
        if tcp_control:
            endpoint_file.unlink(missing_ok=True)
        else:
            settings.socket.unlink(missing_ok=True)
        await daemon.aclose()


def _write_endpoint_file(file: Path, port: int, token: str) -> None:
    """The TCP control API's port and token, for this user only (0600 in the 0700 folder)."""
    write_json_atomic(file, {"port": port, "token": token, "pid": os.getpid()}, mode=0o600)


async def _serve(app: object, config: Config, stop: trio.Event,
                 task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status, mode="asgi")  # type: ignore[arg-type]


async def _watch_signals(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()
        return


def settings_and_config(argv: list[str] | None) -> tuple[Settings, TeamConfig | None]:
    """Flags, environment and the team config file (if one is named) into Settings; raises SettingsError."""
    args = parse_args(argv)
    path = teamconfig.config_path(args.config, os.environ)
    if args.check:
        if path is None:
            raise SettingsError("--check needs --config FILE (or DARIO_CONFIG)")
        report, code = teamconfig.check(path)
        print(report, file=sys.stdout if code == 0 else sys.stderr)
        sys.exit(code)
    if path is None:
        return from_namespace(args), None
    try:
        team = teamconfig.load(path)
    except teamconfig.ConfigError as exc:
        raise SettingsError(f"{exc}\nCheck it with: dariod --config {path} --check") from None
    file_settings = dict(team.server.settings)
    if team.server.analytics_url:
        file_settings["analytics_url"] = team.server.analytics_url
    if team.server.store:
        file_settings["store"] = team.server.store
    return from_namespace(args, file_settings, _file_api_key(team)), team


def _file_api_key(team: TeamConfig) -> str | None:
    """The [server] api_key from its source, unless DARIO_API_KEY (which wins) is set."""
    spec = team.server.api_key
    if spec is None or os.environ.get("DARIO_API_KEY"):
        return None
    try:
        return source_for(spec.kind, spec.value, "api_key").read()
    except (SecretUnavailable, KeyringUnavailable) as exc:
        raise SettingsError(f"[server] api_key in {team.path}: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    try:
        settings, team = settings_and_config(argv)
    except SettingsError as exc:
        print(f"dariod: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("DARIO_DEBUG") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not settings.verbose:
        logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    try:
        trio.run(run, settings, team)
    except (StartupError, paths.UnsafeFolder, AccountError) as exc:  # AccountError: an unreadable registry
        print(f"dariod: {exc}", file=sys.stderr)
        sys.exit(1)
    except BaseExceptionGroup as group:
        in_use, _ = group.split(lambda e: isinstance(e, OSError) and e.errno == errno.EADDRINUSE)
        if in_use is None:
            raise
        print(f"dariod: {settings.host}:{settings.port} is already in use; stop what holds it or pass "
              "--port", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
