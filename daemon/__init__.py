"""dario daemon: everything that runs inside dariod.

Subpackages are rooms (edge, dialects, routing, upstream, accounts, recording, control), each
saying in its `__init__` what it holds and may import; the modules at this level are shared by
all of them and import no room. The rules are import-linter contracts in pyproject.toml, checked
by `lint-imports` in tests/run; README.md's Architecture section draws the map.
"""

__version__ = "0.1.0"
