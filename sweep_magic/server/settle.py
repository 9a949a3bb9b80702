"""Settling runs nobody reported: the finalizer, the reaper, and what proves a run started.

A run whose agent cannot report (a plain ``wandb.agent``, the ``wandb agent`` CLI) or whose
report never came is settled here, from evidence every process sharing the database can see:

* the run's folder or ``.wandb`` file on disk (under the dirs stored with its agent),
* ``runs.seen`` (an agent's heartbeat listed it) and ``runs.started`` (the side channel said so),
* ``agents.last_seen`` (every heartbeat writes it) against the agent's own stored timeout.

The rule that keeps each grid point to one run: a run that **started** is never handed out
again.  It started when its folder or run file exists, when a plain agent listed it, or when
the side channel reported it.  When its result cannot be read, it is ``crashed`` with a
``note`` (the result is unknown; ``retry_failed`` does not re-run it), never "never started".
Only a run with none of that evidence is ``reclaimed``, which frees its point.

Threads (one each per server process)::

    finalizer  ending runs of this process's agents → read run file → settle   (queue)
    reaper     every 1 s: agents silent past their timeout → gone, runs → ending
               every 2 s: live run files for hyperband (runs of this server's agents)
               every 5 s: ending runs nobody settled for 20 s (their server died) → queue

Every settlement re-reads the run inside one transaction and does nothing if another process
settled it first; reading a run file (a subprocess) never happens inside a transaction.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import queue
import threading
import time

from sweep_magic.server import results_reader
from sweep_magic.server.config import jsonable

log = logging.getLogger(__name__)

# A grid point handed out and dropped this many times is marked failed, so a function that
# dies before wandb.init cannot keep a sweep busy for ever.
MAX_RECLAIMS_PER_POINT = 3
# An `ending` run is settled by the server whose agent dropped it, within a second or so.
# One still ending after this long lost its server; any other server takes it over.
ORPHAN_ENDING_S = 20.0


def agent_timeout(agent: dict, default: float) -> float:
    """Seconds of silence after which ``agent`` is gone, judged the same way by every process."""
    hb = agent.get("heartbeat_s")
    if hb:
        return max(5.0, 3 * hb + 10)
    return agent.get("timeout_s") or default


def search_dirs(agent: dict, own: list[str]) -> list[str]:
    """Where the agent's run files may be: the agent's own WANDB_DIR (hello), the dirs of the
    server that registered it (stored with the agent), and this server's."""
    stored = json.loads(agent.get("search_dirs") or "[]")
    mine = [agent["wandb_dir"]] if agent.get("wandb_dir") else []
    return list(dict.fromkeys(mine + stored + list(own)))


def run_folder(run_id: str, dirs: list[str]) -> str | None:
    """The run's folder (``<dir>/wandb/*-<id>`` or ``<dir>/*-<id>``): wandb.init made it."""
    for base in dirs:
        root = glob.escape(base)
        for pattern in (os.path.join(root, "wandb", f"*-{run_id}"), os.path.join(root, f"*-{run_id}")):
            found = [p for p in glob.glob(pattern) if os.path.isdir(p)]
            if found:
                return found[0]
    return None


def look_on_disk(run_id: str, dirs: list[str]):
    """``(result, unknown_because)``: the run file's content, or why the run surely started
    though its result cannot be read, or ``(None, None)``: no trace of the run on disk."""
    try:
        path = results_reader.find_run_file(run_id, dirs)
    except Exception as err:  # noqa: BLE001 - cannot even search: no proof it never started
        return None, f"its run file could not be searched for ({err})"
    if path is not None:
        try:
            # The run is over: no exit record means it died (crashed), not "still running".
            return results_reader.read_run_file(path, run_id=run_id, ended=True, keep=False), None
        except Exception as err:  # noqa: BLE001 - any reader failure: the run exists, its result is unknown
            log.warning("run %s: cannot read its run file %s; its result is unknown: %s", run_id, path, err)
            return None, f"its run file could not be read ({str(err)[:300]})"
    folder = run_folder(run_id, dirs)
    if folder is not None:
        return None, f"its run folder {folder} has no run file"
    return None, None


