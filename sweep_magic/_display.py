"""Where a session is being shown, and how: widget panel, live text in a cell, or a terminal.

The choices, in order:
  * a kernel with a live frontend and ipywidgets → ``sweep_magic.panel.SessionPanel``;
  * a kernel without one (nbclient, papermill, nbconvert: headless) or ``widget=False``
    → text in a ``display(..., display_id=True)`` handle, updated in place;
  * terminal IPython or plain Python → new lines written to the terminal.

"Headless" is read from the request being executed: nbclient (and so papermill,
nbconvert and ``jupyter execute``) sends ``execute_request`` with
``allow_stdin=False``; JupyterLab, Notebook, VS Code and ``jupyter console`` send
``True`` because they can answer ``input()``.  ipykernel keeps that flag for the
running cell as ``kernel._allow_stdin``.  ``SWEEP_MAGIC_WAIT=1|0`` overrides it.
"""

from __future__ import annotations

import os
import sys


def shell():
    """The running IPython shell, or None (plain Python, or IPython not imported)."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def in_kernel(ip=None) -> bool:
    ip = ip if ip is not None else shell()
    return ip is not None and getattr(ip, "kernel", None) is not None


def headless(ip=None) -> bool:
    """True when the cell runs with no person watching (nbclient, papermill, CI)."""
    forced = os.environ.get("SWEEP_MAGIC_WAIT", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    ip = ip if ip is not None else shell()
    kernel = getattr(ip, "kernel", None) if ip is not None else None
    if kernel is None:
        return False  # terminal IPython: someone typed the line
    return getattr(kernel, "_allow_stdin", True) is False


def show(session, *, widget: bool | None = None):
    """Show ``session`` in the best face available; returns the view (panel or ``TextView``)."""
    ip = shell()
    if widget is not False and in_kernel(ip) and not headless(ip):
        panel = _panel(session)
        if panel is not None:
            from IPython.display import display

            display(panel)
            return panel
    return show_text(session, ip)


def show_text(session, ip=None):
    from sweep_magic.text import TextView

    ip = ip if ip is not None else shell()
    if in_kernel(ip):
        from IPython.display import display

        handle = display({"text/plain": "starting…"}, raw=True, display_id=True)

        def sink(text: str) -> None:
            handle.update({"text/plain": text}, raw=True)

        return TextView(session, sink, whole=True).start()
    stream = sys.stdout

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return TextView(session, write, whole=False).start()


def _panel(session):
    """The panel engineer's widget, or None (ipywidgets missing, panel not importable or broken)."""
    try:
        from sweep_magic.panel import panel_for

        return panel_for(session)  # one live panel per session, however often it is shown
    except Exception:  # the text face is always there to fall back on
        return None
