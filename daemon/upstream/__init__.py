"""Upstream: how dario talks to a provider.

The HTTP/1.1 client (h11, keep-alive, TLS, proxies), the SSE splitter, and one module per
upstream kind (`anthropic`). May import only the shared modules; imports nothing from the
rooms above it.
"""
