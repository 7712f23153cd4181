"""dario daemon: everything that runs inside dariod."""

__version__ = "0.1.0"
