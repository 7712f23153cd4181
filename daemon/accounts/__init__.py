"""Accounts: the registry of upstream accounts (metadata on disk), their secrets in the OS
keyring, and client keys (stored hashed). May import only the shared modules."""
