"""The reliability suite's profile and reporting.

Profiles: ``short`` (the default, for CI: 2,000 requests under load) and ``long`` (10,000),
chosen with ``DARIO_RELIABILITY=long`` or ``--long`` (the option exists when pytest is started on
this folder, e.g. ``python -m pytest tests/reliability --long``; the environment variable works
from anywhere). Every test here carries the ``reliability`` marker, so ``-m 'not reliability'``
leaves the suite out of a quick run.

Summary tables that tests register with ``report`` are printed at the end of the run (also with
``-q``) and written by the tests themselves under tests/artifacts/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import harness, load

_HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dario reliability")
    group.addoption("--long", action="store_true", default=False,
                    help="run the reliability suite's long profile (10,000 requests under load)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: dario's fault, load, crash and abuse suite (tests/reliability)")


def is_long(config: pytest.Config) -> bool:
    return bool(config.getoption("--long", default=False)) or os.environ.get("DARIO_RELIABILITY", "") == "long"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.reliability)
        if getattr(getattr(item, "module", None), "RELIABILITY_LOAD", False):
            # The run under load happens in the first test's setup and takes minutes in the long
            # profile; the project default (120 s per test) would cut it short.
            item.add_marker(pytest.mark.timeout(1800 if is_long(config) else 600))


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> load.Profile:
    return load.LONG if is_long(pytestconfig) else load.SHORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for table in harness.TABLES:
        terminalreporter.write_sep("=", "dario reliability summary")
        terminalreporter.write(table)


# -- processes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_fake() -> Iterator[load.BigLogFake]:
    """A fake upstream of this module's own, with a request log large enough for a whole run."""
    fake = load.BigLogFake().start()
    try:
        yield fake
    finally:
        fake.stop()
