"""A process per run, inside the worker: ``isolate="run"`` and program sweeps.

The worker still runs the real ``wandb.agent``; the function pyagent calls for each run
(``Isolation.__call__``, in pyagent's run thread) starts the run in a child process of
its own and waits for it::

    pyagent run thread                      run child (own process group)
    ──────────────────                      ─────────────────────────────
    env = pyagent's per-run environment ──► wandb.init() joins that run
    start (fork server | spawn | program)    hooks: RunStarted, Metrics, outcome
    relay thread ◄──────── run pipe ───────  (JSON lines; worker.run_child)
    poll every 50 ms  ◄── exit status
    pyagent's stop (async exception) ──────► SIGINT (function) / SIGTERM (program)
                                             to the group, SIGKILL after STOP_GRACE
    settle: exit status → the run's state    (job_end then reports RunFinished)

The thread **polls**: pyagent stops a run by raising an exception in its thread
(``PyThreadState_SetAsyncExc``), which a thread blocked in ``waitpid`` would never see.
A child that dies of a signal is ``crashed`` ("killed by SIGKILL — often the
out-of-memory killer"); the agent does not notice beyond that and takes its next run.

Every live run group (and the fork server's) is in ``_groups``: the worker's own
death paths (SIGTERM, lost lifeline) call ``kill_all`` before they kill their group.
The run lifeline's write end lives only here, so a SIGKILLed worker takes every run
child's group with it too (``run_child.die_with_agent``, the fork server's shutdown).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace

from sweep_magic.protocol.events import Metrics, RunStarted, parse_line
from sweep_magic.protocol.exits import crash_reason, describe_exit, killed_by_signal, status_code
from sweep_magic.worker.run_child import ChildOutcome

POLL_SECONDS = 0.05
STOP_GRACE = 2.0  # first signal → SIGKILL of the run's group
RELAY_GRACE = 5.0  # after the group is gone, for the last lines in the run pipe
READY_TIMEOUT = 60.0  # the fork server's imports, on a loaded machine
FORKSERVER_VAR = "SWEEP_MAGIC_FORKSERVER"  # "0": spawn a fresh interpreter per run instead

_groups: set[int] = set()  # live run groups, and the fork server's


def kill_all() -> None:
    """SIGKILL every run child's group and the fork server (signal-handler safe: no locks)."""
    for pgid in list(_groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


class Isolation:
    """The function pyagent calls for each run; subclasses say how the run's process starts."""

    stop_signal = signal.SIGINT

    def __init__(self, spec, reporter):
        self._spec = spec
        self._reporter = reporter
        self._jobs: dict[str, dict] = {}  # run_id → pyagent's job command (args, program)
        self.fatal: str | None = None  # set when no run can succeed: the agent should stop
        # Only this process holds the write end: its EOF tells every run child the agent is gone.
        self.lifeline_r, self._lifeline_w = os.pipe()
        os.set_inheritable(self._lifeline_w, False)

    def remember(self, run_id: str, command: dict) -> None:
        """Each job's command, heard through the agent hooks (``hooks.install(job_command=)``):
        pyagent calls the function without arguments."""
        self._jobs[run_id] = command

    def __call__(self) -> None:
        run_id = os.environ.get("WANDB_RUN_ID", "")
        job = self._jobs.pop(run_id, {})
        child = relay = None
        try:
            events_r, events_w = os.pipe()
            try:
                child = self.start(run_id, job, dict(os.environ), events_w)
            except Exception as err:
                os.close(events_r)
                if self._reporter.stopped(run_id):
                    raise  # pyagent's stop (it raises a plain Exception) landed while starting
                self._reporter.child_outcome(run_id, final=(1, {}, time.time()),
                                             error=f"could not start the run's process: {type(err).__name__}: {err}")
                return
            finally:
                os.close(events_w)
            relay = Relay(events_r, self._reporter, run_id, child.pid)
            relay.start()
            while child.poll() is None:
                time.sleep(POLL_SECONDS)
        except BaseException:  # pyagent's stop, or Ctrl-C: the run goes, the agent stays
            if child is not None:
                self._stop(child)
                self._settle(run_id, child, relay)
            raise
        self._settle(run_id, child, relay)

    def start(self, run_id: str, job: dict, env: dict, events_w: int):
        raise NotImplementedError

    def failure_text(self, child, code: int) -> str:
        return f"the run's process ended with {describe_exit(code)}"

    def _stop(self, child, grace: float = STOP_GRACE) -> None:
        _signal_group(child.pid, self.stop_signal)
        deadline = time.monotonic() + grace
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        _signal_group(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def _settle(self, run_id: str, child, relay) -> None:
        code = child.poll()
        try:
            os.killpg(child.pid, signal.SIGKILL)  # what the run started goes with it
        except OSError:
            pass
        _groups.discard(child.pid)
        if relay is not None:
            relay.join(RELAY_GRACE)
        outcome = relay.outcome if relay is not None else None
        final = list(outcome.final) if outcome is not None and outcome.final else None
        now = time.time()
        report = self._reporter.child_outcome
        if code is None:  # wedged even after SIGKILL (uninterruptible I/O): say so
            report(run_id, final=(1, final[1] if final else {}, now), crash="the run's process could not be stopped")
        elif outcome is not None and outcome.load_error:
            report(run_id, final=(1, {}, now), error=outcome.load_error)
            self._stop_agent(outcome.load_error)
        elif killed_by_signal(code):
            report(run_id, final=(status_code(code), final[1] if final else {}, now), crash=crash_reason(code))
        elif code == 0:
            report(run_id, final=final or (0, {}, now))
        else:
            error = (outcome.error if outcome is not None else None) or self.failure_text(child, code)
            summary, ended = (final[1], final[2]) if final else ({}, now)
            report(run_id, final=(code, summary, ended), error=error)

    def _stop_agent(self, why: str) -> None:
        self.fatal = why
        self._reporter.wake()  # pyagent's loops end (the adapter's request_exit)

    def close(self) -> None:
        kill_all()
        try:
            os.close(self._lifeline_w)
        except OSError:
            pass


class Relay(threading.Thread):
    """Reads a run child's pipe: RunStarted (with the child's pid) and Metrics go on to the
    supervisor through the worker's reporter; the outcome is kept for ``_settle``."""

    def __init__(self, fd: int, reporter, run_id: str, pid: int):
        super().__init__(name=f"sweep-magic-relay-{run_id}", daemon=True)
        self._fd, self._reporter, self._run_id, self._pid = fd, reporter, run_id, pid
        self.outcome: ChildOutcome | None = None

    def run(self) -> None:
        with os.fdopen(self._fd, "rb") as stream:
            for line in stream:
                try:
                    self._line(line)
                except Exception:  # noqa: BLE001 - a bad line costs that line only
                    pass

    def _line(self, line: bytes) -> None:
        if b'"' + ChildOutcome.type.encode() + b'"' in line:
            body = json.loads(line)
            if body.get("type") == ChildOutcome.type and body.get("run_id") == self._run_id:
                self.outcome = ChildOutcome(run_id=self._run_id, final=body.get("final"), error=body.get("error"),
                                            load_error=body.get("load_error"))
            return
        event = parse_line(line)
        if getattr(event, "run_id", None) != self._run_id:
            return
        if isinstance(event, RunStarted):
            self._reporter.child_started(self._run_id, replace(event, pid=self._pid))
        elif isinstance(event, Metrics):
            self._reporter.emit(event)


def _signal_group(pgid: int, sig: int) -> None:
    for kill in (os.killpg, os.kill):  # the group, or the child alone if it has none yet
        try:
            kill(pgid, sig)
            return
        except OSError:
            continue


# -- isolate="run": the function in a forked (or spawned) child ----------------------------
class FunctionRuns(Isolation):
    """Each run's function in a child forked from the agent's fork server (``worker.forkserver``),
    or a fresh ``python -m sweep_magic.worker.run_child`` when there is none."""

    def __init__(self, spec, reporter):
        super().__init__(spec, reporter)
        self._payload_path: str | None = None
        self.server: ForkServer | None = None
        if os.environ.get(FORKSERVER_VAR, "1") != "0":
            try:
                self.server = ForkServer(spec.function_pickle, self.lifeline_r)
            except OSError as err:
                print(f"sweep_magic: no fork server ({err}); each run starts a fresh interpreter", file=sys.stderr)

    def start(self, run_id: str, job: dict, env: dict, events_w: int):
        args = job.get("args") or {}
        request = {"run_id": run_id, "env": env, "cwd": os.getcwd(), "metric": self._spec.metric_name,
                   "report_url": self._spec.report_url,
                   "config": {k: (v.get("value") if isinstance(v, dict) else v) for k, v in args.items()}}
        if self.server is not None and self.server.wait_ready(READY_TIMEOUT):
            child = self.server.spawn(request, events_w)
        else:
            if self.server is not None:
                print(f"sweep_magic: fork server unavailable ({self.server.why}); spawning", file=sys.stderr)
                self.server.close()
                self.server = None
            child = SpawnedChild(self._spawn(request, env, events_w))
        _groups.add(child.pid)
        return child

    def _spawn(self, request: dict, env: dict, events_w: int) -> subprocess.Popen:
        if self._payload_path is None:
            fd, self._payload_path = tempfile.mkstemp(prefix=".sweep-magic-fn-")  # 0600
            with os.fdopen(fd, "wb") as f:
                f.write(self._spec.function_pickle)
        cmd = [sys.executable, "-m", "sweep_magic.worker.run_child", "--payload", self._payload_path,
               "--events-fd", str(events_w), "--lifeline-fd", str(self.lifeline_r),
               "--parent", str(os.getpid()), "--request", json.dumps({k: v for k, v in request.items() if k != "env"})]
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=(events_w, self.lifeline_r),
                                start_new_session=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        super().close()
        if self._payload_path:
            try:
                os.unlink(self._payload_path)
            except OSError:
                pass


class SpawnedChild:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()


class ForkedChild:
    def __init__(self, pid: int, server: ForkServer):
        self.pid = pid
        self._server = server

    def poll(self) -> int | None:
        return self._server.exit_code(self.pid)


class ForkServer:
    """The worker's end of ``worker.forkserver``: start it, ask for children, learn their exits."""

    def __init__(self, payload: bytes, lifeline_r: int):
        fd, path = tempfile.mkstemp(prefix=".sweep-magic-fn-")  # 0600; the server deletes it
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.set_inheritable(False)
        cmd = [sys.executable, "-m", "sweep_magic.worker.forkserver", "--ctrl-fd", str(theirs.fileno()),
               "--lifeline-fd", str(lifeline_r), "--payload", path]
        try:
            # Its own session: the agent's SIGINT is not for it; its own death paths kill the runs.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), lifeline_r),
                                         start_new_session=True)
        except BaseException:
            ours.close()
            os.unlink(path)
            raise
        finally:
            theirs.close()
        _groups.add(self.proc.pid)
        self._sock = ours
        self._cond = threading.Condition()
        self._ready: bool | None = None  # None until it says ready or refused
        self.why = "not ready"
        self.info: dict = {}
        self._spawned: dict[int, int] = {}  # request number → pid
        self._exits: dict[int, int] = {}  # pid → exit code
        self._cancelled: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()  # one request at a time
        threading.Thread(target=self._read, name="sweep-magic-forkserver", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            op = msg.get("op")
            with self._cond:
                if op == "ready":
                    self._ready, self.info = True, msg
                elif op == "refused":
                    self._ready, self.why = False, msg.get("why", "refused")
                elif op == "spawned":
                    rid, pid = msg["rid"], msg["pid"]
                    if rid in self._cancelled:
                        _signal_group(pid, signal.SIGKILL)  # asked for by a run that was stopped meanwhile
                    self._spawned[rid] = pid
                elif op == "exited":
                    self._exits[msg["pid"]] = msg["code"]
                self._cond.notify_all()
        with self._cond:
            # It died: so did its children (their parent-death signal); nothing more will come.
            self.why = f"the fork server exited ({describe_exit(self.proc.poll())})"
            self._ready = False
            for rid in list(self._spawned):
                self._exits.setdefault(self._spawned[rid], -signal.SIGKILL)
            self._cond.notify_all()

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._ready is not None, timeout)
            return bool(self._ready)

    def spawn(self, request: dict, events_w: int, timeout: float = 30.0) -> ForkedChild:
        with self._lock:
            self._next += 1
            rid = self._next
            socket.send_fds(self._sock, [json.dumps({**request, "rid": rid}).encode()], [events_w])
            with self._cond:
                try:
                    if not self._cond.wait_for(lambda: rid in self._spawned or self._ready is False, timeout):
                        raise OSError("the fork server did not answer")
                except BaseException:
                    self._cancelled.add(rid)
                    raise
                if rid not in self._spawned:
                    raise OSError(self.why)
                return ForkedChild(self._spawned[rid], self)

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def close(self) -> None:
        try:
            # shutdown, not just close: our reader thread's pending recv would keep the socket
            # open, and the server would never see EOF.
            self._sock.shutdown(socket.SHUT_RDWR)  # EOF: it kills what is left of its children, exits
        except OSError:
            pass
        self._sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        _groups.discard(self.proc.pid)
