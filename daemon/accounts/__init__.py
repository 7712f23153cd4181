"""Accounts: the upstream accounts and what can be done to them.

`service` (log in, log out, enable, prefer, refresh, and reading keys from the keyring; raises
the domain errors of `errors`), `registry` (metadata on disk), `secrets` (the OS keyring) and
`clientkeys` (client keys, stored hashed). The pool and the upstream's key check reach the
service as interfaces. May import only the shared modules and the control API contract.
"""
