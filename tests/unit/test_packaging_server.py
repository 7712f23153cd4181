"""packaging/ for servers, checked without containers: the systemd system unit (with
`systemd-analyze verify` where it exists), the example dario.toml (passes the checker), the
Containerfile, and the compose file (parsed; every service, secret, config and file it names exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dario.daemon import teamconfig

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "packaging" / "server"
CONTAINER = REPO / "packaging" / "container" / "Containerfile"
COMPOSE = REPO / "packaging" / "compose"


def unit() -> dict[str, list[tuple[str, str]]]:
    """The unit's sections as (key, value) lists: systemd keys repeat (LoadCredential=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in (SERVER / "dario.service").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[] ")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_system_unit_runs_dariod_as_a_dynamic_user_with_credentials_and_hardening() -> None:
    service = unit()["Service"]
    one = {k: v for k, v in service}
    assert one["DynamicUser"] == "yes"
    assert one["ExecStart"].split()[:3] == ["/usr/bin/dariod", "--config", "%E/dario/dario.toml"]
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one[key] == "dario"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes"}.items():
        assert one[key] == value, key
    assert one["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"]
    assert "PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring" in values(service, "Environment")
    assert unit()["Install"] == [("WantedBy", "multi-user.target")]


def test_every_credential_the_example_config_names_is_loaded_by_the_unit() -> None:
    config = teamconfig.load(SERVER / "dario.toml.example")
    named = {a.secret.value for a in config.accounts if a.secret is not None and a.secret.kind == "credential"}
    assert config.server.api_key is not None and config.server.api_key.kind == "credential"
    named.add(config.server.api_key.value)
    loaded = {v.split(":", 1)[0] for v in values(unit()["Service"], "LoadCredential")}
    assert named == loaded


def test_the_example_config_passes_the_checker() -> None:
    report, code = teamconfig.check(SERVER / "dario.toml.example")
    assert code == 0, report
    assert "OK (5 accounts, preferred team-main)" in report
    assert "aws-main: the AWS default credential chain: by reference" in report


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this Python (the unit is otherwise unchanged).
    text = (SERVER / "dario.service").read_text().replace("/usr/bin/dariod", sys.executable)
    (tmp_path / "dario.service").write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "dario.service")],
                            capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines()
             if "dario.service" in ln and "Failed to" not in ln]
    assert result.returncode == 0 and lines == [], result.stdout + result.stderr


def test_containerfile_installs_the_team_extra_as_a_non_root_user() -> None:
    text = CONTAINER.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0].startswith("FROM ") and "python:3" in lines[0] and "-slim" in lines[0]
    assert "pip install --no-cache-dir '/src[team]'" in text
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["dariod", "--config", "/etc/dario/dario.toml"]' in lines
    assert "CREDENTIALS_DIRECTORY=/run/secrets" in text
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in copied.split():
            assert (REPO / name).exists(), name


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def test_compose_has_redis_postgres_two_dariods_and_a_load_balancer() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "dariod-1", "dariod-2", "lb"} <= set(services)
    for name in ("dariod-1", "dariod-2"):
        svc = services[name]
        assert svc["build"]["dockerfile"] == "packaging/container/Containerfile"
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == CONTAINER
        assert set(svc["depends_on"]) == {"redis", "postgres"}
        assert "dario-api-key" in svc["secrets"]
    assert services["dariod-1"]["volumes"] != services["dariod-2"]["volumes"]  # each its own state


def test_compose_references_resolve() -> None:
    data = compose()
    services = data["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for secret in svc.get("secrets", []):
            assert secret in data["secrets"], f"{name} uses undeclared secret {secret}"
        for config in svc.get("configs", []):
            assert config["source"] in data["configs"], f"{name} uses undeclared config {config}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in data["volumes"], f"{name}: volume {source}"
    for config in data["configs"].values():
        assert (COMPOSE / config["file"]).is_file(), config
    for secret in data["secrets"].values():
        # Made by the operator, never committed: the folder ignores everything but its .gitignore.
        assert Path(secret["file"]).parent == Path("secrets")
    assert "*" in (COMPOSE / "secrets" / ".gitignore").read_text().split()


def test_compose_config_names_the_compose_secrets_and_passes_the_checker() -> None:
    report, code = teamconfig.check(COMPOSE / "dario.toml")
    assert code == 0, report
    config = teamconfig.load(COMPOSE / "dario.toml")
    declared = set(compose()["secrets"])
    assert config.server.api_key is not None and config.server.api_key.value in declared
    assert {a.secret.value for a in config.accounts} <= declared
    assert config.server.store is not None and config.server.store.startswith("redis://redis:")
    assert config.server.analytics_url is not None and "@postgres:" in config.server.analytics_url


def test_nginx_streams_without_buffering_to_both_instances() -> None:
    text = (COMPOSE / "nginx.conf").read_text()
    directives = {ln.split("#")[0].strip().rstrip(";") for ln in text.splitlines()}
    assert "proxy_buffering off" in directives
    assert "proxy_http_version 1.1" in directives
    assert {"server dariod-1:3456", "server dariod-2:3456"} <= {d.split(" max_fails")[0] for d in directives}
    lb = compose()["services"]["lb"]
    assert next(c for c in lb["configs"] if c["source"] == "nginx-conf")["target"].endswith(".conf")
