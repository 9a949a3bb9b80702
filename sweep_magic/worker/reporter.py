"""Inside a worker: what wandb does, turned into events (and side-channel posts).

The Reporter is told what happens by plain callbacks, which ``worker.hooks`` wires to the
wandb adapter (``sweep_magic._wandb``): pyagent's job begin/end, a run's start, logs and
finish.  It never touches wandb itself beyond public names (``run.id``, ``run.config``,
``run.summary``) and the adapter's verbs.

Threads: callbacks come from pyagent's run thread (a new one per run), its heartbeat
thread and the main thread; a flusher thread coalesces metrics to at most ``FLUSH_HZ``
events per second per run and posts metric history in batches.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import traceback

from sweep_magic import _wandb
from sweep_magic.protocol import sidechannel
from sweep_magic.protocol.events import (
    AgentRegistered,
    Event,
    Metrics,
    Notice,
    RunFinished,
    RunStarted,
    jsonable,
)

FLUSH_HZ = 4


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
        self.next_step = 0  # the step wandb gives the next row logged without one
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
        self.sleeper = Sleeper()
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
        """The agent should exit now: its loops end, its idle sleeps are cut short."""
        self.sleeper.exit()
        agent = self.agent
        if agent is not None:
            _wandb.request_exit(agent)

    def notice(self, text: str) -> None:
        """Something the user should be told once (a named degradation): the views show the
        event, the log tail shows the line."""
        print(f"sweep_magic: {text}", file=sys.stderr, flush=True)
        self.emit(Notice(text=text))

    # -- agent callbacks (pyagent, through the adapter) ---------------------------------
    def agent_created(self, agent) -> None:
        self.agent = agent
        if self.draining:  # drained before the agent even started: take no run
            self.wake()

    def filter_commands(self, commands: list) -> list:
        if self.draining:
            # Draining: finish the current run, take no new ones (the server gets them
            # back when they never show up in runState).
            return [c for c in commands if not (isinstance(c, dict) and c.get("type") in ("run", "resume"))]
        return commands

    def drain(self) -> None:
        """SIGUSR1: finish the run in progress, then exit; at once when idle."""
        self.draining = True
        agent = self.agent
        if agent is None:
            return  # agent_created sees the flag
        _wandb.give_back_queued(agent)  # a prefetched run goes back to the sweep
        if self._current is None:
            self.wake()

    def registered(self, agent_id: str) -> None:
        self.emit(AgentRegistered(agent_id=str(agent_id)))
        hello = {"prefetch": True, "pid": os.getpid(), "wandb_dir": os.environ.get("WANDB_DIR")}
        if self._spec.report_url:
            # Lets the server notice a dead agent after a few missed beats, not a minute.
            hello["heartbeat_seconds"] = self._spec.heartbeat_seconds
        self.post(f"agents/{agent_id}/hello", hello)

    def job_begin(self, agent, run_id: str, config: dict) -> None:
        with self._lock:
            self._runs[run_id] = _RunState(run_id, config)
            self._current = run_id

    def job_end(self, agent, run_id: str) -> None:
        """After pyagent's ``_run_job``: report the run's outcome (also for a function that
        never called wandb.init, or raised before finishing its run)."""
        status = _wandb.run_statuses(agent).get(run_id) if agent is not None else None
        with self._lock:
            run = self._runs.get(run_id)
            if self._current == run_id:
                self._current = None
        if run is not None and not run.finished:
            if not run.started:
                self._started(run, name=run_id, dir=None)
            if run.final is not None:
                exit_code, summary, ended = run.final
            else:  # no Run._finish seen: no wandb.init, a run never finished, or live detail off
                with self._lock:
                    summary = dict(run.values)  # the last value of each logged key
                failed = run.error or status == "errored"
                exit_code, ended = (1 if failed else 0), time.time()
            self._finished(run, exit_code=exit_code, summary=summary, ended=ended)
            self.sleeper.nudge()  # an agent with nothing queued asks for its next run at once
        if self.draining and agent is not None:
            self.wake()

    def record_error(self, text: str) -> None:
        with self._lock:
            run = self._runs.get(self._current) if self._current else None
            if run is not None:
                run.error = text

    def stopped(self, run_id: str) -> bool:
        agent = self.agent
        return agent is not None and _wandb.run_statuses(agent).get(run_id) == "stopped"

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
        except Exception:  # noqa: BLE001 - an unreadable run config falls back to the job's
            config = state.config
        state.next_step = _wandb.first_step(run)
        state.config = config or state.config
        self._started(state, name=run.name or state.run_id, dir=_wandb.run_dir(run))

    def _started(self, state: _RunState, *, name: str, dir: str | None) -> None:
        state.started = True
        self.emit(RunStarted(run_id=state.run_id, name=name, config=state.config, dir=dir))
        self.post(f"runs/{state.run_id}/start", {})

    def logged(self, run, data: dict, step: int | None, commit: bool | None) -> None:
        state = self._own(run)
        if state is None:
            return
        values = {str(k): v for k, v in ((k, _scalar(v)) for k, v in data.items()) if v is not None}
        commits = (step is None and commit is None) or bool(commit)
        with self._lock:
            # wandb's own step rule (Run._log), kept here rather than read from the run: a row
            # goes to ``step`` if given, else to the next step; a commit moves the next step on.
            at = step if step is not None else state.next_step
            if step is not None and step > state.next_step:
                state.next_step = step
            if commits:
                state.next_step += 1
            if state.row is not None and state.row_step != at:
                self._close_row(state)
            state.row = {**(state.row or {}), **values}
            state.row_step = at
            if commits:
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
        except Exception:  # noqa: BLE001 - an unreadable summary is reported empty, not fatal
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
    def final_of(self, run_id: str, exit_code: int | None = None) -> list | None:
        """[exit_code, summary, ended] as a run child tells its agent: from ``Run._finish``,
        or (none seen, e.g. live detail off) ``exit_code`` with the last logged values."""
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:
                return None
            if state.final is not None:
                return list(state.final)
            if exit_code is None:
                return None
            return [exit_code, dict(state.values), time.time()]

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
            except Exception:  # noqa: BLE001 - a broken flush must not stop the flusher thread
                traceback.print_exc()


class Sleeper:
    """pyagent's ``time`` module, with a ``sleep`` that can be cut short.

    ``exit()`` ends every sleep from then on (an exit is not held up by 5 s idle
    sleeps).  ``nudge()`` ends the sleep in progress once: the worker nudges when a
    run ends, so the heartbeat that tells the server about it (and asks for the next
    run) goes out at once instead of up to a heartbeat period later.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._exiting = False
        self._nudged = False
        # Where pyagent's heartbeat period is not a class attribute (0.25 sleeps a literal
        # 5 s), capping every pyagent sleep paces its heartbeats; its other sleep is an idle
        # wait that ends early anyway.
        self.cap: float | None = None

    def sleep(self, seconds: float) -> None:
        if self.cap is not None:
            seconds = min(seconds, self.cap)
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
