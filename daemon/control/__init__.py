"""Control: the local control API. `api` is the contract (data shapes and paths, imported by
dario-ctl and the tray; it depends on nothing, a contract in pyproject.toml); `server` serves it
on the Unix socket."""
