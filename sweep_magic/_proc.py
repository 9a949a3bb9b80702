"""Process helpers for the supervisor: signalling a group, naming an exit, reaping sidecars."""

from __future__ import annotations

import os
import signal
import time

_HINTS = {
    "SIGKILL": "often the out-of-memory killer",
    "SIGSEGV": "a crash in native code",
    "SIGABRT": "aborted",
    "SIGBUS": "a crash in native code",
}


def _signal_name(num: int) -> str | None:
    try:
        return signal.Signals(num).name
    except ValueError:
        return None


def describe_exit(code: int | None) -> str:
    """A short human reason for a process's exit status ("killed by SIGABRT", ...)."""
    if code is None:
        return "still running"
    if code == 0:
        return "exited"
    if code < 0:
        name = _signal_name(-code) or f"signal {-code}"
        return f"killed by {name}"
    if code > 128 and _signal_name(code - 128):
        # A shell or a runtime exiting "as if" killed: 137 is the classic OOM-killer report.
        name = _signal_name(code - 128)
        hint = _HINTS.get(name)
        return f"exit code {code} ({name}{', ' + hint if hint else ''})"
    return f"exit code {code}"


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def sidecars_of(pid: int) -> list:
    """wandb-core processes started for ``pid``: they run in a session of their own with
    ``--pid <owner>`` (outside the worker's group) and exit ~1.5 s after their owner."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and "wandb-core" in os.path.basename(cmd[0]) and "--pid" in cmd:
            try:
                if int(cmd[cmd.index("--pid") + 1]) == pid:
                    found.append(proc)
            except (ValueError, IndexError):
                continue
    return found


def reap_sidecars(pid: int, grace: float = 3.0) -> None:
    """Wait up to ``grace`` seconds for the dead worker's wandb-core to exit; kill what is left."""
    import psutil

    procs = sidecars_of(pid)
    if not procs:
        return
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2)


def wait_until(predicate, timeout: float | None, step: float = 0.05) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not predicate():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
