"""Upstream: how dario talks to a provider.

`base` is the seam: the `Upstream` protocol (build and sign a request, send it, classify the
answer, read its rate limits, turn its body or stream into Anthropic events), with one module
per upstream kind behind it (`anthropic`). Beside it: `errors` (upstream error bodies, parsed
once), `ratelimits` (rate-limit headers → the windows the pool routes on), the HTTP/1.1
client (h11, keep-alive, TLS, proxies) and the SSE splitter. May import only the shared
modules; imports nothing from the rooms above it.
"""
