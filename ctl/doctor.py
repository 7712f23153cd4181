"""`dario-ctl doctor`: check everything dario depends on, say what is wrong and how to fix it.

Each check is independent (one failing or hanging does not stop the others) and time-limited:
they run side by side in daemon threads, and one without a verdict by its deadline is reported as
failed. A check returns one or more verdicts: "ok", "warn" (an optional part is absent, or
something will right itself), "fail" (broken: the exit status is 1) or "skip" (it depends on
something that already failed, e.g. the daemon).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dario.ctl.client import START_HINT, ControlAPIError, ControlClient, DaemonNotRunning
from dario.ctl.toolenv import client_address

if TYPE_CHECKING:
    from dario.daemon.control.api import Status

Verdict = Literal["ok", "warn", "fail", "skip"]
CHECK_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
# Rate-limit resets are absolute times from the upstream's clock: a few seconds off is noise,
# a minute off makes dario wait too long or retry too early.
CLOCK_WARN_S = 10.0
CLOCK_FAIL_S = 60.0
UNLOCK_HINT = "unlock the login keyring (log in to the desktop session, or open Passwords and Keys / Keychain Access)"


@dataclass(frozen=True)
class Check:
    name: str
    status: Verdict
    verdict: str
    hint: str = ""


@dataclass
class UpstreamProbe:
    """What one unauthenticated request to an upstream showed: an HTTP status and its Date, or an error."""

    status: int | None = None
    date: float | None = None
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass
class Context:
    """What the checks share: the control client, and memoised daemon status and upstream probes."""

    client: ControlClient
    home: Path | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _status: tuple[Status | None, str] | None = None
    _probes: dict[str, UpstreamProbe] = field(default_factory=dict)

    def status(self) -> Status | None:
        """The daemon's status, or None if it does not answer (asked once, shared by all checks)."""
        with self._lock:
            if self._status is None:
                try:
                    self._status = (self.client.status(), "")
                except DaemonNotRunning:
                    self._status = (None, "dariod is not running")
                except (OSError, ValueError, ControlAPIError) as exc:
                    self._status = (None, f"dariod does not answer on {self.client.socket_path}: {exc}")
            return self._status[0]

    def status_problem(self) -> str:
        self.status()
        assert self._status is not None
        return self._status[1]

    def probe(self, base_url: str) -> UpstreamProbe:
        with self._lock:
            if base_url in self._probes:
                return self._probes[base_url]
        result = probe_upstream(base_url)
        with self._lock:
            return self._probes.setdefault(base_url, result)


# -- the checks ----------------------------------------------------------------------------------


def check_daemon(ctx: Context) -> list[Check]:
    status = ctx.status()
    if status is None:
        return [Check("daemon", "fail", ctx.status_problem(), START_HINT)]
    return [Check("daemon", "ok", f"dariod {status['version']} answers (pid {status['pid']}, {status['listen']})")]


def _private(path: Path, what: str, want_mode: int, kind: Callable[[int], bool], kind_name: str) -> Check | None:
    """None if `path` is this user's, of the right kind, and shut to others; else the failed check."""
    st = path.lstat()
    name = f"control {what}"
    if not kind(st.st_mode):
        return Check(name, "fail", f"{path} is not a {kind_name}", f"remove it and restart dariod: rm -r '{path}'")
    if st.st_uid != os.getuid():
        return Check(name, "fail", f"{path} belongs to uid {st.st_uid}, not to you ({os.getuid()})",
                     f"remove it and restart dariod: rm -r '{path}'")
    if st.st_mode & 0o077:
        return Check(name, "fail", f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can reach it",
                     f"chmod {want_mode:o} '{path}'")
    return None


