"""Inside a worker: what wandb does, turned into events (and side-channel posts).

wandb has no public callback API, so the worker wraps a few private methods of the
pinned wandb range (docs/protocol.md §4) before ``wandb.agent`` starts:

    pyagent.Agent._init / _register / _run_job / _heartbeat_commands / _exit
    wandb.sdk.wandb_run.Run._on_start / _partial_history_callback / _finish
    pyagent.time.sleep (cut short on exit, and nudged when a run ends)

Any of them missing is a loud ``HookMissing`` at start, never a silently blind view.

Threads: hooks are called from pyagent's run thread (a new one per run), its
heartbeat thread and the main thread; a flusher thread coalesces metrics to at
most ``FLUSH_HZ`` events per second per run and posts metric history in batches.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import traceback

from sweep_magic.protocol import sidechannel
from sweep_magic.protocol.events import (
    AgentRegistered,
    Event,
    Metrics,
    RunFinished,
    RunStarted,
    jsonable,
)

FLUSH_HZ = 4
FLAPPING_OFF = 10**9  # pyagent stops after 3 failures in 60 s; for us a failing run is just a failed run

_AGENT_HOOKS = ("_init", "_register", "_run_job", "_heartbeat_commands", "_exit")
_RUN_HOOKS = ("_on_start", "_partial_history_callback", "_finish")
_AGENT_ATTRS = ("HEARTBEAT_SLEEP_SECONDS", "FLAPPING_MAX_FAILURES")


class HookMissing(RuntimeError):
    pass


def _scalar(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return jsonable(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            return None
    return None  # images, tables, histograms: not something a view can show as a number


class _RunState:
    def __init__(self, run_id: str, config: dict):
        self.run_id = run_id
        self.config = config
        self.t0 = time.time()
        self.started = False
        self.finished = False
        self.final: tuple | None = None  # (exit_code, summary, ended) from Run._finish
        self.error: str | None = None
        self.values: dict = {}
        self.step: int | None = None
        self.dirty = False
        self.row: dict | None = None  # the history row being built (partial logs)
        self.row_step: int | None = None
        self.rows: list[dict] = []  # complete rows with the sweep metric, not yet posted
        self.crash: str | None = None  # a run child's death by signal (isolate="run", programs)


class Reporter:
    """Owns the events fd and the side channel; the hooks call into it."""

    def __init__(self, events_fd: int, spec):
        self._fd = events_fd
        self._spec = spec
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        # Held through a flush's I/O: a run's last metrics and history rows must leave before
        # its RunFinished / finish post, even when the flusher thread took them first.
        self._flush_lock = threading.Lock()
        self._runs: dict[str, _RunState] = {}
        self._current: str | None = None
        self.agent = None  # the pyagent.Agent, once it exists
        self.draining = False
        self._warned: set[str] = set()
        self._key = spec.env.get("WANDB_API_KEY") or os.environ.get("WANDB_API_KEY", "")
        self._stop = threading.Event()
        self.sleeper = _Sleeper()
        self._flusher = threading.Thread(target=self._flush_loop, name="sweep-magic-flusher", daemon=True)
        self._flusher.start()

    # -- transport ------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        data = event.to_line()
        with self._write_lock:
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                pass  # the supervisor is gone; the lifeline watchdog ends us

    def post(self, path: str, body: dict) -> None:
        if not self._spec.report_url:
            return
        try:
            sidechannel.post(self._spec.report_url, self._key, path, body)
        except (OSError, ValueError) as err:  # URLError is an OSError
            kind = path.rsplit("/", 1)[-1]
            if kind not in self._warned:  # once per kind: the log is for the user's output
                self._warned.add(kind)
                print(f"sweep_magic: side channel {kind} failed: {err}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=2)
        self.flush()

    # -- agent ----------------------------------------------------------------------------
    def wake(self) -> None:
        """The agent should exit: cut pyagent's 5 s idle sleeps short (up to 10 s per exit)."""
        self.sleeper.exit()
        agent = self.agent
        if agent is not None:
            try:
                from wandb.agents.pyagent import Job

                agent._queue.put(Job({"type": "exit"}))  # returns queue.get(); the loop sees the flag
            except Exception:
                pass

    def registered(self, agent_id: str) -> None:
        self.emit(AgentRegistered(agent_id=str(agent_id)))
        hello = {"prefetch": True, "pid": os.getpid(), "wandb_dir": os.environ.get("WANDB_DIR")}
        if self._spec.report_url:
            # Lets the server notice a dead agent after a few missed beats, not a minute.
            hello["heartbeat_seconds"] = self._spec.heartbeat_seconds
        self.post(f"agents/{agent_id}/hello", hello)

    def job_begin(self, run_id: str, config: dict) -> None:
        with self._lock:
            self._runs[run_id] = _RunState(run_id, config)
            self._current = run_id

    def job_end(self, run_id: str, status: str | None) -> None:
        """After pyagent's ``_run_job``: report the run's outcome (also for a function that
        never called wandb.init, or raised before finishing its run)."""
        with self._lock:
            run = self._runs.get(run_id)
            if self._current == run_id:
                self._current = None
        if run is None or run.finished:
            return
        if not run.started:
            self._started(run, name=run_id, dir=None)
        if run.final is not None:
            exit_code, summary, ended = run.final
        else:  # the function never called wandb.init (or never finished its run)
            exit_code, summary, ended = (1 if (run.error or status != "RUNNING") else 0), {}, time.time()
        self._finished(run, exit_code=exit_code, summary=summary, ended=ended)
        self.sleeper.nudge()  # an agent with nothing queued asks for its next run at once

    def record_error(self, text: str) -> None:
        with self._lock:
            run = self._runs.get(self._current) if self._current else None
            if run is not None:
                run.error = text

    def stopped(self, run_id: str) -> bool:
        agent = self.agent
        status = getattr(agent, "_run_status", {}).get(run_id) if agent is not None else None
        return status == "STOPPED"

    # -- run ------------------------------------------------------------------------------
    def _own(self, run) -> _RunState | None:
        # Only the sweep run counts; extra runs a function makes are its own business.
        with self._lock:
            rid = getattr(run, "id", None)
            return self._runs.get(rid) if rid == self._current else None

    def run_started(self, run) -> None:
        state = self._own(run)
        if state is None or state.started:
            return
        try:
            config = {k: v for k, v in dict(run.config).items() if not str(k).startswith("_")}
        except Exception:
            config = state.config
        try:
            run_dir = run._settings.sync_dir
        except Exception:
            run_dir = None
        state.config = config or state.config
        self._started(state, name=run.name or state.run_id, dir=run_dir)

    def _started(self, state: _RunState, *, name: str, dir: str | None) -> None:
        state.started = True
        self.emit(RunStarted(run_id=state.run_id, name=name, config=state.config, dir=dir))
        self.post(f"runs/{state.run_id}/start", {})

    def logged(self, run, data: dict, step: int | None, commit: bool | None) -> None:
        state = self._own(run)
        if state is None:
            return
        try:
            at = step if step is not None else run._local_step
        except Exception:
            at = step
        values = {str(k): v for k, v in ((k, _scalar(v)) for k, v in data.items()) if v is not None}
        with self._lock:
            if state.row is not None and state.row_step != at:
                self._close_row(state)
            state.row = {**(state.row or {}), **values}
            state.row_step = at
            if (step is None and commit is None) or commit:
                self._close_row(state)
            state.values.update(values)
            state.step = at
            state.dirty = True

    def _close_row(self, state: _RunState) -> None:
        metric = self._spec.metric_name
        if metric and state.row and metric in state.row:
            state.rows.append({"_step": state.row_step, metric: state.row[metric]})
        state.row, state.row_step = None, None

    def run_finishing(self, run, exit_code: int | None) -> None:
        """``Run._finish``: keep the outcome; it is reported when pyagent's job ends, after the
        function wrapper has recorded the traceback (a ``with wandb.init()`` block finishes the
        run while the exception is still on its way out)."""
        state = self._own(run)
        if state is None or state.final is not None:
            return
        try:
            summary = {k: v for k, v in dict(run.summary).items() if not str(k).startswith("_")}
        except Exception:
            summary = {}
        with self._lock:
            if state.row is not None:
                self._close_row(state)
            state.final = (exit_code or 0, summary, time.time())
        self.flush(state)

    def _finished(self, state: _RunState, *, exit_code: int, summary: dict, ended: float) -> None:
        with self._lock:
            if state.row is not None:
                self._close_row(state)
            state.finished = True
        self.flush(state)
        if self.stopped(state.run_id):
            status, error = "killed", "stopped"
        elif state.crash:
            status, error = "crashed", state.crash
        elif exit_code == 0:
            status, error = "finished", None
        else:
            status, error = "failed", state.error or f"exit code {exit_code}"
        summary = jsonable(summary)  # plain JSON: numbers, strings, lists, small dicts
        self.emit(
            RunFinished(
                run_id=state.run_id,
                state=status,
                exit_code=exit_code,
                summary=summary,
                duration=ended - state.t0,
                error=error,
                t=ended,
            )
        )
        self.post(f"runs/{state.run_id}/finish", {"exit_code": exit_code, "state": status, "summary": summary})
        with self._lock:
            self._runs.pop(state.run_id, None)  # the flusher need not look at it again

    # -- runs in a child process (worker.isolation: isolate="run" and program sweeps) -----
    def child_started(self, run_id: str, event: RunStarted) -> None:
        """The child's RunStarted (its own hooks saw ``wandb.init``), relayed once."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.started:
                return
            run.started = True
            run.config = dict(event.config) or run.config
        self.emit(event)

    def child_outcome(self, run_id: str, *, final: tuple | None = None, error: str | None = None,
                      crash: str | None = None) -> None:
        """What the child (or its exit status) said about the run; reported by ``job_end``."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            if final is not None:
                run.final = tuple(final)
            if error:
                run.error = error
            if crash:
                run.crash = crash

    # -- flushing -------------------------------------------------------------------------
    def flush(self, only: _RunState | None = None) -> None:
        with self._flush_lock:
            self._flush(only)

    def _flush(self, only: _RunState | None) -> None:
        with self._lock:
            runs = [only] if only is not None else list(self._runs.values())
            batches = []
            for run in runs:
                if run.dirty:
                    run.dirty = False
                    batches.append((run, Metrics(run_id=run.run_id, step=run.step, values=dict(run.values)), None))
                if run.rows:
                    batches.append((run, None, run.rows))
                    run.rows = []
        # I/O outside the lock: a slow side channel must not block wandb.log in the run thread.
        for run, metrics, rows in batches:
            if metrics is not None:
                self.emit(metrics)
            if rows:
                self.post(f"runs/{run.run_id}/history", {"rows": rows})

    def _flush_loop(self) -> None:
        while not self._stop.wait(1.0 / FLUSH_HZ):
            try:
                self.flush()
            except Exception:
                traceback.print_exc()


