"""Immutable snapshots of a sweep session: what the views (panel, text) read.

The supervisor builds a new ``SessionSnapshot`` whenever its state changes and
bumps ``version``; views compare versions to skip redraws.  Nothing here holds a
reference to a process, a thread or a lock, so a snapshot can be handed to any
thread and kept for as long as anyone likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Agent states (the supervisor's state machine):
#   starting → idle ⇄ running → draining → exited | failed | killed
#   failed/crashed agents may go back to starting (restart with backoff).
AGENT_STATES = ("starting", "idle", "running", "draining", "restarting", "exited", "failed", "killed")
AGENT_ENDED = frozenset({"exited", "failed", "killed"})

# Run states, as W&B names them.
RUN_STATES = ("running", "finished", "failed", "crashed", "killed")
RUN_ENDED = frozenset({"finished", "failed", "crashed", "killed"})


@dataclass(frozen=True)
class RunSnapshot:
    run_id: str
    agent: int  # AgentSnapshot.index of the agent that ran it
    name: str
    config: dict  # plain {name: value}
    state: str  # one of RUN_STATES
    step: int | None = None
    metrics: dict = field(default_factory=dict)  # latest logged values
    summary: dict = field(default_factory=dict)  # final summary once ended
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None  # traceback text / crash reason
    dir: str | None = None  # offline run folder
    url: str | None = None
    pid: int | None = None  # the run's own process (isolate="run", program sweeps); else None
    node: str = ""  # the Ray node it ran on (its label); "" for this machine

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def metric(self, name: str | None):
        """The sweep metric of this run: summary first, else the latest logged value."""
        if not name:
            return None
        if name in self.summary:
            return self.summary[name]
        return self.metrics.get(name)

    def as_result(self) -> dict:
        """The plain dict ``SweepSession.results()`` returns for this run."""
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "name": self.name,
            "config": dict(self.config),
            "state": self.state,
            "summary": dict(self.summary),
            "duration": self.duration,
            "error": self.error,
            "dir": self.dir,
            "pid": self.pid,
            "node": self.node,
        }


@dataclass(frozen=True)
class AgentSnapshot:
    index: int  # 0-based, stable for the life of the session
    device: str  # "gpu 1", "gpu 0,1", "cpu 0-3", "cpu"
    state: str  # one of AGENT_STATES
    pid: int | None = None
    current_run: str | None = None  # run_id
    runs_done: int = 0
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None  # why it ended or last crashed ("killed by SIGABRT", ...)
    log_path: str | None = None
    log_tail: tuple[str, ...] = ()
    node: str = ""  # where it runs: "" = this machine; a Ray node's IP (with an id when IPs repeat)

    @property
    def ended(self) -> bool:
        return self.state in AGENT_ENDED


@dataclass(frozen=True)
class SessionSnapshot:
    session_id: str
    sweep_id: str
    state: str  # "running" | "stopping" | "finished" | "stopped"
    agents: tuple[AgentSnapshot, ...] = ()
    runs: tuple[RunSnapshot, ...] = ()  # in start order
    metric_name: str | None = None
    metric_goal: str | None = None  # "minimize" | "maximize"
    started_at: float | None = None
    ended_at: float | None = None
    version: int = 0
    # Things to say once for the whole session, e.g. a named degradation of the agents'
    # wandb ("live detail off ..."): each distinct text once, in arrival order.
    notices: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.state in ("finished", "stopped")

    def ranked_runs(self) -> list[RunSnapshot]:
        """Runs best first by the sweep metric; runs without it keep start order, last."""
        name, sign = self.metric_name, (-1 if self.metric_goal == "maximize" else 1)
        scored, unscored = [], []
        for run in self.runs:
            value = run.metric(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scored.append((sign * value, run))
            else:
                unscored.append(run)
        scored.sort(key=lambda pair: pair[0])
        return [run for _, run in scored] + unscored

    def best_run(self) -> RunSnapshot | None:
        ranked = [r for r in self.ranked_runs() if r.state == "finished" and r.metric(self.metric_name) is not None]
        return ranked[0] if ranked else None
