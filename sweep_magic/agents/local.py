"""The local backend: each agent is ``python -m sweep_magic.worker`` on this machine.

    kernel (supervisor)                       worker process group (start_new_session)
    spec → 0600 file ───────────────────────► --spec PATH (read and deleted at once)
    events pipe read end ◄─────────────────── --events-fd N (JSON lines)
    lifeline write end (only we hold it) ───► --lifeline-fd M (EOF = the kernel is gone)
    log file ◄─────────────────────────────── stdout/stderr

It also owns how a worker's leftovers (the group, the wandb-core sidecars) are reaped;
how a process's end is named (``describe_exit``) lives in ``protocol.exits``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from sweep_magic import _wandb
from sweep_magic.protocol import env as child_env
from sweep_magic.protocol import sidechannel
from sweep_magic.protocol.exits import describe_exit  # noqa: F401  (re-exported: the supervisor's name for it)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def reap_sidecars(pid: int, grace: float = 3.0) -> None:
    """Wait up to ``grace`` seconds for the dead worker's wandb-core to exit; kill what is left."""
    import psutil

    procs = _wandb.core_processes_of(pid)
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


class LocalAgentProcess:
    """One worker process on this machine (see the module diagram); ``proc`` is a ``Popen``
    or a ``warm.ZygoteProcess`` (anything with ``pid``, ``wait()`` and ``returncode``)."""

    node = ""

    def __init__(self, proc, spec, events_fd: int, lifeline_fd: int, spec_path: str):
        self._proc = proc
        self._spec = spec
        self._events_fd = events_fd
        self._lifeline = lifeline_fd
        self._spec_path = spec_path
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def events(self):
        with os.fdopen(self._events_fd, "rb") as stream:
            yield from stream

    def signal(self, sig: int) -> bool:
        # A warm-started worker makes its own group a moment after the fork: until then,
        # the process alone.
        return signal_group(self.pid, sig) or _signal_pid(self.pid, sig)

    def drain(self) -> None:
        _signal_pid(self.pid, signal.SIGUSR1)

    def wait(self) -> int:
        return self._proc.wait()

    def cleanup(self) -> None:
        # The user's own children (data loaders, ...) die with the agent.
        signal_group(self.pid, signal.SIGKILL)
        _unlink(self._spec_path)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        reap_sidecars(self.pid)

    def report_lost_run(self, run_id: str, state: str, code: int) -> None:
        report_lost_run(self._spec, run_id, state, code)


class LocalBackend:
    """Start workers on this machine, their spec files in ``spec_dir`` (0700).  ``warm``: fork
    them from this process's zygote when it is ready (else, or with False, a fresh interpreter)."""

    def __init__(self, spec_dir: str, *, warm: bool = True):
        self._spec_dir = spec_dir
        self._warm = warm

    def start(self, spec, *, log_path: str, header: str) -> LocalAgentProcess:
        import cloudpickle

        fd, spec_path = tempfile.mkstemp(prefix=".spec-", dir=self._spec_dir)  # 0600: it may hold a key
        with os.fdopen(fd, "wb") as f:
            cloudpickle.dump(spec, f)
        env = child_env.child_env(os.environ, spec)
        events_r, events_w = os.pipe()
        life_r, life_w = os.pipe()  # only we hold the write end: its EOF is our death
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(log_fd, (header + "\n").encode())
            proc = (self._warm and _start_warm(spec_path, env, events_w, life_r, log_fd)) or _start_cold(
                spec_path, env, events_w, life_r, log_fd)
        except BaseException:
            for x in (events_r, life_w):
                os.close(x)
            _unlink(spec_path)
            raise
        finally:
            for x in (events_w, life_r, log_fd):
                os.close(x)
        return LocalAgentProcess(proc, spec, events_r, life_w, spec_path)


def _start_cold(spec_path: str, env: dict, events_w: int, life_r: int, log_fd: int) -> subprocess.Popen:
    """A fresh interpreter: ``python -m sweep_magic.worker``."""
    cmd = [
        sys.executable, "-m", "sweep_magic.worker", "--spec", spec_path,
        "--events-fd", str(events_w), "--lifeline-fd", str(life_r),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        env=env,
        pass_fds=(events_w, life_r),
        start_new_session=True,  # its own process group: signals reach the user's children too
    )


def _start_warm(spec_path: str, env: dict, events_w: int, life_r: int, log_fd: int):
    """A fork of this kernel's zygote, or None (then the caller starts a fresh interpreter)."""
    from sweep_magic.agents import warm

    zygote = warm.zygote_for(env)
    if zygote is None:
        return None
    try:
        return warm.ZygoteProcess(zygote, zygote.fork(spec_path, env, os.getcwd(), events_w, life_r, log_fd))
    except OSError:
        return None


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def report_lost_run(spec, run_id: str, state: str, code: int) -> None:
    """Tell the embedded server at once that a run died with its agent, so the sweep does
    not wait for the agent's heartbeats to time out before it can finish."""
    if not spec.report_url:
        return
    try:
        sidechannel.report_finish(spec.report_url, spec.env.get("WANDB_API_KEY", ""), run_id, state=state, exit_code=code)
    except Exception:  # noqa: BLE001 - best effort: the server settles the run from missed heartbeats
        pass  # the server settles it from missed heartbeats instead


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