def check_control_files(ctx: Context) -> list[Check]:
    """The socket's folder and the socket: owned by this user, a real folder/socket, mode 0700/0600."""
    if not hasattr(os, "getuid"):
        return [Check("control files", "skip", "ownership checks are POSIX-only")]
    sock = ctx.client.socket_path
    folder = sock.parent
    if not os.path.lexists(folder):
        return [Check("control folder", "warn", f"{folder} does not exist yet", "dariod makes it when it starts")]
    bad = _private(folder, "folder", 0o700, stat.S_ISDIR, "folder")
    if bad is not None:
        return [bad]
    checks = [Check("control folder", "ok", f"{folder} is yours, mode 0700")]
    if not os.path.lexists(sock):
        checks.append(Check("control socket", "skip", f"no socket at {sock} (dariod is not running)"))
        return checks
    bad = _private(sock, "socket", 0o600, stat.S_ISSOCK, "socket")
    checks.append(bad or Check("control socket", "ok", f"{sock} is yours, mode 0600"))
    return checks


def check_keyring(ctx: Context) -> list[Check]:
    try:
        import keyring
        from keyring.errors import KeyringError, KeyringLocked
    except ImportError:
        return [Check("keyring", "fail", "the keyring package is missing", "reinstall dario: pip install dario")]
    backend = keyring.get_keyring()
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if name.startswith(("keyring.backends.fail.", "keyring.backends.null.")):
        return [Check("keyring", "fail", "no usable keyring backend was found",
                      "install and start a Secret Service (gnome-keyring or KeePassXC) on Linux")]
    try:
        keyring.get_password("dario-doctor", "probe")
    except KeyringLocked:
        return [Check("keyring", "fail", f"the keyring is locked ({name})", UNLOCK_HINT)]
    except (KeyringError, OSError) as exc:
        return [Check("keyring", "fail", f"the keyring does not answer ({name}: {type(exc).__name__}: {exc})",
                      UNLOCK_HINT)]
    return [Check("keyring", "ok", f"reachable and unlocked ({name})")]


def _account_check(account: dict[str, Any]) -> Check:
    alias, state, reason = account["alias"], account["status"], account.get("reason") or ""
    name = f"account {alias}"
    detail = f" ({reason})" if reason else ""
    if state == "ok":
        return Check(name, "ok", "key readable, last check passed")
    if state == "needs_login":
        return Check(name, "fail", f"its key was refused or is missing{detail}", f"dario-ctl login {alias}")
    if state == "waiting_for_keyring":
        return Check(name, "fail", f"its key cannot be read from the keyring{detail}", UNLOCK_HINT)
    if state == "disabled":
        return Check(name, "warn", "disabled: it takes no requests", f"dario-ctl accounts enable {alias}")
    if state in ("cooling", "exhausted"):
        until = account.get("until")
        when = time.strftime(" until %H:%M:%S", time.localtime(until)) if until else ""
        return Check(name, "warn", f"{state}{when}{detail}", "it comes back on its own; add accounts to spread load")
    return Check(name, "fail", f"status {state}{detail}", f"dario-ctl refresh {alias}")


def check_accounts(ctx: Context) -> list[Check]:
    status = ctx.status()
    if status is None:
        return [Check("accounts", "skip", "needs the daemon")]
    if not status["accounts"]:
        return [Check("accounts", "fail", "no accounts: dario has no key to send", "dario-ctl login")]
    return [_account_check(dict(a)) for a in status["accounts"]]