class Settler:
    """The settling side of one ``Controller`` (its store, dirs, URL and default timeout)."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.store = ctl.store
        self._queue: queue.Queue = queue.Queue()
        self._queued: set[str] = set()
        self._queued_lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.enqueue(r["id"] for r in self.store.runs_in_state("ending"))  # left by a previous life
        for target, name in ((self._finalizer_loop, "finalizer"), (self._reaper_loop, "reaper")):
            t = threading.Thread(target=target, name=f"sweep-server-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._closing.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    def enqueue(self, run_ids) -> None:
        for run_id in run_ids:
            with self._queued_lock:
                if run_id in self._queued:
                    continue
                self._queued.add(run_id)
            self._queue.put(run_id)

    # -- finalizing one run -------------------------------------------------------------------
    def _finalizer_loop(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None or self._closing.is_set():
                return
            try:
                self.finalize(run_id)
            except Exception:
                log.exception("finalizing run %s failed", run_id)
            finally:
                with self._queued_lock:
                    self._queued.discard(run_id)

    def finalize(self, run_id: str) -> None:
        """Settle an ``ending`` run from its run file, or mark it crashed, or reclaim it."""
        run = self.store.run(run_id)
        if run is None or run["state"] != "ending":
            return
        agent = self.store.agent(run["agent_id"]) or {}
        result, unknown = look_on_disk(run_id, search_dirs(agent, self.ctl.wandb_dirs))  # no lock held
        with self.store.transaction():
            run = self.store.run(run_id)
            if run is None or run["state"] != "ending":
                return  # the side channel or another process settled it meanwhile
            agent = self.store.agent(run["agent_id"]) or {}
            sweep = self.store.sweep(run["sweep_id"]) or {"config": {}}
            now = time.time()
            if result is not None:
                state = result.state
                if run["should_stop"] and state != "finished":
                    state = "killed"
                metric = (sweep["config"].get("metric") or {}).get("name")
                rows = [keep_metric(row, metric) for row in result.history]
                if metric:
                    rows = [r for r in rows if metric in r]
                self.store.replace_history(run_id, rows)
                self.store.update_run(run_id, state=state, exit_code=result.exit_code, started=1,
                                      summary=jsonable(result.summary), ended_at=now)
            elif unknown:
                self._unknown(run, unknown, now)
            elif run["started"]:
                self._unknown(run, "it reported its start, but no run file was found", now)
            elif run["seen"] and not agent.get("prefetch"):
                # A plain agent lists a run only while it runs (it never queues one ahead).
                self._unknown(run, "its agent listed it as running, but no run file was found", now)
            else:
                self.reclaim(run, now)
            self.store.set_early_stop_due(run["sweep_id"])

    def _unknown(self, run: dict, why: str, now: float) -> None:
        log.warning("run %s started but its result is unknown (%s): marking it crashed", run["id"], why)
        self.store.update_run(run["id"], state="crashed", started=1, note=f"result unknown: {why}",
                              ended_at=now)

    def reclaim(self, run: dict, now: float) -> None:
        """Free the point of a run that provably never started (inside a transaction)."""
        earlier = sum(1 for r in self.store.runs_of_sweep(run["sweep_id"])
                      if r["point"] == run["point"] and r["state"] == "reclaimed")
        if earlier + 1 >= MAX_RECLAIMS_PER_POINT:
            log.warning("run %s never started %d times; marking it failed", run["id"], earlier + 1)
            self.store.update_run(run["id"], state="failed", ended_at=now)
        else:
            log.info("run %s never started; its point goes back to the queue", run["id"])
            self.store.update_run(run["id"], state="reclaimed", ended_at=now)

    # -- the reaper ---------------------------------------------------------------------------
    def _reaper_loop(self) -> None:
        tick = 0
        while not self._closing.wait(1.0):
            tick += 1
            for every, job in ((1, self.reap), (2, self.read_live_history), (5, self.adopt_orphans)):
                if tick % every == 0:
                    try:
                        job()
                    except Exception:
                        log.exception("%s failed", job.__name__)

    def reap(self, now: float | None = None) -> list[str]:
        """Mark agents silent past their timeout as gone; their runs go to ``ending``.

        Judged from ``agents.last_seen``, which every server writes on every heartbeat, so an
        agent talking to another server is as alive here as there."""
        default = self.ctl.agent_timeout

        def silent(agent, t):
            return t - agent["last_seen"] > agent_timeout(agent, default)

        t = time.time() if now is None else now
        if not any(silent(a, t) for a in self.store.live_agents()):
            return []  # the common case costs a read, not the write lock
        gone, ending = [], []
        with self.store.transaction():
            t = time.time() if now is None else now  # heartbeats committed while we waited count
            for agent in self.store.live_agents():
                if not silent(agent, t):
                    continue
                log.info("agent %s stopped heartbeating; treating it as gone", agent["id"])
                self.store.update_agent(agent["id"], gone=1)
                gone.append(agent["id"])
                for run in self.store.active_runs_of_agent(agent["id"]):
                    if run["state"] != "ending":
                        self.store.update_run(run["id"], state="ending", ending_at=t)
                    ending.append(run["id"])
        self.enqueue(ending)
        return gone

    def adopt_orphans(self, now: float | None = None) -> list[str]:
        """Queue ``ending`` runs nobody settled for ``ORPHAN_ENDING_S``: their server died."""
        now = time.time() if now is None else now
        orphans = [r["id"] for r in self.store.runs_in_state("ending")
                   if r["ending_at"] is None or now - r["ending_at"] > ORPHAN_ENDING_S]
        self.enqueue(orphans)
        return orphans

    def read_live_history(self) -> int:
        """Hyperband for runs nobody reports (CLI agents): read their run files while they run.

        Best effort: wandb-core writes the file in 32 KiB blocks, so a run's history shows up
        here only once it has logged a block's worth.  Each server reads the runs of its own
        agents only (several servers need not read one file).  Returns how many runs got new
        history.  Runs fed by the side channel are skipped."""
        todo = []
        for sweep_id in self.store.sweep_ids(("RUNNING",)):
            sweep = self.store.sweep(sweep_id)
            if not sweep or not sweep["config"].get("early_terminate"):
                continue
            metric = (sweep["config"].get("metric") or {}).get("name")
            for run in self.store.running_runs_of_sweep(sweep_id):
                if run["reported"]:
                    continue
                agent = self.store.agent(run["agent_id"]) or {}
                if self.ctl.server_url and agent.get("server_url") not in (None, self.ctl.server_url):
                    continue
                todo.append((run["id"], sweep_id, metric, search_dirs(agent, self.ctl.wandb_dirs)))
        updated = 0
        for run_id, sweep_id, metric, dirs in todo:
            try:
                found = results_reader.lookup(run_id, dirs, live=True)  # outside any transaction
            except results_reader.ResultsReaderError as err:
                # Live history is for hyperband only: a damaged file skips this poll, and the
                # run's end is settled (as "result unknown") when it ends.
                log.warning("run %s: live history unreadable: %s", run_id, err)
                continue
            if found is None:
                continue
            rows = [keep_metric(r, metric) for r in found.history]
            rows = [r for r in rows if metric in r] if metric else rows
            with self.store.transaction():
                run = self.store.run(run_id)
                if (run and run["state"] == "running" and not run["reported"]
                        and len(rows) > self.store.history_count(run_id)):
                    self.store.replace_history(run_id, rows)
                    self.store.set_early_stop_due(sweep_id)
                    updated += 1
        return updated


def keep_metric(row: dict, metric: str | None) -> dict:
    if metric is None:
        return {k: v for k, v in row.items() if not k.startswith("_") or k == "_step"}
    return {k: v for k, v in row.items() if k in (metric, "_step")}
