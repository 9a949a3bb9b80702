"""Sweep decisions of the embedded server: who runs what, when to stop, when a sweep is done.

The controller owns the lifecycle of runs and agents and asks W&B's own ``sweeps`` engine
for every search decision (``next_run``) and early-termination decision (``stop_runs``).
It knows nothing of HTTP or GraphQL: the GraphQL core and the side-channel routes call
its methods and turn ``NotFound`` / ``BadInput`` into replies.

Run states (column ``runs.state``)::

    pending ──listed in runState / side-channel start──► running
       │                                                    │ left runState, no finish report
       │ left runState or agent gone, never started         ▼
       └──► reclaimed (handed out again)        ending ──run file / nothing──► finished|failed|crashed|killed
                                                 side-channel finish (any time) ──► finished|failed|killed

Several processes may serve one database at once (two kernels, a script, ``python -m
sweep_magic.server``), so no decision rests on a lock or a memory of this process: each one
(a hand-out, a reclaim, a finish, a state change) is one store transaction (``BEGIN
IMMEDIATE``) that re-reads the rows it decides on, the engine's suggestion included.  Two
processes can then never hand out one grid point twice.  Runs nobody reported are settled by
``settle.Settler`` (finalizer and reaper threads) on evidence all processes share.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import time
from collections import Counter

from sweep_magic.server.config import (
    SWEEP_STATES,
    BadInput,
    NotFound,
    jsonable,
    point_key,
    split_config,
    sweeps_engine,
    validate_config,
)
from sweep_magic.server.settle import MAX_RECLAIMS_PER_POINT, Settler  # noqa: F401 (re-exported)
from sweep_magic.server.store import ACTIVE_RUN_STATES, Store

log = logging.getLogger(__name__)

DEFAULT_AGENT_TIMEOUT = 75.0  # 3 missed 5 s heartbeats + wandb-core's 60 s retry window
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(n: int = 8) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


class Controller:
    """Every decision of one server, over one ``Store``; thread- and process-safe.

    ``server_url``: this server's address, stored with the agents it registers, so that a
    restart on the same address gives those agents (and no other server's) a grace period."""

    def __init__(self, store: Store, *, wandb_dirs: list[str] | None = None,
                 agent_timeout: float = DEFAULT_AGENT_TIMEOUT, entity: str = "local",
                 server_url: str | None = None):
        self.store = store
        self.entity = entity
        self.agent_timeout = agent_timeout
        self.wandb_dirs = list(wandb_dirs or [])
        self.server_url = server_url
        self.settler = Settler(self)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.server_url:
            # A restart is this server's outage, not its agents': they kept retrying our address
            # (wandb-core retries for 60 s), so they get a fresh grace period.  Agents of other
            # servers were heard by those servers and keep their times.
            touched = self.store.touch_agents_of(self.server_url, time.time())
            if touched:
                log.info("%d agents of %s get a fresh grace period", touched, self.server_url)
        self.settler.start()

    def close(self) -> None:
        self.settler.close()

    # The settling side, kept reachable here for callers and tests.
    def finalize(self, run_id: str) -> None:
        self.settler.finalize(run_id)

    def reap(self, now: float | None = None) -> list[str]:
        return self.settler.reap(now)

    def read_live_history(self) -> int:
        return self.settler.read_live_history()

    # -- sweeps -------------------------------------------------------------------------------
    def create_sweep(self, config: dict, *, entity: str | None = None, project: str | None = None,
                     **extra) -> tuple[str, list[str]]:
        warnings = validate_config(config)
        sweep_id = new_id()
        entity = entity or config.get("entity") or self.entity
        project = project or config.get("project") or "uncategorized"
        self.store.add_sweep(sweep_id, entity, project, config, **extra)  # one INSERT: atomic
        log.info("sweep %s created (%s)", sweep_id, config.get("method"))
        return sweep_id, warnings

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        state = state.upper()
        if state not in SWEEP_STATES:
            raise BadInput(f"unknown sweep state {state!r}; use one of {', '.join(SWEEP_STATES)}")
        with self.store.transaction():
            self.sweep(sweep_id)
            self.store.update_sweep(sweep_id, state=state)

    def set_sweep_fields(self, sweep_id: str, **fields) -> None:
        with self.store.transaction():
            self.sweep(sweep_id)
            if fields:
                self.store.update_sweep(sweep_id, **fields)

    def sweep(self, sweep_id: str) -> dict:
        row = self.store.sweep(sweep_id)
        if row is None:
            raise NotFound(f"sweep {sweep_id!r} not found on this server")
        return row

    def has_sweep(self, sweep_id: str) -> bool:
        return self.store.sweep(sweep_id) is not None

    def visible_runs(self, sweep_id: str) -> list[dict]:
        """Runs that ran or run (reclaimed hand-outs never happened, as far as users care)."""
        return [r for r in self.store.runs_of_sweep(sweep_id) if r["state"] != "reclaimed"]

    # -- agents -------------------------------------------------------------------------------
    def create_agent(self, sweep_id: str, host: str | None) -> str:
        with self.store.transaction():
            sweep = self.sweep(sweep_id)
            if sweep["state"] in ("CANCELED", "FINISHED"):
                # Allowed (the agent will get `exit`), but worth a line in the log.
                log.info("agent registering on %s sweep %s", sweep["state"].lower(), sweep_id)
            agent_id = new_id()
            # Its timeout and our run-file dirs go with it: another server that reaps it or
            # settles its runs judges by these, not by its own settings.
            self.store.add_agent(agent_id, sweep_id, host, server_url=self.server_url,
                                 timeout_s=self.agent_timeout, search_dirs=self.wandb_dirs)
        return agent_id

    def hello(self, agent_id: str, body: dict) -> None:
        with self.store.transaction():
            if self.store.agent(agent_id) is None:
                raise NotFound(f"agent {agent_id!r} not found")
            fields = {"prefetch": 1 if body.get("prefetch") else 0, "last_seen": time.time()}
            if isinstance(body.get("pid"), int):
                fields["pid"] = body["pid"]
            if isinstance(body.get("wandb_dir"), str):
                fields["wandb_dir"] = body["wandb_dir"]
            hb = body.get("heartbeat_seconds")
            if isinstance(hb, (int, float)) and hb > 0:
                fields["heartbeat_s"] = float(hb)
            self.store.update_agent(agent_id, **fields)

    def heartbeat(self, agent_id: str, run_state) -> list[dict]:
        """One agent heartbeat → at most one command (pyagent reads only ``commands[0]``)."""
        listed = _parse_run_state(run_state)
        ending = []
        sweeps_engine()  # the first import takes a second: never while holding the write lock
        with self.store.transaction():
            agent = self.store.agent(agent_id)
            if agent is None or agent["gone"]:
                raise NotFound(f"agent {agent_id!r} not found")
            sweep = self.store.sweep(agent["sweep_id"])
            if sweep is None:
                raise NotFound(f"sweep {agent['sweep_id']!r} not found")
            now = time.time()
            # In the database, not in memory: every process's reaper judges by this time.
            fields = {"last_seen": now}
            if self.server_url and agent["server_url"] != self.server_url:
                fields["server_url"] = self.server_url  # registered by an older server version
            self.store.update_agent(agent_id, **fields)
            for run in self.store.active_runs_of_agent(agent_id):
                if run["id"] in listed:
                    if run["state"] == "pending" or not run["seen"]:
                        self.store.update_run(run["id"], state="running", seen=1,
                                              started_at=run["started_at"] or now)
                elif run["state"] in ("pending", "running"):
                    self.store.update_run(run["id"], state="ending", ending_at=now)
                    ending.append(run["id"])
            self._early_stop(sweep)
            commands = self._command_for(agent, sweep, listed)
        self.settler.enqueue(ending)  # after the commit, so the finalizer reads what we wrote
        return commands

    def _command_for(self, agent: dict, sweep: dict, listed: set[str]) -> list[dict]:
        mine = {r["id"]: r for r in self.store.active_runs_of_agent(agent["id"])}
        for run_id in sorted(listed):
            run = mine.get(run_id)
            # Re-sent while the run stays listed: the CLI escalates a repeated stop to SIGKILL.
            if sweep["state"] == "CANCELED" or (run and run["should_stop"]):
                return [{"type": "stop", "run_id": run_id}]
        busy = len(listed)
        may_take = busy == 0 or (busy < 2 and agent["prefetch"])
        if sweep["state"] == "RUNNING" and may_take:
            config = self._suggest(sweep)
            if config is not None:
                run_id = new_id()
                self.store.add_run(run_id, sweep["id"], agent["id"], config, point_key(config))
                engine, _, _ = split_config(sweep["config"])
                return [{"type": "run", "run_id": run_id, "args": config, "program": engine.get("program", "")}]
        if busy == 0 and self._agents_may_exit(sweep):
            return [{"type": "exit"}]
        return []

    def nothing_left(self, sweep_id: str) -> bool:
        """True when no agent will get another run of this sweep: what ``exit`` is sent for.
        (May mark the sweep FINISHED, as a heartbeat would.)"""
        sweeps_engine()  # never imported while holding the write lock
        with self.store.transaction():
            sweep = self.store.sweep(sweep_id)
            return sweep is not None and self._agents_may_exit(sweep)

    def _agents_may_exit(self, sweep: dict) -> bool:
        if sweep["state"] in ("CANCELED", "FINISHED"):
            return True
        if sweep["state"] != "RUNNING":
            return False  # PAUSED: agents wait for a resume
        if self._suggest(sweep, dry=True) is not None:
            return False
        # Exhausted.  Wait for every run in flight: a crash (retry_failed) or a dropped
        # hand-out would put a point back, and an agent must still be there to take it.
        if any(r["state"] in ACTIVE_RUN_STATES for r in self.store.runs_of_sweep(sweep["id"])):
            return False
        self.store.update_sweep(sweep["id"], state="FINISHED")
        log.info("sweep %s finished", sweep["id"])
        return True

    # -- engine -------------------------------------------------------------------------------
    def _engine_runs(self, sweep: dict, with_history: bool) -> list:
        SweepRun = sweeps_engine().SweepRun
        engine, _, retry = split_config(sweep["config"])
        runs = self.store.runs_of_sweep(sweep["id"])
        failures = Counter(r["point"] for r in runs if _known_failure(r))
        out = []
        for r in runs:
            if r["state"] == "reclaimed":
                continue
            if (retry and engine.get("method") == "grid" and _known_failure(r)
                    and failures[r["point"]] <= retry):
                continue  # hidden from the engine, so it hands the point out again
            state = "running" if r["state"] == "ending" else r["state"]
            # Alias names: sweeps 0.2 on pydantic 2 silently drops the field names.
            out.append(SweepRun(name=r["id"], state=state, config=r["config"],
                                summaryMetrics=r["summary"] or {},
                                sampledHistory=self.store.history(r["id"]) if with_history else []))
        return out

    def _suggest(self, sweep: dict, dry: bool = False) -> dict | None:
        sweeps = sweeps_engine()
        engine, run_cap, _ = split_config(sweep["config"])
        # A dry question ("is anything left?") needs no history: only grid runs out by itself.
        needs_history = engine.get("method") == "bayes" and not dry
        runs = self._engine_runs(sweep, with_history=needs_history)
        if run_cap is not None and len(runs) >= run_cap:
            return None
        if dry and engine.get("method") != "grid":
            return {}
        try:
            suggestion = sweeps.next_run(engine, runs)
        except Exception:
            log.exception("the sweeps engine failed on sweep %s", sweep["id"])
            return {} if dry else None
        return None if suggestion is None else jsonable(suggestion.config)

    def _early_stop(self, sweep: dict) -> None:
        sweeps = sweeps_engine()
        engine, _, _ = split_config(sweep["config"])
        # The flag lives in the database: results that reached another server count here too.
        if not engine.get("early_terminate") or not sweep["early_stop_due"]:
            return
        self.store.set_early_stop_due(sweep["id"], False)
        try:
            to_stop = sweeps.stop_runs(engine, self._engine_runs(sweep, with_history=True))
        except Exception:
            log.exception("early termination failed on sweep %s", sweep["id"])
            return
        for run in to_stop:
            if not self.store.run(run.name)["should_stop"]:
                log.info("run %s of sweep %s: early stop", run.name, sweep["id"])
                self.store.update_run(run.name, should_stop=1)

    # -- side channel -------------------------------------------------------------------------
    def _run(self, run_id: str) -> dict:
        run = self.store.run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        return run

    def run_started(self, run_id: str) -> None:
        with self.store.transaction():
            run = self._run(run_id)
            fields = {"started": 1, "started_at": run["started_at"] or time.time()}
            if run["state"] == "pending":
                fields["state"] = "running"
            self.store.update_run(run_id, **fields)

    def run_history(self, run_id: str, rows) -> None:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadInput("'rows' must be a list of objects")
        with self.store.transaction():
            run = self._run(run_id)
            self.store.append_history(run_id, rows)
            if not (run["started"] and run["reported"]):
                # `reported`: no server reads this run's live file, which would overwrite these rows.
                self.store.update_run(run_id, started=1, reported=1, started_at=run["started_at"] or time.time())
            self.store.set_early_stop_due(run["sweep_id"])

    def run_finished(self, run_id: str, body: dict) -> None:
        exit_code = body.get("exit_code", 0)
        if not isinstance(exit_code, int) or isinstance(exit_code, bool):
            raise BadInput("'exit_code' must be an integer")
        state = body.get("state") or ("finished" if exit_code == 0 else "failed")
        if state not in ("finished", "failed", "killed", "crashed"):
            raise BadInput(f"unknown run state {state!r}")
        summary = body.get("summary") or {}
        if not isinstance(summary, dict):
            raise BadInput("'summary' must be an object")
        with self.store.transaction():
            run = self._run(run_id)
            if run["should_stop"] and state == "failed":
                state = "killed"  # pyagent finishes a stopped run with exit code 1
            if run["state"] == "reclaimed":
                # Settled as never started, yet it ran: its point may now run twice.  The report
                # is the truth, so it is kept; the log says the evidence was wrong.
                log.warning("run %s reported a finish after its point was handed out again", run_id)
            self.store.update_run(run_id, state=state, exit_code=exit_code, summary=jsonable(summary),
                                  started=1, note=None, ended_at=time.time())
            self.store.set_early_stop_due(run["sweep_id"])


def _known_failure(run: dict) -> bool:
    """Failed or crashed for a known reason.  A run whose result is unknown (``note``) may
    have finished fine, so ``retry_failed`` does not run its point again."""
    return run["state"] in ("failed", "crashed") and not run.get("note")


def _parse_run_state(run_state) -> set[str]:
    if run_state is None:
        return set()
    if isinstance(run_state, str):
        try:
            run_state = json.loads(run_state) if run_state.strip() else {}
        except ValueError:
            raise BadInput("runState must be a JSON object") from None
    if not isinstance(run_state, dict):
        raise BadInput("runState must be a JSON object")
    return {str(k) for k, v in run_state.items() if v}
