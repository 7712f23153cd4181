"""Recording: what is kept about finished exchanges.

`recorder` holds the observers of a finished exchange (usage analytics in SQLite, Prometheus
metrics, the --verbose access log); the price table and client families serve them. Recorders
read `exchange.Outcome`; they never call into the relay or the pool.
May import: `exchange` and the shared modules only (a contract in pyproject.toml).
"""
