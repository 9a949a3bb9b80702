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

``ending`` runs are finished by a background thread that reads the offline run file with
wandb's reader, so the 30 ms subprocess never runs under the lock.  A second thread (the
reaper) marks agents gone when they stop heartbeating and, for hyperband sweeps, reads the
live run files of runs nobody reports.  One lock serialises every decision: "each grid point
exactly once" needs read-suggest-write to be atomic across agents.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import string
import threading
import time
from collections import Counter

from sweep_magic.server import results_reader
from sweep_magic.server.config import (SWEEP_STATES, BadInput, NotFound, jsonable, sweeps_engine,
                                       point_key, split_config, validate_config)
from sweep_magic.server.store import ACTIVE_RUN_STATES, Store

log = logging.getLogger(__name__)

# A grid point handed out and dropped this many times is marked failed, so a function that
# dies before wandb.init cannot keep a sweep busy for ever.
MAX_RECLAIMS_PER_POINT = 3
DEFAULT_AGENT_TIMEOUT = 75.0  # 3 missed 5 s heartbeats + wandb-core's 60 s retry window
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(n: int = 8) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


class Controller:
    """Every decision of one server, over one ``Store``; thread-safe."""

    def __init__(self, store: Store, *, wandb_dirs: list[str] | None = None,
                 agent_timeout: float = DEFAULT_AGENT_TIMEOUT, entity: str = "local"):
        self.store = store
        self.entity = entity
        self.agent_timeout = agent_timeout
        self.wandb_dirs = list(wandb_dirs or [])
        self._lock = threading.RLock()
        self._ending: queue.Queue = queue.Queue()
        self._early_stop_dirty: set[str] = set()
        self._reported: set[str] = set()  # runs whose history comes over the side channel
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            # A restart is our outage, not the agents': give them a fresh grace period.
            self.store.touch_all_agents(time.time())
            for run in self.store.runs_in_state("ending"):
                self._ending.put(run["id"])
            self._early_stop_dirty.update(self.store.sweep_ids(("RUNNING",)))
        for target, name in ((self._finalizer_loop, "finalizer"), (self._reaper_loop, "reaper")):
            t = threading.Thread(target=target, name=f"sweep-server-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._closing.set()
        self._ending.put(None)
        for t in self._threads:
            t.join(timeout=10)

    # -- sweeps -------------------------------------------------------------------------------
    def create_sweep(self, config: dict, *, entity: str | None = None, project: str | None = None,
                     **extra) -> tuple[str, list[str]]:
        warnings = validate_config(config)
        sweep_id = new_id()
        entity = entity or config.get("entity") or self.entity
        project = project or config.get("project") or "uncategorized"
        with self._lock:
            self.store.add_sweep(sweep_id, entity, project, config, **extra)
        log.info("sweep %s created (%s)", sweep_id, config.get("method"))
        return sweep_id, warnings

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        state = state.upper()
        if state not in SWEEP_STATES:
            raise BadInput(f"unknown sweep state {state!r}; use one of {', '.join(SWEEP_STATES)}")
        with self._lock:
            self.sweep(sweep_id)
            self.store.update_sweep(sweep_id, state=state)

    def set_sweep_fields(self, sweep_id: str, **fields) -> None:
        with self._lock:
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
        with self._lock:
            sweep = self.sweep(sweep_id)
            if sweep["state"] in ("CANCELED", "FINISHED"):
                # Allowed (the agent will get `exit`), but worth a line in the log.
                log.info("agent registering on %s sweep %s", sweep["state"].lower(), sweep_id)
            agent_id = new_id()
            self.store.add_agent(agent_id, sweep_id, host)
        return agent_id

    def hello(self, agent_id: str, body: dict) -> None:
        with self._lock:
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
        with self._lock:
            agent = self.store.agent(agent_id)
            if agent is None or agent["gone"]:
                raise NotFound(f"agent {agent_id!r} not found")
            sweep = self.store.sweep(agent["sweep_id"])
            if sweep is None:
                raise NotFound(f"sweep {agent['sweep_id']!r} not found")
            now = time.time()
            self.store.update_agent(agent_id, last_seen=now)
            for run in self.store.active_runs_of_agent(agent_id):
                if run["id"] in listed:
                    if run["state"] == "pending" or not run["seen"]:
                        self.store.update_run(run["id"], state="running", seen=1,
                                              started_at=run["started_at"] or now)
                elif run["state"] in ("pending", "running"):
                    self._to_ending(run["id"])
            self._early_stop(sweep)
            return self._command_for(agent, sweep, listed)

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
        failures = Counter(r["point"] for r in runs if r["state"] in ("failed", "crashed"))
        out = []
        for r in runs:
            if r["state"] == "reclaimed":
                continue
            if (retry and engine.get("method") == "grid" and r["state"] in ("failed", "crashed")
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
        if not engine.get("early_terminate") or sweep["id"] not in self._early_stop_dirty:
            return
        self._early_stop_dirty.discard(sweep["id"])
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
        with self._lock:
            run = self._run(run_id)
            fields = {"started": 1, "started_at": run["started_at"] or time.time()}
            if run["state"] == "pending":
                fields["state"] = "running"
            self.store.update_run(run_id, **fields)

    def run_history(self, run_id: str, rows) -> None:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadInput("'rows' must be a list of objects")
        with self._lock:
            run = self._run(run_id)
            self._reported.add(run_id)
            self.store.append_history(run_id, rows)
            if not run["started"]:
                self.store.update_run(run_id, started=1, started_at=run["started_at"] or time.time())
            self._early_stop_dirty.add(run["sweep_id"])

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
        with self._lock:
            run = self._run(run_id)
            if run["should_stop"] and state == "failed":
                state = "killed"  # pyagent finishes a stopped run with exit code 1
            self.store.update_run(run_id, state=state, exit_code=exit_code, summary=jsonable(summary),
                                  started=1, ended_at=time.time())
            self._early_stop_dirty.add(run["sweep_id"])

    # -- runs nobody reported -----------------------------------------------------------------
    def _to_ending(self, run_id: str) -> None:
        self.store.update_run(run_id, state="ending")
        self._ending.put(run_id)

    def _finalizer_loop(self) -> None:
        while True:
            run_id = self._ending.get()
            if run_id is None or self._closing.is_set():
                return
            try:
                self.finalize(run_id)
            except Exception:
                log.exception("finalizing run %s failed", run_id)

    def finalize(self, run_id: str) -> None:
        """Settle an ``ending`` run from its run file, or reclaim it / mark it crashed."""
        with self._lock:
            run = self.store.run(run_id)
            if run is None or run["state"] != "ending":
                return  # the side channel won the race
            agent = self.store.agent(run["agent_id"]) or {}
            dirs = self.wandb_dirs + ([agent["wandb_dir"]] if agent.get("wandb_dir") else [])
        found = results_reader.lookup(run_id, dirs)  # outside the lock: a subprocess
        with self._lock:
            run = self.store.run(run_id)
            if run is None or run["state"] != "ending":
                return
            sweep = self.store.sweep(run["sweep_id"]) or {"config": {}}
            if found is not None:
                state = found.state
                if run["should_stop"] and state != "finished":
                    state = "killed"
                metric = (sweep["config"].get("metric") or {}).get("name")
                rows = [_keep(row, metric) for row in found.history]
                if metric:
                    rows = [r for r in rows if metric in r]
                self.store.replace_history(run_id, rows)
                self.store.update_run(run_id, state=state, exit_code=found.exit_code, started=1,
                                      summary=jsonable(found.summary), ended_at=time.time())
            elif run["started"] or (run["seen"] and not agent.get("prefetch")):
                # It ran (a plain agent lists a run only while it runs) and left no result.
                self.store.update_run(run_id, state="crashed", ended_at=time.time())
            else:
                self._reclaim(run)
            self._early_stop_dirty.add(run["sweep_id"])

    def _reclaim(self, run: dict) -> None:
        earlier = sum(1 for r in self.store.runs_of_sweep(run["sweep_id"])
                      if r["point"] == run["point"] and r["state"] == "reclaimed")
        if earlier + 1 >= MAX_RECLAIMS_PER_POINT:
            log.warning("run %s never started %d times; marking it failed", run["id"], earlier + 1)
            self.store.update_run(run["id"], state="failed", ended_at=time.time())
        else:
            log.info("run %s was never started; its point goes back to the queue", run["id"])
            self.store.update_run(run["id"], state="reclaimed", ended_at=time.time())

    def _reaper_loop(self) -> None:
        tick = 0
        while not self._closing.wait(1.0):
            tick += 1
            try:
                self.reap()
                if tick % 2 == 0:
                    self.read_live_history()
            except Exception:
                log.exception("reaper failed")

    def read_live_history(self) -> int:
        """Hyperband for runs nobody reports (CLI agents): read their run files while they run.

        Best effort: wandb-core writes the file in 32 KiB blocks, so a run's history shows up
        here only once it has logged a block's worth.  Returns how many runs got new history.
        Runs fed by the side channel are skipped."""
        with self._lock:
            todo = []
            for sweep_id in self.store.sweep_ids(("RUNNING",)):
                sweep = self.store.sweep(sweep_id)
                if not split_config(sweep["config"])[0].get("early_terminate"):
                    continue
                metric = (sweep["config"].get("metric") or {}).get("name")
                for run in self.store.runs_of_sweep(sweep_id):
                    if run["state"] == "running" and run["id"] not in self._reported:
                        agent = self.store.agent(run["agent_id"]) or {}
                        dirs = self.wandb_dirs + ([agent["wandb_dir"]] if agent.get("wandb_dir") else [])
                        todo.append((run["id"], sweep_id, metric, dirs))
        updated = 0
        for run_id, sweep_id, metric, dirs in todo:
            found = results_reader.lookup(run_id, dirs, live=True)  # outside the lock: a subprocess
            if found is None:
                continue
            rows = [_keep(r, metric) for r in found.history]
            rows = [r for r in rows if metric in r] if metric else rows
            with self._lock:
                run = self.store.run(run_id)
                if (run and run["state"] == "running" and run_id not in self._reported
                        and len(rows) > self.store.history_count(run_id)):
                    self.store.replace_history(run_id, rows)
                    self._early_stop_dirty.add(sweep_id)
                    updated += 1
        return updated

    def reap(self, now: float | None = None) -> list[str]:
        """Mark agents that stopped heartbeating as gone; settle their runs.  Returns their ids."""
        now = time.time() if now is None else now
        gone = []
        with self._lock:
            for agent in self.store.live_agents():
                hb = agent["heartbeat_s"]
                timeout = max(5.0, 3 * hb + 10) if hb else self.agent_timeout
                if now - agent["last_seen"] <= timeout:
                    continue
                log.info("agent %s stopped heartbeating; treating it as gone", agent["id"])
                self.store.update_agent(agent["id"], gone=1)
                gone.append(agent["id"])
                for run in self.store.active_runs_of_agent(agent["id"]):
                    if run["state"] != "ending":
                        self._to_ending(run["id"])
        return gone


def _keep(row: dict, metric: str | None) -> dict:
    if metric is None:
        return {k: v for k, v in row.items() if not k.startswith("_") or k == "_step"}
    return {k: v for k, v in row.items() if k in (metric, "_step")}


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
