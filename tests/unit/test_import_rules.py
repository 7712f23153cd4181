"""The import rules in pyproject.toml catch what they are meant to catch.

`lint-imports` (run by tests/run) checks the real tree; these tests plant one forbidden import in
a copy of the real import graph and check that the named contract breaks, so a contract that was
mistyped (a wrong module name, a layer order reversed) cannot pass silently.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter import Contract
from importlinter.configuration import configure
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_TYPES: dict[str, type[Contract]] = {"layers": LayersContract, "forbidden": ForbiddenContract}


def _config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return config


def _contract(contract_id: str) -> Contract:
    config = _config()
    session = {key: value for key, value in config.items() if key != "contracts"}
    for options in config["contracts"]:
        if options.get("id") == contract_id:
            options = dict(options)
            kind = options.pop("type")
            name = options.pop("name")
            options.pop("id")
            return CONTRACT_TYPES[kind](name=name, session_options=session, contract_options=options)
    raise AssertionError(f"no contract with id {contract_id!r} in pyproject.toml")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    configure()  # what the lint-imports command does first: the contracts read its timer
    return grimp.build_graph(*_config()["root_packages"])


def _kept(contract_id: str, graph: grimp.ImportGraph, *planted: tuple[str, str]) -> bool:
    g = copy.deepcopy(graph)
    for importer, imported in planted:
        assert importer in g.modules and imported in g.modules, (importer, imported)
        g.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    return bool(_contract(contract_id).check(g, verbose=False).kept)


PLANTED = [
    ("apps", [("dario.ctl.views", "dario.tray.model")]),
    ("apps", [("dario.daemon.routing.pool", "dario.ctl.client")]),
    ("request-path", [("dario.daemon.upstream.anthropic", "dario.daemon.routing.pool")]),
    ("request-path", [("dario.daemon.routing.relay", "dario.daemon.dialects.anthropic")]),
    ("request-path", [("dario.daemon.dialects.anthropic", "dario.daemon.edge.public")]),
    # Indirect: upstream -> a shared module -> edge is as bad as upstream -> edge.
    ("request-path", [("dario.daemon.upstream.httpclient", "dario.daemon.settings"),
                      ("dario.daemon.settings", "dario.daemon.edge.public")]),
    ("recording", [("dario.daemon.recording.analytics", "dario.daemon.routing.pool")]),
    ("recording", [("dario.daemon.recording.metrics", "dario.daemon.upstream.httpclient")]),
    ("recording", [("dario.daemon.recording.analytics", "dario.daemon.accounts.registry")]),
    ("control-api", [("dario.daemon.control.api", "dario.daemon.paths")]),
    ("control-api", [("dario.daemon.control.api", "dario.daemon.control.server")]),
    ("exchange", [("dario.daemon.exchange", "dario.daemon.routing.pool")]),
    ("exchange", [("dario.daemon.exchange", "dario.daemon.redact")]),
    ("accounts", [("dario.daemon.accounts.registry", "dario.daemon.routing.pool")]),
    ("accounts", [("dario.daemon.accounts.clientkeys", "dario.daemon.edge.guard")]),
    ("shared", [("dario.daemon.errors", "dario.daemon.routing.pool")]),
]


@pytest.mark.parametrize(("contract_id", "planted"), PLANTED)
def test_a_planted_forbidden_import_breaks_the_contract(
        graph: grimp.ImportGraph, contract_id: str, planted: list[tuple[str, str]]) -> None:
    assert _kept(contract_id, graph, *planted) is False


@pytest.mark.parametrize(("contract_id", "planted"), [
    ("apps", [("dario.tray.model", "dario.daemon.routing.pool")]),  # higher may import lower
    ("request-path", [("dario.daemon.edge.public", "dario.daemon.upstream.httpclient")]),
    ("recording", [("dario.daemon.recording.analytics", "dario.daemon.exchange")]),
    ("accounts", [("dario.daemon.accounts.registry", "dario.daemon.redact")]),
])
def test_an_allowed_import_keeps_the_contract(
        graph: grimp.ImportGraph, contract_id: str, planted: list[tuple[str, str]]) -> None:
    assert _kept(contract_id, graph, *planted) is True


def test_the_test_command_lints_imports_with_and_without_dbus() -> None:
    lines = (ROOT / "tests" / "run").read_text().splitlines()
    lint_lines = [n for n, line in enumerate(lines) if "lint-imports" in line]
    assert len(lint_lines) == 2, "tests/run: both branches (with and without D-Bus) run lint-imports"
    # After ruff and before mypy, in the same && chain.
    for n in lint_lines:
        assert "ruff check" in lines[n] and "typecheck.sh" in lines[n + 1]
