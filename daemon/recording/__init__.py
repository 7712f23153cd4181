"""Recording: what is kept about finished exchanges.

Usage analytics (SQLite), Prometheus metrics, the price table and client families. Recorders
read `exchange.Outcome`; they never call into the relay or the pool.
May import: `exchange` and the shared modules only (a contract in pyproject.toml).
"""
