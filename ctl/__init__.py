"""dario-ctl: the control client library and CLI."""
