"""Support for sweep_magic's own tests and benchmarks (not used by the product).

``reset()`` stops and forgets this process's sessions, the shared embedded server and the
panels' caches, so each test starts clean without reaching into private globals;
``kill_group`` and ``sidecars_of`` clean up plain processes a test started itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from sweep_magic._wandb import core_processes_of as sidecars_of

__all__ = ["reset", "kill_group", "sidecars_of"]


def reset() -> None:
    """Stop every session and the shared server; forget panels and cached inventories."""
    api = sys.modules.get("sweep_magic.api")
    if api is not None:
        api.stop_all()
        with api._sessions_lock:
            api._sessions.clear()
    server = sys.modules.get("sweep_magic.server")
    if server is not None:
        with server._shared_lock:
            shared, server._shared = server._shared, None
        if shared is not None:
            shared.stop()
    panel = sys.modules.get("sweep_magic.faces.panel")
    if panel is not None:
        with panel._PANELS_LOCK:
            panels = list(panel._PANELS.values())
            panel._PANELS.clear()
        for p in panels:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - a panel that fails to close must not stop the reset
                pass
        with panel._INVENTORY_LOCK:
            panel._INVENTORY_CACHE[:] = [float("-inf"), []]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and the wandb-core sidecars of its members, then reap it
    (for plain agents a test started in a session of their own)."""
    import psutil

    from sweep_magic.agents.local import signal_group

    try:
        members = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid]
    except psutil.Error:
        members = [proc.pid]
    cores = sidecars_of(*members)  # found before the kill: a dead owner's --pid still names it
    signal_group(proc.pid, signal.SIGKILL)
    for core in cores:
        try:
            core.kill()
        except psutil.Error:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
