"""Process helpers for the supervisor: spawning a worker, signalling its group, naming an
exit, reaping wandb-core sidecars, reporting a run lost with its agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from sweep_magic import _env

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


def sidecars_of(*pids: int) -> list:
    """wandb-core processes started for any of ``pids``: they run in a session of their own with
    ``--pid <owner>`` (outside the worker's group) and exit ~1.5 s after their owner."""
    import psutil

    owners = set(pids)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and "wandb-core" in os.path.basename(cmd[0]) and "--pid" in cmd:
            try:
                if int(cmd[cmd.index("--pid") + 1]) in owners:
                    found.append(proc)
            except (ValueError, IndexError):
                continue
    return found


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and the wandb-core sidecars of its members, then reap it.

    For tests and benchmarks that start plain agents in a session of their own."""
    import psutil

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


def spawn_worker(spec, log_path: str, spec_dir: str, header: str) -> tuple[subprocess.Popen, int]:
    """Start ``python -m sweep_magic.worker``; returns the process (with ``_events_fd``, the
    read end of its events pipe, and ``_spec_path``) and the lifeline's write end."""
    import cloudpickle

    fd, spec_path = tempfile.mkstemp(prefix=".spec-", dir=spec_dir)  # 0600: it holds the API key
    with os.fdopen(fd, "wb") as f:
        cloudpickle.dump(spec, f)
    events_r, events_w = os.pipe()
    life_r, life_w = os.pipe()  # only we hold the write end: its EOF is our death
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(log_fd, (header + "\n").encode())
        cmd = [
            sys.executable, "-m", "sweep_magic.worker", "--spec", spec_path,
            "--events-fd", str(events_w), "--lifeline-fd", str(life_r),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=_env.child_env(os.environ, spec),
            pass_fds=(events_w, life_r),
            start_new_session=True,  # its own process group: signals reach the user's children too
        )
    except BaseException:
        for x in (events_r, life_w):
            os.close(x)
        unlink(spec_path)
        raise
    finally:
        for x in (events_w, life_r, log_fd):
            os.close(x)
    proc._events_fd = events_r
    proc._spec_path = spec_path
    return proc, life_w


def report_lost_run(spec, run_id: str, state: str, code: int) -> None:
    """Tell the embedded server at once that a run died with its agent, so the sweep does
    not wait for the agent's heartbeats to time out before it can finish."""
    from sweep_magic import _hooks

    key = spec.env.get("WANDB_API_KEY", "")
    try:
        _hooks.post(spec.report_url, key, f"runs/{run_id}/finish", {"exit_code": code, "state": state, "summary": {}})
    except Exception:
        pass  # the server settles it from missed heartbeats instead


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
