"""dario-tray: the tray applet, a plain client of the control API."""
