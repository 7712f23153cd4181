"""Upstream adapters: one module per kind of upstream."""
