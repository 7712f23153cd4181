"""What can go wrong with an account operation, as domain errors.

The account service raises these and nothing else; it knows no HTTP. The control server maps
each class to a status and an error type in one table, the way Tailscale's LocalAPI handlers
only encode results. Every message says what happened and what to do next, and never holds a
secret.
"""

from __future__ import annotations


class AccountError(Exception):
    """An account operation that failed; `str(exc)` is the message for the user."""


class InvalidAccount(AccountError, ValueError):
    """Bad input: an alias, kind, base URL or key that cannot be used as given."""


class AccountNotFound(AccountError, LookupError):
    """No account of that name."""


class KeyRejected(AccountError):
    """The upstream refused the key (401/403) while checking it; nothing was stored."""


class UpstreamRefused(AccountError):
    """The upstream answered an error other than a rejection while checking a key."""


class UpstreamUnreachable(AccountError):
    """The upstream could not be reached; `cause` names the failure's class (for the pool's reason)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class KeyringUnavailable(AccountError):
    """No usable keyring backend, or it did not answer; the message names the fix, `short` what went wrong."""

    def __init__(self, message: str, short: str | None = None) -> None:
        super().__init__(message)
        self.short = short or message


class ManagedByConfig(AccountError):
    """The account is defined in the team config file: change it there, not with login/logout."""