class _Sleeper:
    """pyagent's ``time`` module, with a ``sleep`` that can be cut short.

    ``exit()`` ends every sleep from then on (an exit is not held up by 5 s idle
    sleeps).  ``nudge()`` ends the sleep in progress once: the worker nudges when a
    run starts and when it ends, so the heartbeat that tells the server about it goes
    out at once.  On a run's start that heartbeat brings the next run (prefetch), so
    the gap between runs no longer depends on the heartbeat period or the trial length.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._exiting = False
        self._nudged = False

    def sleep(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._exiting or self._nudged, timeout=seconds)
            self._nudged = False

    def nudge(self) -> None:
        with self._cond:
            self._nudged = True
            self._cond.notify_all()

    def exit(self) -> None:
        with self._cond:
            self._exiting = True
            self._cond.notify_all()

    def __getattr__(self, name):
        return getattr(time, name)


def wrap_function(fn, reporter: Reporter):
    """The user's function, recording its traceback text before pyagent sees the error."""

    @functools.wraps(fn)
    def sweep_function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException:
            reporter.record_error(traceback.format_exc())
            raise

    return sweep_function


def install(reporter: Reporter, spec) -> None:
    """Patch pyagent and Run; raises ``HookMissing`` naming what this wandb lacks."""
    import wandb
    from wandb.agents import pyagent
    from wandb.sdk import wandb_run

    Agent, Run = pyagent.Agent, wandb_run.Run
    missing = [f"Agent.{n}" for n in (*_AGENT_HOOKS, *_AGENT_ATTRS) if not hasattr(Agent, n)]
    missing += [f"Run.{n}" for n in _RUN_HOOKS if not hasattr(Run, n)]
    if missing:
        raise HookMissing(
            f"wandb {wandb.__version__} lacks {', '.join(missing)}, which sweep_magic hooks; "
            "install the wandb version sweep_magic supports (see its pyproject)"
        )
    Agent.FLAPPING_MAX_FAILURES = FLAPPING_OFF
    if spec.report_url:
        # Only against the embedded server: heartbeats to a shared W&B server stay at wandb's pace.
        Agent.HEARTBEAT_SLEEP_SECONDS = spec.heartbeat_seconds

    def around(cls, name, make):
        original = getattr(cls, name)
        setattr(cls, name, functools.wraps(original)(make(original)))

    def _init(orig):
        def hooked(self):
            orig(self)
            reporter.agent = self
            if reporter.draining:  # drained before the agent even started: take no run
                self._exit_flag = True

        return hooked

    around(Agent, "_init", _init)

    def _register(orig):
        def hooked(self):
            orig(self)
            reporter.registered(self._agent_id)

        return hooked

    def _run_job(orig):
        def hooked(self, job):
            config = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in (job.config or {}).items()}
            reporter.job_begin(job.run_id, config)
            try:
                orig(self, job)
            finally:
                reporter.job_end(job.run_id, self._run_status.get(job.run_id))
                if reporter.draining:
                    self._exit_flag = True
                    reporter.wake()

        return hooked

    def _heartbeat_commands(orig):
        def hooked(self, run_status):
            commands = orig(self, run_status)
            if reporter.draining and commands:
                # Draining: finish the current run, take no new ones (the server gets
                # them back when they never show up in runState).
                commands = [c for c in commands if c.get("type") not in ("run", "resume")]
            return commands

        return hooked

    def _exit(orig):
        def hooked(self):
            orig(self)
            reporter.wake()

        return hooked

    around(Agent, "_exit", _exit)
    if hasattr(pyagent, "time"):
        pyagent.time = reporter.sleeper
    around(Agent, "_register", _register)
    around(Agent, "_run_job", _run_job)
    around(Agent, "_heartbeat_commands", _heartbeat_commands)

    def _on_start(orig):
        def hooked(self, *a, **kw):
            result = orig(self, *a, **kw)
            reporter.run_started(self)
            return result

        return hooked

    def _history(orig):
        def hooked(self, data, step=None, commit=None):
            try:
                reporter.logged(self, data, step, commit)
            except Exception:  # never let reporting break the user's wandb.log
                traceback.print_exc()
            return orig(self, data, step, commit)

        return hooked

    def _finish(orig):
        def hooked(self, exit_code=None, *a, **kw):
            if getattr(self, "_is_finished", False):
                return orig(self, exit_code, *a, **kw)
            # The summary must be read before the original tears the run down (docs/protocol.md §4).
            try:
                reporter.run_finishing(self, exit_code)
            except Exception:
                traceback.print_exc()
            return orig(self, exit_code, *a, **kw)

        return hooked

    around(Run, "_on_start", _on_start)
    around(Run, "_partial_history_callback", _history)
    around(Run, "_finish", _finish)


def start_drain(reporter: Reporter) -> None:
    """SIGUSR1: finish the run in progress, then exit; at once when idle."""
    reporter.draining = True
    agent = reporter.agent
    if agent is None:
        return
    for run_id, status in list(getattr(agent, "_run_status", {}).items()):
        if status == "QUEUED":  # a prefetched run: give it back by dropping it from runState
            agent._run_status[run_id] = "STOPPED"
    if reporter._current is None:
        agent._exit_flag = True
        reporter.wake()
