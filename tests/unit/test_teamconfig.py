"""The team config file (dario.toml): every problem found, each with its line; settings precedence;
`dariod --config FILE --check`; and no flag that takes a secret."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dario.daemon import main as dariod_main
from dario.daemon import teamconfig
from dario.daemon.settings import SettingsError, build_parser, from_namespace, parse_args
from dario.daemon.teamconfig import ConfigError, SecretSpec, check, parse

GOOD = """\
[server]
host = "0.0.0.0"
port = 4000
api_key = { env = "DARIO_TEAM_KEY" }
queue_timeout = 5
allowed_hosts = ["dario.example.com"]
store = "redis://redis:6379/0"
analytics = "postgresql://pg/dario"

[[account]]
alias = "a"
secret = { credential = "anthropic-a" }
preferred = true

[[account]]
alias = "b"
kind = "anthropic-compatible"
base_url = "https://gw.example.com/v1/"
secret = { file = "/etc/dario/keys/b" }
enabled = false

[[account]]
alias = "c"
kind = "anthropic-compatible"
base_url = "http://127.0.0.1:9999"
secret = { env = "C_KEY" }

[[account]]
alias = "d"
secret = { keyring = true }
"""


def problems(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse(text, Path("t.toml"))
    return [(p.line, p.message) for p in info.value.problems]


def one_problem(text: str) -> tuple[int | None, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def account(body: str) -> str:
    return f"[[account]]\nalias = \"x\"\n{body}\n"


def test_a_good_file_reads_into_accounts_and_settings() -> None:
    config = parse(GOOD, Path("t.toml"))
    assert [a.alias for a in config.accounts] == ["a", "b", "c", "d"]
    a, b, c, d = config.accounts
    assert (a.kind, a.base_url, a.secret) == ("anthropic", "https://api.anthropic.com",
                                              SecretSpec("credential", "anthropic-a"))
    assert b.base_url == "https://gw.example.com" and b.enabled is False and dict(b.options) == {}
    assert c.secret == SecretSpec("env", "C_KEY") and d.secret == SecretSpec("keyring", "")
    assert config.preferred == "a"
    assert config.server.settings == {"host": "0.0.0.0", "port": 4000, "queue_timeout": 5.0,
                                      "allowed_hosts": ("dario.example.com",)}
    assert config.server.api_key == SecretSpec("env", "DARIO_TEAM_KEY")
    assert (config.server.store, config.server.analytics_url) == ("redis://redis:6379/0", "postgresql://pg/dario")


def test_an_empty_file_is_a_valid_config_with_nothing_in_it() -> None:
    config = parse("", Path("t.toml"))
    assert config.accounts == () and config.server.settings == {}


@pytest.mark.parametrize(("text", "line", "expected"), [
    ("[server]\nport = \"x\"\n", 2, "port must be a port number 0–65535"),
    ("[server]\nport = 70000\n", 2, "port must be a port number"),
    ("[server]\nverbose = \"yes\"\n", 2, "verbose must be true or false"),
    ("[server]\nqueue_timeout = -1\n", 2, "queue_timeout must be a number of seconds"),
    ("[server]\nallowed_hosts = \"a\"\n", 2, "allowed_hosts must be a list of strings"),
    ("[server]\ncolour = 1\n", 2, "unknown [server] setting 'colour'"),
    ("[server]\nstore = 5\n", 2, "store must be a URL string"),
    ("[server]\nanalytics = true\n", 2, "analytics must be a URL string"),
    ("[server]\napi_key = { keyring = true }\n", 2, "unknown source 'keyring'; use one of: credential, file, env"),
    ("server = 1\n", 1, "server must be a table"),
    ("[accounts]\n", 1, "unknown table or key 'accounts'"),
    ("[server]\nhost = \n", 2, "not valid TOML"),
    (account('secret = { credential = "k" }\nkind = "nope"'), 4, "unknown account kind 'nope'"),
    (account('secret = { credential = "k" }\nkind = "anthropic-compatible"'), 1,
     "an anthropic-compatible account needs base_url"),
    (account('secret = { credential = "k" }\nbase_url = "ftp://x"'), 4, "base_url must be an http(s) URL"),
    (account('secret = { credential = "k" }\nbase_url = "http://example.com"'), 4, "refusing plain http://"),
    (account('secret = { credential = "k" }\nenabled = "no"'), 4, "enabled must be true or false"),
    (account('secret = { credential = "k" }\nregion = 3'), 4, "region must be a non-empty string"),
    (account('secret = { credential = "k" }\ncolour = "red"'), 4, "unknown key 'colour'"),
    (account(""), 1, "secret is required"),
    (account('secret = { credential = "k", env = "V" }'), 3, "exactly one source"),
    (account('secret = {}'), 3, "exactly one source"),
    (account('secret = { vault = "k" }'), 3, "unknown source 'vault'"),
    (account('secret = { credential = "../k" }'), 3, "is not a credential name"),
    (account('secret = { credential = ".." }'), 3, "is not a credential name"),
    (account('secret = { file = "keys/k" }'), 3, "file must be an absolute path"),
    (account('secret = { env = "1BAD" }'), 3, "is not an environment variable name"),
    (account('secret = { env = "" }'), 3, "env must be a non-empty string"),
    (account('secret = { keyring = "yes" }'), 3, "write keyring = true"),
    ('[[account]]\nsecret = { credential = "k" }\n', 1, "alias (the account's name) is required"),
    ('[[account]]\nalias = "no spaces"\nsecret = { credential = "k" }\n', 2, "invalid account name"),
    ("account = 3\n", 1, "account must be an array of tables"),
])
def test_each_problem_names_its_line(text: str, line: int, expected: str) -> None:
    found_line, message = one_problem(text)
    assert expected in message
    assert found_line == line


def test_a_literal_secret_is_refused_and_never_echoed() -> None:
    text = account('secret = "sk-ant-api03-LITERAL"')
    line, message = one_problem(text)
    assert line == 3 and "a key written into this file is refused" in message
    with pytest.raises(ConfigError) as info:
        parse(text, Path("t.toml"))
    report = info.value.report()
    assert "sk-ant-api03-LITERAL" not in report
    assert "secret = <hidden>" in report


def test_a_key_on_a_line_the_parser_stopped_at_is_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        parse("[server]\napi_key = sk-ant-api03-UNQUOTED-KEY\n", Path("t.toml"))
    report = info.value.report()
    assert "t.toml:2: not valid TOML" in report
    assert "UNQUOTED-KEY" not in report


def test_every_problem_is_reported_at_once_with_its_line_shown() -> None:
    text = "[server]\nport = -1\n\n[[account]]\nalias = \"a\"\nsecret = { env = \"A\" }\n\n" \
           "[[account]]\nalias = \"a\"\nsecret = { env = \"B\" }\npreferred = true\n\n" \
           "[[account]]\nalias = \"c\"\nsecret = { env = \"C\" }\npreferred = true\n"
    with pytest.raises(ConfigError) as info:
        parse(text, Path("team.toml"))
    report = info.value.report()
    assert "team.toml:2: port must be a port number" in report
    assert "      2 | port = -1" in report
    assert "team.toml:9: account 'a' is defined twice (first in [[account]] #1)" in report
    assert report.endswith("2 problems in team.toml")


def test_two_preferred_accounts_are_a_problem_on_the_second() -> None:
    text = account('secret = { env = "A" }\npreferred = true') + \
        '[[account]]\nalias = "y"\nsecret = { env = "B" }\npreferred = true\n'
    assert one_problem(text) == (8, "only one account may be preferred; 'x' already is")


# -- settings precedence -----------------------------------------------------------------------


def test_flags_and_environment_win_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DARIO_"):
            monkeypatch.delenv(name)
    file = {"host": "127.0.0.2", "port": 4000, "queue_timeout": 5.0, "verbose": True, "auto_cache": True}
    s = from_namespace(parse_args([]), file)
    assert (s.host, s.port, s.queue_timeout, s.verbose, s.auto_cache) == ("127.0.0.2", 4000, 5.0, True, True)
    monkeypatch.setenv("DARIO_QUEUE_TIMEOUT", "7")
    monkeypatch.setenv("DARIO_VERBOSE", "0")
    monkeypatch.setenv("DARIO_HOST", "127.0.0.3")
    s = from_namespace(parse_args(["--port", "5000"]), file)
    assert (s.host, s.port, s.queue_timeout, s.verbose) == ("127.0.0.3", 5000, 7.0, False)


def test_api_key_from_the_file_guards_a_public_host_and_the_environment_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARIO_API_KEY", raising=False)
    with pytest.raises(SettingsError, match=r"api_key"):
        from_namespace(parse_args([]), {"host": "0.0.0.0"})
    assert from_namespace(parse_args([]), {"host": "0.0.0.0"}, file_api_key="from-file").api_key == "from-file"
    monkeypatch.setenv("DARIO_API_KEY", "from-env")
    assert from_namespace(parse_args([]), {"host": "0.0.0.0"}, file_api_key="from-file").api_key == "from-env"


def test_the_config_file_comes_from_the_flag_or_dario_config() -> None:
    assert teamconfig.config_path(None, {}) is None
    assert teamconfig.config_path(None, {"DARIO_CONFIG": "/etc/dario/dario.toml"}) == Path("/etc/dario/dario.toml")
    assert teamconfig.config_path(Path("/x.toml"), {"DARIO_CONFIG": "/y.toml"}) == Path("/x.toml")


def test_no_dariod_flag_takes_a_secret() -> None:
    secretish = re.compile(r"key|secret|token|password|credential", re.I)
    flags = [opt for action in build_parser()._actions for opt in action.option_strings]
    assert "--config" in flags
    assert [f for f in flags if secretish.search(f)] == []


# -- --check ------------------------------------------------------------------------------------


def test_check_passes_a_good_file_and_notes_each_source_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("C_KEY", "sk-ant-should-not-show")
    path = tmp_path / "dario.toml"
    path.write_text(GOOD)
    report, code = check(path)
    assert code == 0
    assert report.splitlines()[0] == f"{path}: OK (4 accounts, preferred a)"
    assert "a: systemd credential 'anthropic-a': not checked ($CREDENTIALS_DIRECTORY is not set here)" in report
    assert "b: secret file /etc/dario/keys/b: missing here" in report
    assert "c: environment variable C_KEY: set" in report
    assert "[server] api_key: environment variable DARIO_TEAM_KEY: not set here" in report
    assert "sk-ant-should-not-show" not in report


def test_check_refuses_a_secret_file_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-ant-x")
    key.chmod(0o644)
    path = tmp_path / "dario.toml"
    path.write_text(account(f'secret = {{ file = "{key}" }}'))
    report, code = check(path)
    assert code == 2
    assert f"{path}:3: x: secret file {key} is readable by others (mode 0644); refusing to use it. " \
           f"Run: chmod 600 {key}" in report


def test_dariod_check_exits_2_on_problems_and_0_when_fine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = \"x\"\n")
    with pytest.raises(SystemExit) as exit_info:
        dariod_main.settings_and_config(["--config", str(bad), "--check"])
    assert exit_info.value.code == 2
    assert f"{bad}:2: port must be a port number" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text(account('secret = { env = "X" }'))
    with pytest.raises(SystemExit) as exit_info:
        dariod_main.settings_and_config(["--config", str(good), "--check"])
    assert exit_info.value.code == 0
    assert "OK (1 account)" in capsys.readouterr().out


def test_check_without_a_file_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARIO_CONFIG", raising=False)
    with pytest.raises(SettingsError, match="--check needs --config FILE"):
        dariod_main.settings_and_config(["--check"])


def test_a_broken_file_stops_dariod_with_the_report_and_the_check_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = \"x\"\n")
    with pytest.raises(SettingsError) as info:
        dariod_main.settings_and_config(["--config", str(bad)])
    assert f"{bad}:2: port must be a port number" in str(info.value)
    assert f"dariod --config {bad} --check" in str(info.value)


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        teamconfig.load(tmp_path / "absent.toml")


def test_the_files_analytics_url_reaches_settings_and_the_flag_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARIO_ANALYTICS_URL", raising=False)
    path = tmp_path / "dario.toml"
    path.write_text('[server]\nanalytics = "postgresql://dario@pg/team"\n\n' + account('secret = { env = "X" }'))
    settings, team = dariod_main.settings_and_config(["--config", str(path)])
    assert team is not None
    assert settings.analytics_url == "postgresql://dario@pg/team"
    settings, _ = dariod_main.settings_and_config(["--config", str(path), "--analytics", "postgresql://other/db"])
    assert settings.analytics_url == "postgresql://other/db"


def test_declared_limits_in_an_account_are_checked_by_the_same_rule_as_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "dario.toml"
    path.write_text(account('secret = { env = "X" }\nrpm = 40\ninput_tpm = 0'))
    report, code = check(path)
    assert code == 2
    assert "input_tpm must be a whole number from 1 to" in report
    path.write_text(account('secret = { env = "X" }\nrpm = 40'))
    assert teamconfig.load(path).accounts[0].limits == {"rpm": 40}
