"""Every pool health and account status the daemon can report is one its published contracts allow."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from dario.daemon.control.api import AccountStatus, PoolHealth
from dario.daemon.edge.openapi import openapi_document
from dario.daemon.recording.metrics import STATUSES

DASHBOARD = Path(__file__).resolve().parents[2] / "daemon" / "edge" / "static" / "dashboard.js"


def _health_enums(node: Any) -> list[list[str]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("health", "pool") and isinstance(value, dict) and "enum" in value:
                found.append(value["enum"])
            else:
                found.extend(_health_enums(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_health_enums(item))
    return found


def test_openapi_allows_every_pool_health() -> None:
    enums = _health_enums(openapi_document("test"))
    assert len(enums) >= 2
    for enum in enums:
        assert set(enum) == set(get_args(PoolHealth))
    assert "waiting_for_keyring" in get_args(PoolHealth) and "needs_login" in get_args(PoolHealth)


def test_metrics_and_dashboard_know_every_account_status() -> None:
    assert set(STATUSES) == set(get_args(AccountStatus))
    assert '"waiting_for_keyring"' in DASHBOARD.read_text()
