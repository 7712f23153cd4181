"""dario-ctl: the command line for a running dariod.

It talks only to the daemon's control API (through `dario.ctl.client`); the daemon owns the
account secrets. The one exception is `run`/`env`, which keep a tool's client key in the
keyring (see `dario.ctl.toolkeys`). Exit codes: 0 ok, 1 failed, 2 usage error,
3 daemon not running, 130 interrupted.

Startup is kept short on purpose (it runs in shell prompts and scripts): the control client,
rich, orjson and the views are imported inside the commands that need them, so `--help` and
usage errors cost little more than argparse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dario.daemon import __version__
from dario.daemon.control.api import ACCOUNT_KINDS, INFERENCE_PROFILES, LIMIT_MAX, LIMIT_NAMES, AccountView

if TYPE_CHECKING:
    from rich.console import Console

    from dario.ctl.client import ControlClient

PROG = "dario-ctl"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130
USAGE_WINDOWS = ("1h", "24h", "7d")


class UsageError(Exception):
    """Arguments argparse accepted but the command cannot use (exit 2)."""


class CommandFailed(Exception):
    """A local failure with a message for the user (exit 1)."""


# -- plumbing --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ControlClient:
    from dario.ctl.client import ControlClient

    # None lets the client fall back to DARIO_SOCKET, then the platform default.
    return ControlClient(Path(args.socket) if args.socket else None)


def _console() -> Console:
    from rich.console import Console

    return Console()


def _say(console: Console, message: str, style: str | None = None) -> None:
    from dario.ctl.views import printable

    # Messages embed daemon-supplied names: print them literally, never as markup, and
    # never with the control characters an upstream or a client might have put in them.
    console.print(printable(message, keep_newlines=True), style=style, markup=False, highlight=False,
                  soft_wrap=True)


def _print_json(data: Any) -> None:
    import orjson

    # Plain stdout, not rich: the output must be exactly the JSON, with no wrapping or colour.
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _err(message: str) -> None:
    from dario.ctl.views import printable

    print(printable(message, keep_newlines=True), file=sys.stderr, flush=True)


# -- commands --------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).status()
    if args.json:
        _print_json(status)
        return EXIT_OK
    from dario.ctl.views import render_status

    render_status(status, _console())
    return EXIT_OK


def _read_secret(alias: str, client: ControlClient, what: str = "API key") -> str:
    stdin = sys.stdin
    if stdin is None:
        return ""
    if stdin.isatty():
        # Fail before the prompt, not after the user has pasted a key nobody can take.
        _refuse_config_account(client.status().get("accounts", []), alias)
        import getpass

        try:
            return getpass.getpass(f"{what} for {alias} (input hidden): ").strip()
        except EOFError:
            return ""
    return stdin.read().strip()


def _login_input(args: argparse.Namespace, client: ControlClient) -> tuple[str, dict[str, str | None]]:
    """(the secret, the kind's non-secret fields) for a login, from flags, a prompt or stdin."""
    from dario.ctl.credentials import CredentialError

    bedrock_flags = {"--aws-profile": args.aws_profile, "--bedrock-api-key": args.bedrock_api_key,
                     "--inference-profile": args.inference_profile}
    vertex_flags = {"--project": args.project, "--credentials": args.credentials, "--adc": args.adc}
    given = [flag for flag, value in {**bedrock_flags, **vertex_flags, "--region": args.region}.items() if value]
    try:
        if args.kind == "bedrock":
            wrong = [flag for flag, value in vertex_flags.items() if value]
            if wrong:
                raise UsageError(f"{', '.join(wrong)} apply to --kind vertex")
            return _bedrock_input(args, client)
        if args.kind == "vertex":
            wrong = [flag for flag, value in bedrock_flags.items() if value]
            if wrong:
                raise UsageError(f"{', '.join(wrong)} apply to --kind bedrock")
            return _vertex_input(args)
    except CredentialError as exc:
        raise UsageError(str(exc)) from None
    if given:
        raise UsageError(f"{', '.join(given)} apply to --kind bedrock or vertex")
    secret = _read_secret(args.alias, client)
    if not secret:
        raise UsageError("no API key given: type it at the prompt, or pipe it on stdin")
    return secret, {}


def _bedrock_input(args: argparse.Namespace, client: ControlClient) -> tuple[str, dict[str, str | None]]:
    import orjson

    from dario.ctl.credentials import parse_aws_keys, prompt_aws_keys, read_stdin

    if not args.region:
        raise UsageError("--kind bedrock needs --region (an AWS region, e.g. us-east-1)")
    fields: dict[str, str | None] = {"region": args.region, "inference_profile": args.inference_profile}
    if args.aws_profile and args.bedrock_api_key:
        raise UsageError("choose one of --aws-profile and --bedrock-api-key")
    if args.aws_profile:
        return "", {**fields, "credential": "profile", "aws_profile": args.aws_profile}
    if args.bedrock_api_key:
        key = _read_secret(args.alias, client, "Bedrock API key")
        if not key:
            raise UsageError("no Bedrock API key given: type it at the prompt, or pipe it on stdin")
        return key, {**fields, "credential": "api_key"}
    if sys.stdin is not None and sys.stdin.isatty():
        client.status()  # fail before the prompt, not after the user has typed keys nobody can take
        keys = prompt_aws_keys(args.alias)
    else:
        text = read_stdin().strip()
        keys = parse_aws_keys(text) if text else None
    if keys is None:  # no keys: botocore's own chain (environment, shared files, SSO, instance role)
        return "", {**fields, "credential": "profile", "aws_profile": None}
    return orjson.dumps(keys).decode(), {**fields, "credential": "keys"}


def _vertex_input(args: argparse.Namespace) -> tuple[str, dict[str, str | None]]:
    from dario.ctl.credentials import read_service_account

    if not args.project or not args.region:
        raise UsageError("--kind vertex needs --project PROJECT and --region REGION (e.g. us-east5, global)")
    fields: dict[str, str | None] = {"region": args.region, "project": args.project}
    if bool(args.credentials) == bool(args.adc):
        raise UsageError("--kind vertex needs one of --credentials FILE (a service-account key) or --adc")
    if args.adc:
        return "", {**fields, "credential": "adc"}
    return read_service_account(args.credentials), {**fields, "credential": "service_account"}


def cmd_login(args: argparse.Namespace) -> int:
    from dario.ctl.client import ControlAPIError
    from dario.ctl.credentials import secret_parts

    client = _client(args)
    secret, fields = _login_input(args, client)
    try:
        limits = {name: getattr(args, name) for name in LIMIT_NAMES if getattr(args, name) is not None}
        result = client.login(args.alias, secret, kind=args.kind, base_url=args.base_url, limits=limits, **fields)
    except ControlAPIError as exc:
        # The daemon should never echo the key back; scrub it anyway before it reaches a terminal.
        message = exc.message
        for part in sorted(secret_parts(secret), key=len, reverse=True):
            message = message.replace(part, "<secret>")
        if message != exc.message:
            raise ControlAPIError(exc.status, exc.type, message) from None
        raise
    from dario.ctl.views import kind_label

    account = result["account"]
    console = _console()
    _say(console, f"Logged in as {account['alias']} ({kind_label(account)}, {account['base_url']})", "green")
    if result.get("warning"):
        _say(console, f"note: {result['warning']}", "yellow")
    if account.get("status") not in (None, "ok"):
        reason = f" ({account['reason']})" if account.get("reason") else ""
        _say(console, f"status: {account['status']}{reason}")
    return EXIT_OK


def _refuse_config_account(accounts: Sequence[AccountView], alias: str) -> None:
    """An account the team config file defines takes no login: say so before asking for a key."""
    from dario.ctl.client import ControlAPIError
    from dario.daemon.commands import command

    for account in accounts:
        if account.get("alias") == alias and account.get("managed_by") == "config":
            raise ControlAPIError(409, "managed_by_config",
                                  f"account {alias!r} is defined in dariod's config file; change its secret at the "
                                  f"source that file names, then run: {command('dario-ctl')} refresh {alias}")


def cmd_limits(args: argparse.Namespace) -> int:
    client = _client(args)
    changes = {name: getattr(args, name) for name in LIMIT_NAMES if getattr(args, name) is not None}
    if changes or args.clear:
        account = client.set_limits(args.alias, changes, clear=args.clear)
    else:  # no change asked: show what is declared
        found = next((a for a in client.accounts() if a["alias"] == args.alias), None)
        if found is None:
            raise CommandFailed(f"no account named {args.alias!r}")
        account = found
    if args.json:
        _print_json({"account": account})
        return EXIT_OK
    from dario.ctl.views import limits_lines

    console = _console()
    for line in limits_lines(account):
        _say(console, line)
    return EXIT_OK


def _limit_value(text: str) -> int:
    """A declared limit on the command line: a whole number from 1 up."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number per minute, not {text!r}") from None
    if not 1 <= value <= LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {LIMIT_MAX:,} per minute, not {value}")
    return value


def _limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=_limit_value, metavar="N", help="requests per minute the account allows")
    p.add_argument("--input-tpm", type=_limit_value, metavar="N", help="input tokens per minute")
    p.add_argument("--output-tpm", type=_limit_value, metavar="N", help="output tokens per minute")


def cmd_logout(args: argparse.Namespace) -> int:
    _client(args).logout(args.alias)
    _say(_console(), f"Logged out {args.alias}: removed from the pool and the keyring")
    return EXIT_OK


def cmd_accounts_list(args: argparse.Namespace) -> int:
    accounts = _client(args).accounts()
    if args.json:
        # The daemon's envelope, as it sent it (the client unwraps the list).
        _print_json({"accounts": accounts})
        return EXIT_OK
    from dario.ctl.views import render_accounts

    render_accounts(accounts, _console())
    return EXIT_OK


def cmd_accounts_prefer(args: argparse.Namespace) -> int:
    preferred = _client(args).prefer(None if args.none else args.alias)
    if preferred:
        _say(_console(), f"Preferred account: {preferred} (used first while it has headroom)")
    else:
        _say(_console(), "No preferred account: routing by headroom alone")
    return EXIT_OK


def cmd_accounts_enable(args: argparse.Namespace) -> int:
    account = _client(args).enable(args.alias)
    _say(_console(), f"Enabled {account['alias']} (status: {account['status']})")
    return EXIT_OK


def cmd_accounts_disable(args: argparse.Namespace) -> int:
    account = _client(args).disable(args.alias)
    _say(_console(), f"Disabled {account['alias']}: it takes no new requests until enabled")
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    results = _client(args).refresh(args.alias)
    if args.json:
        _print_json({"results": results})
    else:
        from dario.ctl.views import render_refresh

        render_refresh(results, _console())
    # Scripts can tell a refresh that found a dead key from one that found all well.
    return EXIT_OK if all(r.get("ok") for r in results) else EXIT_FAILED


def cmd_usage(args: argparse.Namespace) -> int:
    usage = _client(args).usage(args.window)
    if args.json:
        _print_json(usage)
        return EXIT_OK
    from dario.ctl.usage_view import render_usage

    render_usage(usage, _console())
    return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = _client(args).create_key(args.name, auto_cache=args.auto_cache)
    if args.json:
        _print_json({"name": args.name, "key": key, "auto_cache": args.auto_cache})
        return EXIT_OK
    console = _console()
    _say(console, f"Created client key {args.name}:")
    _say(console, key, "bold")
    _say(console, "Copy it now: it is not shown again (dario keeps only a hash).", "yellow")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _client(args).keys()
    if args.json:
        _print_json({"keys": keys})
        return EXIT_OK
    from dario.ctl.views import render_keys

    render_keys(keys, _console())
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    _client(args).revoke_key(args.name)
    _say(_console(), f"Revoked client key {args.name}")
    return EXIT_OK


def cmd_autostart(args: argparse.Namespace) -> int:
    from dario.ctl import autostart

    try:
        if args.action == "enable":
            report = autostart.enable(dry_run=args.dry_run, run=not args.no_start)
        elif args.action == "disable":
            report = autostart.disable(dry_run=args.dry_run, run=not args.no_start)
        else:
            report = autostart.status()  # only reads: --dry-run is accepted and has nothing to skip
    except OSError as exc:  # e.g. the unit/agent folder is not writable
        raise CommandFailed(f"autostart {args.action} failed: {exc}") from exc
    if args.json:
        _print_json({"enabled": report.enabled, "changed": report.changed,
                     "files": [str(p) for p in report.files], "lines": report.lines})
        return EXIT_OK
    console = _console()
    for line in report.lines:
        _say(console, line)
    if not report.lines:
        state = "enabled" if report.enabled else "disabled"
        _say(console, f"autostart is {state}" + ("" if report.changed else " (no change)"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from dario.ctl import run, toolkeys

    command = run.strip_separator(args.tool_command)
    if not command:
        raise UsageError("no command given: dario-ctl run [--name NAME] -- CMD [ARGS...]")
    try:
        return run.run(_client(args), command, args.name, args.start)
    except (run.StartFailed, toolkeys.KeyStoreError, toolkeys.KeyUnavailable) as exc:
        raise CommandFailed(str(exc)) from exc


def cmd_env(args: argparse.Namespace) -> int:
    from dario.ctl import env, toolkeys

    try:
        text = env.env_text(_client(args), args.shell, args.name)
    except (toolkeys.KeyStoreError, toolkeys.KeyUnavailable) as exc:
        raise CommandFailed(str(exc)) from exc
    sys.stdout.write(text)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from dario.ctl import doctor
    from dario.ctl.client import ControlClient

    socket = Path(args.socket) if args.socket else None
    checks = doctor.run_checks(doctor.Context(ControlClient(socket, timeout=doctor.HTTP_TIMEOUT_S)))
    if args.json:
        _print_json(doctor.as_json(checks))
    else:
        sys.stdout.write(doctor.render(checks))
    return EXIT_FAILED if doctor.broken(checks) else EXIT_OK


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --socket is accepted before or after the command; SUPPRESS keeps a subcommand that was
    # not given it from overwriting a value given before the command.
    socket_opt = argparse.ArgumentParser(add_help=False)
    socket_opt.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Control a running dariod: accounts, status, usage, client keys.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 dariod not running.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="control socket (default: $DARIO_SOCKET, else <runtime dir>/dario/ctl.sock)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, func: Any
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[socket_opt])
        p.set_defaults(func=func, parser=p)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print the daemon's JSON answer as is")

    def alias_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("alias", metavar="ALIAS")

    json_flag(add(sub, "status", "show the daemon, the pool and each account", cmd_status))

    p = add(sub, "login", "add an account, or replace its key (hidden prompt, or stdin)", cmd_login)
    p.add_argument("alias", nargs="?", default="default", metavar="ALIAS", help="default: default")
    p.add_argument("--kind", choices=ACCOUNT_KINDS, default="anthropic", help="upstream (default: anthropic)")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help="upstream base URL (default: per kind; for vertex the host only)")
    p.add_argument("--region", metavar="REGION", help="bedrock: AWS region; vertex: location (e.g. us-east5)")
    p.add_argument("--aws-profile", metavar="NAME",
                   help="bedrock: use this AWS profile through the AWS credential chain (nothing secret is stored)")
    p.add_argument("--bedrock-api-key", action="store_true",
                   help="bedrock: the credential is a Bedrock API key (prompt, or stdin)")
    p.add_argument("--inference-profile", choices=(*INFERENCE_PROFILES, "none"),
                   help="bedrock: route through this cross-region inference profile (default: the region's "
                   "geography, us/eu/apac; none: in-region ids only)")
    p.add_argument("--project", metavar="PROJECT", help="vertex: Google Cloud project id")
    p.add_argument("--credentials", metavar="FILE",
                   help="vertex: service-account key file (its contents go to the keyring)")
    p.add_argument("--adc", action="store_true",
                   help="vertex: use application default credentials (by reference, nothing secret stored)")
    _limit_flags(p)

    p = add(sub, "limits", "declare an account's per-minute limits (for upstreams that send no rate-limit "
            "headers); with no flags, show them", cmd_limits)
    alias_arg(p)
    _limit_flags(p)
    p.add_argument("--clear", action="store_true",
                   help="drop every declared limit and every estimate learned from throttling, then set any given")
    json_flag(p)

    alias_arg(add(sub, "logout", "remove an account and its key", cmd_logout))

    p = add(sub, "accounts", "list and manage accounts", None)
    acc = p.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    json_flag(add(acc, "list", "list accounts", cmd_accounts_list))
    alias_arg(add(acc, "remove", "remove an account and its key", cmd_logout))
    p = add(acc, "prefer", "use an account first while it has headroom", cmd_accounts_prefer)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("alias", nargs="?", metavar="ALIAS")
    group.add_argument("--none", action="store_true", help="clear the preference")
    alias_arg(add(acc, "enable", "put an account back in rotation", cmd_accounts_enable))
    alias_arg(add(acc, "disable", "take an account out of rotation", cmd_accounts_disable))

    p = add(sub, "refresh", "re-check accounts' keys and limits upstream", cmd_refresh)
    p.add_argument("alias", nargs="?", default=None, metavar="ALIAS", help="only this account (default: all)")
    json_flag(p)

    p = add(sub, "usage", "show usage over a window", cmd_usage)
    p.add_argument("--window", choices=USAGE_WINDOWS, default="24h", help="time window (default: 24h)")
    json_flag(p)

    p = add(sub, "keys", "manage client keys for the gateway", None)
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = add(keys, "create", "create a client key (shown once)", cmd_keys_create)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--auto-cache", action="store_true",
                   help="add prompt-cache breakpoints to this key's OpenAI-dialect requests "
                   "(cache writes cost 1.25x input, reads 0.1x)")
    json_flag(p)
    json_flag(add(keys, "list", "list client keys", cmd_keys_list))
    add(keys, "revoke", "revoke a client key", cmd_keys_revoke).add_argument("name", metavar="NAME")

    p = add(sub, "autostart", "start dariod at login", cmd_autostart)
    p.add_argument("action", choices=("enable", "disable", "status"))
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("--no-start", action="store_true",
                   help="only write or remove the files; do not start or stop dariod now")
    p.add_argument("--json", action="store_true", help="print enabled, changed, files and lines as JSON")

    p = add(sub, "run", "run a tool pointed at dario (dario-ctl run -- claude)", cmd_run)
    p.add_argument("--name", metavar="NAME", help="client key name, when dariod requires one (default: the command)")
    p.add_argument("--start", action="store_true", help="start dariod first if it is not running")
    p.add_argument("tool_command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    p = add(sub, "env", 'print the settings for tools, for: eval "$(dario-ctl env)"', cmd_env)
    p.add_argument("--shell", choices=("sh", "fish", "powershell"), default=None,
                   help="syntax (default: sh; powershell on Windows)")
    p.add_argument("--name", metavar="NAME", help="client key name, when dariod requires one (default: shell)")

    p = add(sub, "doctor", "check everything dario needs and say what to fix (exit 1 if broken)", cmd_doctor)
    p.add_argument("--json", action="store_true", help="the checks as a JSON list of name, status, verdict, hint")
    return parser


# -- entry point -----------------------------------------------------------------------


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version exit 0, bad usage 2: return it rather than exit
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

    # Imported here, not at the top, so --help and usage errors stay cheap.
    from http.client import HTTPException

    import orjson

    from dario.ctl.client import ControlAPIError, DaemonNotRunning, UntrustedDaemon
    from dario.daemon.paths import UnsafeFolder

    try:
        return int(args.func(args))
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        _err(f"{args.parser.prog}: error: {exc}")
        return EXIT_USAGE
    except DaemonNotRunning as exc:
        _err(str(exc))
        return EXIT_NOT_RUNNING
    except ControlAPIError as exc:
        _err(f"error: {exc.message}")
        return EXIT_FAILED
    except CommandFailed as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            _err("")  # end the line the ^C echo left open
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`dario-ctl ... | head`): point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and leave quietly.
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout has no file descriptor (embedded or captured): nothing to quiet
        return EXIT_FAILED
    except (UnsafeFolder, UntrustedDaemon) as exc:
        # Says which folder or socket, and what to do; nothing was sent to it.
        _err(f"error: {exc}")
        return EXIT_FAILED
    except TimeoutError:
        _err(f"error: dariod did not answer in time (socket {_socket_for_messages(args)})")
        return EXIT_FAILED
    except (OSError, HTTPException, orjson.JSONDecodeError) as exc:
        _err(f"error: could not talk to dariod on {_socket_for_messages(args)}: {exc}")
        return EXIT_FAILED


def _socket_for_messages(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from dario.daemon import paths

    return str(paths.socket_path())


if __name__ == "__main__":
    sys.exit(main())
