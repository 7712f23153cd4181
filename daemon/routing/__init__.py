"""Routing: which account serves a request, and the relay that carries it there.

The pool (headroom index, cooldowns, the FIFO wait queue) and the store holding the state it decides
from (store.py: in memory; a shared store is an added module), prompt-cache affinity (affinity.py:
the prefix keys of a request, and which account holds them), rate-limit header parsing, the
relay (failover before the first byte, the `message_start` hold-back), and the model catalog
and aliases. May import: upstream and the shared modules; never the edge or a dialect.
"""
