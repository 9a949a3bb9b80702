"""wandb-core, the Go sidecar every wandb process starts: finding it, and hearing of its launch.

Touch points (``surface``): ``core.argv`` (wandb-core's argv: basename ``wandb-core`` and
``--pid <owner>``) and ``core.launcher`` (``service_process._launch_server``, returning an
object whose ``_process.pid`` is the sidecar).  Both are best effort: when they move, the
priority hook falls back to polling and the reaper finds nothing to reap (wandb-core still
exits ~1.5 s after its owner on its own; the test suite's no-orphans check would see it).
"""

from __future__ import annotations

import importlib
import os

LAUNCHER_MODULE = "wandb.sdk.lib.service.service_process"
CORE_BASENAME = "wandb-core"


def core_processes_of(*pids: int) -> list:
    """The wandb-core processes started for any of ``pids`` (psutil.Process objects).

    wandb-core is launched with ``--pid <owner>`` in a session of its own (outside the
    owner's process group) and exits ~1.5 s after its owner: so it is found by its argv,
    not by process group.  If a wandb release changes that argv, nothing is found here and
    the test suite's no-orphans check reports the survivors."""
    import psutil

    owners = set(pids)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and CORE_BASENAME in os.path.basename(cmd[0]) and "--pid" in cmd:
            try:
                if int(cmd[cmd.index("--pid") + 1]) in owners:
                    found.append(proc)
            except (ValueError, IndexError):
                continue
    return found


def on_core_started(callback) -> bool:
    """Call ``callback(pid)`` each time this process launches a wandb-core, from wandb's
    launcher (``wandb.sdk.lib.service.service_process._launch_server``).  Best effort:
    False when wandb's layout is not the one known here (callers then poll with
    ``core_processes_of``)."""
    try:
        service_process = importlib.import_module(LAUNCHER_MODULE)
    except Exception:  # noqa: BLE001 - wandb's launcher moved: the poller is the fallback
        return False
    original = getattr(service_process, "_launch_server", None)
    if original is None:
        return False
    if getattr(original, "_sweep_magic_callbacks", None) is not None:
        original._sweep_magic_callbacks.append(callback)
        return True
    callbacks = [callback]

    def launch_server(*args, **kwargs):
        service = original(*args, **kwargs)
        pid = getattr(getattr(service, "_process", None), "pid", None)
        if pid is not None:
            for cb in list(callbacks):
                try:
                    cb(pid)
                except Exception:  # noqa: BLE001 - the poller finds it
                    pass
        return service

    launch_server._sweep_magic_callbacks = callbacks
    service_process._launch_server = launch_server
    return True
