"""A small window that shows text the user can select and copy: `python -m dario.tray.textwindow TITLE`.

The tray uses it when no clipboard tool exists: an autostarted tray has no terminal, so stderr
is invisible, and a notification truncates long text (or no notification server runs). A process
of its own, because the tray's toolkit loop belongs to pystray. The text comes on stdin.
GTK 3 where PyGObject is installed (it is with the tray extra on Linux), else tkinter.
"""

from __future__ import annotations

import sys
from typing import Any


def show_gtk(title: str, text: str) -> bool:
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        gi.require_version("Gdk", "3.0")
        from gi.repository import Gdk, Gtk
    except (ImportError, ValueError):
        return False
    if not Gtk.init_check(sys.argv)[0]:
        return False
    window: Any = Gtk.Window(title=title)
    window.set_default_size(640, 200)
    window.connect("destroy", Gtk.main_quit)
    view: Any = Gtk.TextView()
    view.set_editable(False)
    view.set_monospace(True)
    view.get_buffer().set_text(text)
    copy: Any = Gtk.Button(label="Copy")

    def on_copy(_button: Any) -> None:
        # The clipboard lives as long as this window: enough to paste while it is open.
        clipboard = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD)
        clipboard.set_text(text, -1)
        clipboard.store()

    copy.connect("clicked", on_copy)
    close: Any = Gtk.Button(label="Close")
    close.connect("clicked", lambda _b: window.destroy())
    buttons: Any = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    buttons.pack_end(close, False, False, 0)
    buttons.pack_end(copy, False, False, 0)
    box: Any = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
    box.set_border_width(8)
    box.pack_start(view, True, True, 0)
    box.pack_start(buttons, False, False, 0)
    window.add(box)
    window.show_all()
    Gtk.main()
    return True


def show_tk(title: str, text: str) -> bool:
    try:
        import tkinter
    except ImportError:
        return False
    try:
        root = tkinter.Tk()
    except tkinter.TclError:  # no display
        return False
    root.title(title)
    widget = tkinter.Text(root, height=text.count("\n") + 1, width=90)
    widget.insert("1.0", text)
    widget.configure(state="disabled")  # still selectable, no longer editable
    widget.pack(fill="both", expand=True, padx=8, pady=8)
    tkinter.Button(root, text="Close", command=root.destroy).pack(pady=(0, 8))
    root.mainloop()
    return True


def main(argv: list[str]) -> int:
    title = argv[0] if argv else "dario"
    text = sys.stdin.read()
    if show_gtk(title, text) or show_tk(title, text):
        return 0
    print(f"dario-tray: cannot open a window (no GTK 3 or tkinter); the text is:\n{text}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
