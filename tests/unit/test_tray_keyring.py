"""The tray's words for an account waiting for a locked keyring (kept apart from the tray's own tests)."""

from __future__ import annotations

from dario.tray.model import TrayHealth, account_state, health, tooltip
from tests.unit.test_tray_model import NOW, account, make_status


def test_tray_says_waiting_for_the_keyring_and_what_to_do() -> None:
    waiting = account("work", "waiting_for_keyring", None)
    assert account_state(waiting, NOW) == "waiting for the keyring"
    status = make_status(waiting)
    assert health(status) is TrayHealth.UNAVAILABLE
    assert tooltip(status, NOW) == "dario: 0 of 1 account ready · unlock the keyring"