def tray_backend_report(timeout: float = CHECK_TIMEOUT_S - 1) -> tuple[str, str]:
    """(outcome, detail) from importing pystray in a child, as the tray would (it picks a backend then)."""
    code = ("import pystray; i = pystray.Icon; "
            "print(i.__module__.rsplit('.', 1)[-1].lstrip('_'), bool(getattr(i, 'HAS_MENU', False)))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "error", f"importing pystray took over {timeout:g} s"
    if out.returncode == 0:
        backend, has_menu = out.stdout.split()
        return ("menus" if has_menu == "True" else "no-menus"), backend
    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return ("missing" if "No module named 'pystray'" in last else "error"), last


def check_tray(ctx: Context) -> list[Check]:
    outcome, detail = tray_backend_report()
    if outcome == "menus":
        return [Check("tray", "ok", f"pystray uses the {detail} backend, with menus")]
    if outcome == "missing":
        return [Check("tray", "warn", "the tray is not installed (pystray is missing)",
                      "pip install 'dario[tray]'  (optional)")]
    if outcome == "no-menus":
        return [Check("tray", "warn", f"pystray would use the {detail} backend, which has no menus",
                      "install AppIndicator support: python3-gi and gir1.2-ayatanaappindicator3-0.1 (Debian/Ubuntu)")]
    return [Check("tray", "warn", f"no tray backend: {detail}", "the tray needs a graphical session (DISPLAY)")]


def check_autostart(ctx: Context) -> list[Check]:
    from dario.ctl import autostart

    try:
        report = autostart.status(home=ctx.home, environ=ctx.environ)
    except OSError as exc:
        return [Check("autostart", "warn", f"cannot read the autostart entries: {exc}", "dario-ctl autostart status")]
    verdict = report.lines[-1] if report.lines else ""
    if "not active" in verdict:
        # The unit is written but systemd was never told to start it.
        return [Check("autostart", "warn", "installed but not active: the unit is not enabled in systemd",
                      autostart.SYSTEMCTL_ENABLE)]
    if not report.enabled:
        return [Check("autostart", "warn", "not enabled: dariod does not start at login",
                      "dario-ctl autostart enable  (optional)")]
    return [Check("autostart", "ok", "installed and enabled")]


def check_public_port(ctx: Context) -> list[Check]:
    status = ctx.status()
    if status is None:
        return [Check("public port", "skip", "needs the daemon")]
    url = client_address(status["listen"]) + "/health"
    try:
        with _opener().open(url, timeout=HTTP_TIMEOUT_S) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError) as exc:
        return [Check("public port", "fail", f"{url} does not answer: {_reason(exc)}",
                      "a firewall or another program may hold the port; restart dariod and see dario-ctl status")]
    if code != 200:
        return [Check("public port", "fail", f"{url} answered HTTP {code}, not 200",
                      "another program may be on dario's port: set DARIO_PORT and restart dariod")]
    return [Check("public port", "ok", f"{url} answers")]


def _base_urls(status: Status | None) -> list[tuple[str, list[str]]]:
    by_url: dict[str, list[str]] = {}
    for a in status["accounts"] if status is not None else []:
        by_url.setdefault(a["base_url"].rstrip("/"), []).append(a["alias"])
    return list(by_url.items())


def check_upstreams(ctx: Context) -> list[Check]:
    status = ctx.status()
    if status is None:
        return [Check("upstream", "skip", "needs the daemon")]
    checks = []
    for url, aliases in _base_urls(status):
        name = f"upstream {url}"
        who = ", ".join(aliases)
        probe = ctx.probe(url)
        if probe.status is None:
            checks.append(Check(name, "fail", f"unreachable for {who}: {probe.error}",
                                "check the network and proxy settings (HTTPS_PROXY), or the account's base URL"))
        else:
            checks.append(Check(name, "ok", f"reachable for {who} (HTTP {probe.status} in {probe.elapsed_s:.2f} s)"))
    return checks or [Check("upstream", "skip", "no accounts to reach")]


def check_clock(ctx: Context) -> list[Check]:
    urls = _base_urls(ctx.status())
    if not urls:
        return [Check("clock", "skip", "no upstream to compare with")]
    url = urls[0][0]
    probe = ctx.probe(url)
    if probe.date is None:
        why = probe.error or "no Date header"
        return [Check("clock", "warn", f"could not compare with {url} ({why})", "see the upstream check")]
    skew = time.time() - probe.date
    where = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} {url}"
    hint = "turn on time sync: timedatectl set-ntp true (Linux), or Settings > Date & Time"
    if abs(skew) > CLOCK_FAIL_S:
        return [Check("clock", "fail", f"the local clock is {where}: rate-limit resets will be misread", hint)]
    if abs(skew) > CLOCK_WARN_S:
        return [Check("clock", "warn", f"the local clock is {where}", hint)]
    return [Check("clock", "ok", f"within {max(abs(skew), 1):.0f} s of {url}")]


