"""For the panel tests: a session that yields real ``SessionSnapshot``s, a real shell, GPUs.

``FakeSession`` keeps the API surface the panel uses (``snapshot``, ``stop``,
``drain_agent``/``kill_agent``/``restart_agent``, ``subscribe``) and notifies
subscribers from the caller's thread, as the supervisor does from its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

from sweep_magic.devices import GpuInfo, GpuProcess
from sweep_magic.snapshot import AgentSnapshot, RunSnapshot, SessionSnapshot


def four_gpus() -> list:
    """Four H200s; GPU 2 has another user's (bob's) process holding 30 GiB."""
    total = 143_771.0
    gpus = []
    for i in range(4):
        procs = (GpuProcess(pid=4242, user="bob", memory_mib=30_720.0, name="python"),) if i == 2 else ()
        used = 512.0 + sum(p.memory_mib for p in procs)
        gpus.append(GpuInfo(index=i, uuid=f"GPU-{i:08d}", name="NVIDIA H200", memory_total_mib=total,
                            memory_used_mib=used, utilization_pct=12.0 if i == 0 else 0.0,
                            processes=procs, visible_id=f"GPU-{i:08d}"))
    return gpus


def real_shell():
    """A real IPython shell (not the singleton, so test_magic's shell is unaffected) with a
    ``train`` function defined in its namespace, as a notebook would have it."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell(config=config)
    shell.run_cell("import time\ndef train():\n    pass\n", store_history=False)
    return shell


_ids = itertools.count()


class FakeSession:
    def __init__(self, agents=2, sweep_id="sweep1", metric_name="loss", metric_goal="minimize"):
        self.id = f"fake-{next(_ids)}"
        self.sweep_id = sweep_id
        self.calls = []
        self.stopped = False
        self._lock = threading.Lock()
        self._subs = []
        self._snap = SessionSnapshot(
            session_id=self.id, sweep_id=sweep_id, state="running",
            agents=tuple(AgentSnapshot(index=i, device=f"cpu {i}", state="idle", pid=1000 + i) for i in range(agents)),
            metric_name=metric_name, metric_goal=metric_goal, started_at=time.time(), version=1,
        )

    # -- the API surface the panel uses
    def snapshot(self):
        return self._snap

    def subscribe(self, callback):
        self._subs.append(callback)

    def stop(self, drain=False):
        self.calls.append(("stop", drain))
        self.stopped = True
        agents = tuple(dataclasses.replace(a, state="killed", current_run=None) for a in self._snap.agents)
        self._change(state="stopped", agents=agents, ended_at=time.time())

    def drain_agent(self, i):
        self.calls.append(("drain_agent", i))

    def kill_agent(self, i):
        self.calls.append(("kill_agent", i))

    def restart_agent(self, i):
        self.calls.append(("restart_agent", i))

    # -- what a test does to move the state along
    def _change(self, **fields):
        with self._lock:
            self._snap = dataclasses.replace(self._snap, version=self._snap.version + 1, **fields)
        for callback in self._subs:
            callback()

    def update_agent(self, i, **fields):
        agents = list(self._snap.agents)
        agents[i] = dataclasses.replace(agents[i], **fields)
        self._change(agents=tuple(agents))

    def start_run(self, agent, name, config, metrics=None, step=None):
        run = RunSnapshot(run_id=f"r{len(self._snap.runs)}", agent=agent, name=name, config=config,
                          state="running", metrics=metrics or {}, step=step, started_at=time.time())
        self._change(runs=self._snap.runs + (run,))
        self.update_agent(agent, state="running", current_run=run.run_id)
        return run.run_id

    def _update_run(self, run_id, **fields):
        runs = tuple(dataclasses.replace(r, **fields) if r.run_id == run_id else r for r in self._snap.runs)
        self._change(runs=runs)

    def log_metrics(self, run_id, step, metrics):
        self._update_run(run_id, step=step, metrics=metrics)

    def finish_run(self, run_id, state="finished", summary=None, error=None):
        self._update_run(run_id, state=state, summary=summary or {}, error=error, ended_at=time.time())
        agent = next(r.agent for r in self._snap.runs if r.run_id == run_id)
        a = self._snap.agents[agent]
        self.update_agent(agent, state="idle", current_run=None, runs_done=a.runs_done + 1)
