"""Dialects: one adapter per API dialect that clients speak.

`anthropic` passes Anthropic Messages through; `openai/` translates Chat Completions to
Anthropic Messages and back (pure translators plus one sink). A dialect parses a request into
an `exchange.Incoming`, writes answers through its `Sink`, and shapes errors its own way;
`base.Dialect` is that interface, and `model` the one rule (forced model, then aliases) both use.
May import: routing (the model table), the upstream SSE parser, and the shared modules.
"""
