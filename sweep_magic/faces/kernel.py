"""Where this code runs, as the faces need to know it: IPython or not, a kernel or a
terminal, a person watching or a headless executor, widgets possible or not.

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


def widgets_available(ip=None) -> bool:
    """True when a widget could reach a frontend: ipywidgets importable and a kernel with comms.

    Terminal IPython and plain Python have no comm channel, so they get the text face.
    (Whether the frontend has the widget manager cannot be known from the kernel.)
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return in_kernel(ip)
