"""Warm starts: workers forked from a zygote that imported wandb once, instead of fresh
interpreters that each import it (~1 s of CPU per agent, paid N times at launch).

One zygote per kernel (``python -m sweep_magic.worker.zygote``), started in the background
by ``warm_up()`` (at ``%load_ext`` and on first use) and shared by every session.  A worker
forked from it is what ``python -m sweep_magic.worker`` would be (own session and group,
log file, environment, lifeline); ``ZygoteProcess`` is the backend's ``AgentProcess`` for
it.  The zygote is only an accelerator: when it is off (``SWEEP_MAGIC_WARM=0``), not ready
in time, broken, or the agent's environment changes what the dynamic loader or the
interpreter read at start-up, the local backend starts a fresh interpreter as before.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

# Read once when a process starts: a fork of a zygote started with other values would differ
# from a fresh interpreter, so an agent whose env changes any of these is started cold.
STARTUP_ENV = ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONMALLOC",
               "PYTHONDEVMODE", "MALLOC_ARENA_MAX")
READY_WAIT_SECONDS = 15.0
LOST = -255  # returncode of a worker whose exit status went with its zygote

_lock = threading.Lock()
_zygote: Zygote | None = None


def enabled() -> bool:
    return (os.environ.get("SWEEP_MAGIC_WARM", "1").strip().lower() not in ("0", "false", "no")
            and sys.platform.startswith("linux") and hasattr(socket, "send_fds"))


def warm_up() -> Zygote | None:
    """Start this kernel's zygote if it is not running (returns at once)."""
    global _zygote
    if not enabled():
        return None
    with _lock:
        if _zygote is None or _zygote.broken:
            try:
                _zygote = Zygote()
            except OSError:
                _zygote = None
        return _zygote


def zygote_for(env: dict) -> Zygote | None:
    """The ready zygote, if a worker with ``env`` may be forked from it."""
    zygote = warm_up()
    if zygote is None or not zygote.wait_ready(READY_WAIT_SECONDS):
        return None
    if any(env.get(name) != zygote.start_env.get(name) for name in STARTUP_ENV):
        return None
    return zygote


def current() -> Zygote | None:
    """The running zygote of this process, if any."""
    zygote = _zygote
    return zygote if zygote is not None and not zygote.broken else None


def shut_down() -> None:
    """Stop the zygote (the workers it forked live on: they answer to their lifelines)."""
    global _zygote
    with _lock:
        zygote, _zygote = _zygote, None
    if zygote is not None:
        zygote.close()


class Zygote:
    def __init__(self):
        from sweep_magic.protocol import env as child_env

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.start_env = child_env.fresh_process_env(os.environ)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sweep_magic.worker.zygote", "--control-fd", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), env=self.start_env, start_new_session=True,
            )
        finally:
            theirs.close()
        self._sock = ours
        self._send_lock = threading.Lock()  # one request (and its pid reply) at a time
        self._cond = threading.Condition()
        self._ready: bool | None = None
        self._pids: list[int] = []  # pid replies, in request order
        self._exits: dict[int, int] = {}
        self.broken = False
        threading.Thread(target=self._read, name="sweep-magic-zygote", daemon=True).start()

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._ready is not None or self.broken, timeout)
            return bool(self._ready) and not self.broken

    def fork(self, spec_path: str, env: dict, cwd: str, events_w: int, lifeline_r: int, log_fd: int) -> int:
        header = json.dumps({"spec": spec_path, "env": env, "cwd": cwd}).encode()
        with self._send_lock:
            socket.send_fds(self._sock, [header], [events_w, lifeline_r, log_fd])
            with self._cond:
                if not self._cond.wait_for(lambda: self._pids or self.broken, 10.0) or not self._pids:
                    self.broken = True
                    raise OSError("the warm start server did not answer")
                return self._pids.pop(0)

    def wait_exit(self, pid: int) -> int | None:
        with self._cond:
            while pid not in self._exits:
                if self.broken:
                    return _wait_foreign(pid)
                self._cond.wait(1.0)
            return self._exits.pop(pid)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _read(self) -> None:
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                message = json.loads(data)
                with self._cond:
                    if "ready" in message:
                        self._ready = bool(message["ready"])
                    elif "pid" in message:
                        self._pids.append(int(message["pid"]))
                    elif "exit" in message:
                        self._exits[int(message["exit"])] = int(message["code"])
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.broken = True  # workers still running are waited for by polling
            self._cond.notify_all()
        self._sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _wait_foreign(pid: int) -> None:
    """A worker whose zygote died: not our child, so no exit status; wait for it to go
    (None: the supervisor judges its end by what the worker said before it went)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.2)
    except psutil.Error:
        pass
    return None


class ZygoteProcess:
    """An agent forked by the zygote (see ``backend.AgentProcess``)."""

    node = ""

    def __init__(self, zygote: Zygote, pid: int):
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int | None:
        """The exit status, or None when the zygote died first and it cannot be known
        (``returncode`` is then ``LOST``, so the agent no longer counts as alive)."""
        code = self._zygote.wait_exit(self.pid)
        self.returncode = LOST if code is None else code
        return code