def check_stores(ctx: Context) -> list[Check]:
    """Where the pool state and the usage rows live, and whether that store works (team mode)."""
    status = ctx.status()
    if status is None:
        return [Check("stores", "skip", "needs the daemon")]
    out: list[Check] = []
    store = status.get("store", "memory")
    if store == "degraded":
        out.append(Check("pool state", "warn", "Redis does not answer: this dariod routes on its own picture "
                         "until it does (nothing fails meanwhile)",
                         "check that redis-server runs and that --store / DARIO_STORE names it"))
    elif store == "ok":
        out.append(Check("pool state", "ok", "shared through Redis"))
    else:
        out.append(Check("pool state", "ok", "in memory (this dariod alone)"))
    analytics = status.get("analytics")
    if analytics is None:
        out.append(Check("usage", "skip", "not recorded (--no-analytics)"))
    elif analytics.get("problem") or not analytics.get("ok", True):
        dropped = analytics.get("dropped", 0)
        lost = f"; {dropped:,} rows dropped" if dropped else ""
        out.append(Check("usage", "warn", f"{analytics.get('problem') or 'the usage store is unusable'}"
                         f" ({analytics.get('pending', 0):,} rows waiting{lost})",
                         "requests are still served; fix the database and dariod writes the waiting rows"))
    else:
        out.append(Check("usage", "ok", f"{analytics.get('store', 'sqlite')}: {analytics.get('where', '')}"))
    return out


CHECKS: tuple[tuple[str, Callable[[Context], list[Check]]], ...] = (
    ("daemon", check_daemon),
    ("control files", check_control_files),
    ("keyring", check_keyring),
    ("accounts", check_accounts),
    ("tray", check_tray),
    ("autostart", check_autostart),
    ("public port", check_public_port),
    ("upstream", check_upstreams),
    ("clock", check_clock),
    ("stores", check_stores),
)


# -- plumbing ------------------------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener()


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None)
    return str(inner) if inner is not None else f"{type(exc).__name__}: {exc}"


def probe_upstream(base_url: str, timeout: float = HTTP_TIMEOUT_S) -> UpstreamProbe:
    """GET /v1/models without a key: free, sends no secret, and any HTTP answer (401 too) means
    the upstream is reachable; its Date header (RFC 9110 §6.6.1) tells the upstream's time."""
    from dario.daemon import __version__

    req = urllib.request.Request(base_url + "/v1/models", headers={
        "User-Agent": f"dario-ctl/{__version__} (doctor)", "anthropic-version": "2023-06-01",
    })
    started = time.monotonic()
    try:
        with _opener().open(req, timeout=timeout) as resp:
            code, headers = resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        code, headers = exc.code, exc.headers
    except (OSError, ValueError) as exc:
        return UpstreamProbe(error=_reason(exc), elapsed_s=time.monotonic() - started)
    elapsed = time.monotonic() - started
    date = None
    if headers.get("Date"):
        try:
            date = parsedate_to_datetime(headers["Date"]).timestamp()
        except (TypeError, ValueError):
            date = None
    return UpstreamProbe(status=code, date=date, elapsed_s=elapsed)


def run_checks(ctx: Context, checks: tuple[tuple[str, Callable[[Context], list[Check]]], ...] = CHECKS,
               timeout: float = CHECK_TIMEOUT_S) -> list[Check]:
    """Run every check at once; each has `timeout` seconds from the start to give its verdict."""
    results: dict[str, list[Check]] = {}

    def one(name: str, check: Callable[[Context], list[Check]]) -> None:
        try:
            results[name] = check(ctx)
        except Exception as exc:  # a bug in one check must not hide the others' verdicts
            results[name] = [Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}")]

    # Daemon threads: one stuck on a keyring prompt or a dead socket must not keep us from exiting.
    threads = [threading.Thread(target=one, args=c, daemon=True) for c in checks]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out: list[Check] = []
    for name, _ in checks:
        out.extend(results.get(name) or [
            Check(name, "fail", f"no verdict within {timeout:g} s", "it hung: run dario-ctl doctor again")
        ])
    return out


def broken(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]


MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{MARKS[c.status]}] {c.name}: {c.verdict}")
        if c.hint and c.status in ("warn", "fail"):
            lines.append(f"       fix: {c.hint}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append(f"{failed} broken, {warned} warning{'s' if warned != 1 else ''}" if failed or warned
                 else "everything looks right")
    return "\n".join(lines) + "\n"
