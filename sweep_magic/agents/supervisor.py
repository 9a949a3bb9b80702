"""Agent processes as small state machines: spawn, watch, restart, stop; snapshots.

    kernel process                                          worker process group (one per agent)
    ┌───────────────────────────────────────────┐           ┌─────────────────────────────────┐
    │ Supervisor                                │  spec file│ python -m sweep_magic.worker    │
    │  control thread ── backend.start ─────────┼──(0600)──►│   wandb.agent → run thread       │
    │   (spawns, restarts with backoff,          │           │   flusher thread ─┐             │
    │    polls log tails)                        │  events   │                   ▼             │
    │  reader thread × N ◄──────────────────────┼───pipe────┤ events fd (JSON lines)          │
    │  waiter thread × N (exit code → reason,    │ lifeline  │                                 │
    │    kills the group's leftovers, reaps      │───pipe───►│ watchdog: EOF → kill group      │
    │    wandb-core)                             │           │ stdout/stderr → agent-N.log     │
    │  snapshot() → SessionSnapshot (immutable)  │           └─────────────────────────────────┘
    └───────────────────────────────────────────┘            wandb-core: own session, --pid <worker>

Agent states (``snapshot.AGENT_STATES``)::

    starting → idle ⇄ running → (draining) → exited | failed | killed
         ▲                          │ crash (exit code ≠ 0 without AgentExiting error)
         └──── restarting ◄─────────┘ backoff 0.5 s, 1 s, 2 s …; more than max_restarts
                                      crashes in a row → failed

Every process is spawned from the control thread, which lives as long as any agent:
PR_SET_PDEATHSIG fires when the *thread* that forked a child ends, not the process.
Children never outlive the kernel: the lifeline pipe's write end exists only here, the
worker sets PDEATHSIG, and ``atexit`` stops everything.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

from sweep_magic.agents.backend import AgentProcess, Backend
from sweep_magic.agents.local import LocalBackend, describe_exit, wait_until
from sweep_magic.agents.record import AgentRecord
from sweep_magic.devices import AgentSlot
from sweep_magic.protocol.events import (
    AgentExiting,
    AgentRegistered,
    AgentStarted,
    Metrics,
    Notice,
    RunFinished,
    RunStarted,
    parse_line,
)
from sweep_magic.snapshot import AGENT_ENDED, RunSnapshot, SessionSnapshot

TAIL_POLL_SECONDS = 0.5
EXIT_AGENT_ERROR = 3  # the worker's "could not run" status (worker/main.py)
UNKNOWN_DEATH = -9  # gone without a word: as if killed


class Supervisor:
    def __init__(
        self,
        spec_for_slot: Callable[[AgentSlot], object],
        slots: list[AgentSlot],
        *,
        session_id: str,
        sweep_id: str,
        log_dir: str,
        metric_name: str | None = None,
        metric_goal: str | None = None,
        max_restarts: int = 3,
        on_change: Callable[[], None] | None = None,
        backend: Backend | None = None,
    ):
        self._spec_for_slot = spec_for_slot
        self._backend = backend or LocalBackend(log_dir)
        self._session_id = session_id
        self._sweep_id = sweep_id
        self._log_dir = log_dir
        self._metric = (metric_name, metric_goal)
        self._max_restarts = max_restarts
        self._on_change = on_change
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._agents = [AgentRecord(s, os.path.join(log_dir, f"agent-{i}.log")) for i, s in enumerate(slots)]
        self._runs: dict[str, dict] = {}  # run_id → mutable fields, in start order
        # Snapshots reuse the RunSnapshot of every run that did not change (a long sweep has
        # thousands, and metrics arrive several times a second per agent).
        self._run_snaps: dict[str, RunSnapshot] = {}
        self._dirty_runs: set[str] = set()
        self._notices: list[str] = []  # Notice texts, each once (every agent sends its own)
        self._state = "running"
        self._stop_requested = False
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._version = 0
        self._snap: SessionSnapshot | None = None
        self._pending_fire = False
        self._wake: queue.Queue = queue.Queue()
        self._control: threading.Thread | None = None

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        os.makedirs(self._log_dir, mode=0o700, exist_ok=True)
        with self._lock:
            self._started_at = time.time()
            for agent in self._agents:
                agent.due = 0.0
            self._maybe_finish()  # no slots: nothing to wait for
            self._changed()
        atexit.register(self._atexit)
        self._ensure_control()
        self._notify()
        self._fire()

    def snapshot(self) -> SessionSnapshot:
        with self._lock:
            if self._snap is None or self._snap.version != self._version:
                self._snap = self._build_snapshot()
            return self._snap

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._all_ended():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
            return True

    def stop(self, drain: bool = False, timeout: float | None = 15.0) -> None:
        """Stop every agent; SIGINT → SIGTERM → SIGKILL on each process group within ``timeout``.

        ``drain=True`` first lets each agent finish its current run (SIGUSR1) and waits up to
        ``timeout`` (None: as long as the runs take) before the escalation, which then has 10 s.
        Returns when every process, wandb-core sidecars included, is gone.
        """
        with self._lock:
            self._stop_requested = True
            if not self._all_ended():
                self._state = "stopping"
            for agent in self._agents:
                if agent.due is not None:  # a pending (re)start that will not happen now
                    agent.due = None
                    self._end(agent, "killed" if agent.restarts else "exited", agent.reason or "stopped")
                elif agent.alive and agent.intent != "kill":
                    agent.intent = "drain" if drain else "stop"
                    if drain:
                        agent.state = "draining"
            self._changed()
        self._notify()
        self._fire()
        if drain:
            for agent in self._alive():
                self._send_drain(agent)
            self.wait(timeout)
            timeout = 10.0
        budget = 15.0 if timeout is None else max(timeout, 1.0)
        # SIGINT is pyagent's Ctrl-C (the run is stopped and reported); SIGTERM makes the
        # worker SIGKILL its group; SIGKILL is for a worker too wedged to run its handler.
        for sig, share in ((signal.SIGINT, 0.35), (signal.SIGTERM, 0.2)):
            alive = self._alive()
            if not alive:
                break
            for agent in alive:
                agent.proc.signal(sig)
            wait_until(lambda: not self._alive(), budget * share)
        for agent in self._alive():
            agent.proc.signal(signal.SIGKILL)
        self.wait(budget * 0.3 + 5)
        self._fire()

    def drain_agent(self, i: int) -> None:
        """Let agent ``i`` finish its current run, then exit (no new runs)."""
        with self._lock:
            agent = self._agents[i]
            if not agent.alive:
                return
            agent.intent, agent.state = "drain", "draining"
            self._send_drain(agent)
            self._changed()
        self._notify()
        self._fire()

    def _send_drain(self, agent: AgentRecord) -> None:
        with self._lock:
            # Before AgentStarted the worker may not have its SIGUSR1 handler yet, and the
            # default action kills; the drain is then sent when AgentStarted arrives.
            if agent.ready and agent.alive:
                agent.proc.drain()

    def kill_agent(self, i: int) -> None:
        """SIGKILL agent ``i``'s process group; its run in progress becomes ``killed``."""
        with self._lock:
            agent = self._agents[i]
            if agent.due is not None:
                agent.due = None
                self._end(agent, "killed", "killed by user")
                self._changed()
            if agent.alive:
                agent.intent = "kill"
                agent.proc.signal(signal.SIGKILL)
        self._notify()
        self._fire()

    def restart_agent(self, i: int) -> None:
        """Start agent ``i`` afresh (killing the current process, if any)."""
        with self._lock:
            agent = self._agents[i]
            if self._stop_requested:
                return
            if agent.alive:
                agent.intent = "restart"
                proc = agent.proc
            else:
                proc = None
                agent.crashes = 0
                agent.restarts += 1
                agent.state, agent.due = "restarting", 0.0
                self._changed()
        if proc is not None:
            proc.signal(signal.SIGKILL)
        self._ensure_control()
        self._notify()
        self._fire()

    # ------------------------------------------------------------------ control thread
    def _ensure_control(self) -> None:
        with self._lock:
            if self._control is None:
                self._control = threading.Thread(
                    target=self._control_loop, name=f"sweep-magic-{self._session_id}-control", daemon=True
                )
                self._control.start()

    def _notify(self) -> None:
        self._wake.put(None)

    def _control_loop(self) -> None:
        while True:
            self._poll_tails()
            with self._lock:
                now = time.monotonic()
                due = [a for a in self._agents if a.due is not None and a.due <= now]
                for agent in due:
                    agent.due = None
                busy = any(a.alive or a.due is not None or a.waiter is not None for a in self._agents)
                if not busy and not due:
                    # Decided under the lock, so a restart either sees us running or starts
                    # a new control thread; nothing is alive that could lose its parent thread.
                    self._control = None
                    return
            for agent in due:
                self._spawn(agent)
            try:
                self._wake.get(timeout=TAIL_POLL_SECONDS)
            except queue.Empty:
                pass

    def _spawn(self, agent: AgentRecord) -> None:
        # Under the lock, so stop() either sees this process alive or prevents it.
        with self._lock:
            if self._stop_requested:
                self._end(agent, "killed" if agent.restarts else "exited", agent.reason or "stopped")
                self._changed()
            else:
                try:
                    spec = self._spec_for_slot(agent.slot)
                    header = f"[sweep_magic] agent {agent.index} ({agent.slot.label}) starting"
                    proc = self._backend.start(spec, log_path=agent.log_path, header=header)
                except Exception as err:  # noqa: BLE001 - whatever stops a start is the agent's failure, shown in its row
                    self._end(agent, "failed", f"could not start: {type(err).__name__}: {err}")
                    self._changed()
                else:
                    agent.proc, agent.spec = proc, spec
                    agent.state, agent.intent, agent.current_run = "starting", None, None
                    agent.exit_code = agent.exit_error = agent.exit_reason = None
                    agent.ready = False
                    reader = threading.Thread(
                        target=self._read_events, args=(agent, proc), daemon=True
                    )
                    reader.start()
                    agent.waiter = threading.Thread(target=self._wait_proc, args=(agent, proc, reader), daemon=True)
                    agent.waiter.start()
                    self._changed()
        self._fire()

    # ------------------------------------------------------------------ per-process threads
    def _read_events(self, agent: AgentRecord, proc: AgentProcess) -> None:
        for line in proc.events():
            event = parse_line(line)
            if event is not None:
                self._on_event(agent, proc, event)

    def _wait_proc(self, agent: AgentRecord, proc: AgentProcess, reader: threading.Thread) -> None:
        code = proc.wait()
        try:
            # The user's own children (data loaders, ...) die with the agent; they also hold
            # copies of the events pipe if they were forked, which would keep the reader waiting.
            proc.signal(signal.SIGKILL)
            reader.join(timeout=5)
            with self._lock:
                lost = self._on_exit(agent, proc, code)
                self._changed()
            self._fire()
            if lost:
                proc.report_lost_run(*lost)
            proc.cleanup()
        finally:
            with self._lock:
                # ``wait()`` and ``stop()`` return only once the sidecars are gone too.
                if agent.waiter is threading.current_thread():
                    agent.waiter = None
                self._maybe_finish()
                self._changed()
            self._notify()
            self._fire()

    # ------------------------------------------------------------------ state machine
    def _on_event(self, agent: AgentRecord, proc, event) -> None:
        with self._lock:
            if agent.proc is not proc:
                return  # a previous process of this slot
            if isinstance(event, AgentStarted):
                agent.ready = True
                if agent.intent == "drain":
                    self._send_drain(agent)
            elif isinstance(event, AgentRegistered):
                if agent.state == "starting":
                    agent.state = "idle"
            elif isinstance(event, RunStarted):
                self._dirty_runs.add(event.run_id)
                self._runs[event.run_id] = dict(
                    run_id=event.run_id, agent=agent.index, name=event.name, config=dict(event.config),
                    state="running", step=None, metrics={}, summary={}, started_at=event.t,
                    ended_at=None, error=None, dir=event.dir, url=event.url, pid=event.pid,
                    node=getattr(agent.proc, "node", "") or "",  # a restarted agent may be elsewhere
                )  # fmt: skip
                agent.current_run = event.run_id
                if agent.state != "draining":
                    agent.state = "running"
            elif isinstance(event, Metrics):
                run = self._runs.get(event.run_id)
                if run is None:
                    return
                self._dirty_runs.add(event.run_id)
                run["metrics"] = {**run["metrics"], **event.values}
                run["step"] = event.step
            elif isinstance(event, RunFinished):
                run = self._runs.get(event.run_id)
                if run is None:
                    return
                self._dirty_runs.add(event.run_id)
                run.update(state=event.state, summary=dict(event.summary), ended_at=event.t, error=event.error)
                if agent.current_run == event.run_id:
                    agent.current_run = None
                agent.runs_done += 1
                agent.crashes = 0
                if agent.state == "running":
                    agent.state = "idle"
            elif isinstance(event, AgentExiting):
                agent.exit_reason, agent.exit_error = event.reason, event.error
            elif isinstance(event, Notice):
                if event.text in self._notices:
                    return
                self._notices.append(event.text)
            else:
                return
            self._changed()
        self._fire()

    def _on_exit(self, agent: AgentRecord, proc, code: int) -> tuple | None:
        """Settle the agent after its process ended; returns (run_id, state, code) of a run
        the worker could not report itself."""
        if agent.proc is not proc:
            return None
        if code is None:  # the host lost track of the exit status: what did the worker say?
            code = (EXIT_AGENT_ERROR if agent.exit_error else 0) if agent.exit_reason else UNKNOWN_DEATH
        lost = None
        agent.exit_code = code
        agent.read_tail()
        # A backend may know better than the exit status (a Ray actor whose node was lost).
        why = getattr(proc, "exit_reason", None) or describe_exit(code)
        intent = agent.intent
        if agent.current_run and agent.current_run in self._runs:
            run = self._runs[agent.current_run]
            self._dirty_runs.add(agent.current_run)
            if intent in ("stop", "kill", "restart", "drain"):
                run.update(state="killed", error=f"stopped by sweep_magic ({why})")
            else:
                run.update(state="crashed", error=f"the agent process died: {why}")
            run["ended_at"] = time.time()
            lost = (run["run_id"], run["state"], code)
            agent.current_run = None
        if intent == "restart":
            agent.restarts += 1
            agent.crashes = 0
            agent.state, agent.reason, agent.due = "restarting", "restarted by user", 0.0
        elif intent == "kill":
            self._end(agent, "killed", "killed by user")
        elif intent in ("stop", "drain"):
            if code == 0:
                self._end(agent, "exited", agent.exit_reason or "stopped")
            else:
                self._end(agent, "killed", f"stopped ({why})")
        elif agent.exit_error:
            # The agent could not run at all (bad sweep, missing hook): restarting would fail again.
            self._end(agent, "failed", agent.exit_error.strip().splitlines()[0])
        elif code == 0:
            self._end(agent, "exited", agent.exit_reason or "exited")
        elif self._stop_requested or agent.crashes >= self._max_restarts:
            limit = f"; gave up after {agent.restarts} restarts" if agent.crashes >= self._max_restarts else ""
            self._end(agent, "failed", why + limit)
        else:
            agent.crashes += 1
            agent.restarts += 1
            agent.state, agent.reason = "restarting", why
            agent.due = time.monotonic() + min(30.0, 0.5 * 2 ** (agent.crashes - 1))
        return lost

    def _end(self, agent: AgentRecord, state: str, reason: str) -> None:
        agent.state, agent.reason = state, reason
        agent.intent = None
        self._maybe_finish()

    def _all_ended(self) -> bool:
        return all(a.state in AGENT_ENDED and a.due is None and a.waiter is None for a in self._agents)

    def _maybe_finish(self) -> None:
        if self._all_ended() and self._state in ("running", "stopping"):
            self._state = "stopped" if self._stop_requested else "finished"
            self._ended_at = time.time()

    def _changed(self) -> None:
        self._version += 1
        self._pending_fire = True
        self._cond.notify_all()

    def _fire(self) -> None:
        """Tell ``on_change`` (outside the lock: a subscriber may take locks of its own)."""
        with self._lock:
            pending, self._pending_fire = self._pending_fire, False
        if pending and self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # noqa: BLE001 - a broken subscriber must not kill a reader or waiter thread
                pass  # a broken subscriber must not kill a reader or waiter thread

    # ------------------------------------------------------------------ logs and snapshots
    def _poll_tails(self) -> None:
        with self._lock:
            changed = any(a.read_tail() for a in self._agents)
            if changed:
                self._changed()
        self._fire()

    def _alive(self) -> list[AgentRecord]:
        with self._lock:
            return [a for a in self._agents if a.alive or (a.waiter is not None and a.waiter.is_alive())]

    def _build_snapshot(self) -> SessionSnapshot:
        agents = tuple(a.snapshot() for a in self._agents)
        for run_id in self._dirty_runs:
            r = self._runs[run_id]
            self._run_snaps[run_id] = RunSnapshot(**{**r, "config": dict(r["config"]), "metrics": dict(r["metrics"]),
                                                     "summary": dict(r["summary"])})  # fmt: skip
        self._dirty_runs.clear()
        runs = tuple(self._run_snaps[run_id] for run_id in self._runs)
        return SessionSnapshot(
            session_id=self._session_id, sweep_id=self._sweep_id, state=self._state, agents=agents, runs=runs,
            metric_name=self._metric[0], metric_goal=self._metric[1], started_at=self._started_at,
            ended_at=self._ended_at, version=self._version, notices=tuple(self._notices),
        )  # fmt: skip

    def _atexit(self) -> None:
        if not self.snapshot().done:
            self.stop(timeout=5.0)

