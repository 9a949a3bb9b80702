"""Where a session is being shown, and how: widget panel, live text in a cell, or a terminal.

The choices, in order:
  * a kernel with a live frontend and ipywidgets → ``faces.panel.SessionPanel``;
  * a kernel without one (nbclient, papermill, nbconvert: headless) or ``widget=False``
    → text in a ``display(..., display_id=True)`` handle, updated in place;
  * terminal IPython or plain Python → new lines written to the terminal.

How the choice is detected: ``faces.kernel``.
"""

from __future__ import annotations

import sys

from sweep_magic.faces.kernel import headless, in_kernel, shell


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
    from sweep_magic.faces.text import TextView

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


def render(snapshot) -> str:
    """The text face of a snapshot (``print(session)``, ``%sweep_status``)."""
    from sweep_magic.faces.text import render as render_text

    return render_text(snapshot)


def _panel(session):
    """The session's widget panel, or None (ipywidgets missing, panel not importable or broken)."""
    try:
        from sweep_magic.faces.panel import panel_for

        return panel_for(session)  # one live panel per session, however often it is shown
    except Exception:  # noqa: BLE001 - the text face is always there to fall back on
        return None
