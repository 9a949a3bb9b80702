"""Opt-in lower CPU priority for a worker and its wandb-core (``launch(nice=N)``).

On Linux with ``CONFIG_SCHED_AUTOGROUP`` (``/proc/sys/kernel/sched_autogroup_enabled`` = 1)
the scheduler shares the CPU between *sessions* first, and a process's nice only counts
inside its session.  Every worker is a session of its own (``start_new_session``), and so is
its wandb-core (wandb starts it with ``start_new_session=True``): lowering them against the
Jupyter kernel needs the session's nice (``/proc/<pid>/autogroup``) as well as the process's.

Everything here is best effort: a worker never fails because its priority could not be
lowered; it says so once in its log.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

POLL_SECONDS = 0.2  # pyagent starts a new wandb-core for every run: keep looking for them
BACKSTOP_SECONDS = 2.0  # when the launcher wrapper is in place (a scan of /proc costs ~10 µs a process)
_warned = False


def _note(message: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    print(f"sweep_magic: {message}", file=sys.stderr, flush=True)


def set_autogroup(pid: int | str, nice: int, tries: int = 20) -> bool:
    """Write ``nice`` to ``/proc/<pid>/autogroup``; False (and one note) when it cannot.

    Without CAP_SYS_ADMIN the kernel takes one autogroup write per 100 ms machine-wide
    (EAGAIN otherwise): several agents starting together retry a little."""
    path = f"/proc/{pid}/autogroup"
    if not os.path.exists(path):
        return False  # no autogroup scheduling in this kernel: process nice is all there is
    for _ in range(tries):
        try:
            with open(path, "w") as f:
                f.write(str(nice))
            return True
        except OSError as err:
            if err.errno == errno.EAGAIN:
                time.sleep(0.11)
                continue
            if err.errno == errno.ESRCH:
                return False
            _note(f"could not set the session's nice to {nice} ({path}: {err.strerror}); process nice only")
            return False
    _note(f"could not set the session's nice to {nice} ({path}: busy); process nice only")
    return False


def apply_self(nice: int | None) -> None:
    """Lower this process (and what it starts later, which inherits it) and its session."""
    if not nice:
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current < nice:
            os.nice(nice - current)
    except OSError as err:
        _note(f"could not set nice {nice}: {err.strerror}")
    set_autogroup("self", nice)


def _sidecars(me: int) -> list[int]:
    from sweep_magic import _wandb

    return [proc.pid for proc in _wandb.core_processes_of(me)]


def apply_sidecar(pid: int, nice: int) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        pass  # gone already, or not ours
    set_autogroup(pid, nice)


def _hook_launch(nice: int) -> bool:
    """Lower each wandb-core the moment wandb launches it; False when that hook is not
    available for this wandb (the poller then does it alone)."""
    from sweep_magic import _wandb

    return _wandb.on_core_started(lambda pid: apply_sidecar(pid, nice))


def watch_sidecars(nice: int | None, poll: float = POLL_SECONDS) -> threading.Thread | None:
    """Give every wandb-core this worker starts (pyagent starts one per run) ``nice``, process
    and session: at once through a wrapper on wandb's launcher, and a daemon thread that looks
    for them among our children (every POLL_SECONDS when the wrapper could not be installed,
    else every BACKSTOP_SECONDS)."""
    if not nice:
        return None
    if _hook_launch(nice):
        poll = BACKSTOP_SECONDS
    try:
        import psutil  # noqa: F401
    except ImportError:
        return None
    me = os.getpid()

    def watch() -> None:
        done: set[int] = set()
        while True:
            try:
                pids = _sidecars(me)
                for pid in pids:
                    if pid not in done:
                        apply_sidecar(pid, nice)
                        done.add(pid)
                done &= set(pids)  # forget the dead: pids are reused
            except Exception:  # noqa: BLE001 - never let priority work disturb the agent
                pass
            time.sleep(poll)

    thread = threading.Thread(target=watch, name="sweep-magic-priority", daemon=True)
    thread.start()
    return thread
