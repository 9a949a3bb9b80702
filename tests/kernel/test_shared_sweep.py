"""Several kernels on one local sweep: what W&B's own page tells Jupyter users to do (paste
one sweep id into several notebooks), with sweep_magic in each.

Each kernel opens its own embedded server on the same database (``SWEEP_MAGIC_HOME``);
every grid point must still run exactly once, across kernels, through a kernel's death
and through a kernel restart.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from kernel_helpers import Kernel

pytestmark = pytest.mark.kernel
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETUP = "%load_ext sweep_magic\nimport json, os, time\nimport sweep_magic"
GRID = """config = {{"method": "grid", "metric": {{"name": "loss", "goal": "minimize"}},
          "parameters": {{"x": {{"values": list(range({n}))}}, "pause": {{"value": {pause}}}}}}}
sid = sweep_magic.local_sweep(config, project="shared")
print(sid)"""
CELL = """%%sweep_parallel {sid} --cpus 1 --wait --no-widget
import time
import wandb

def train():
    with wandb.init() as run:
        time.sleep(run.config.pause)
        run.log({{"loss": run.config.x}})
"""
SUMMARY = ("s = sweep_magic.sessions()[-1]\n"
           "print(json.dumps({'kernel': os.getpid(), 'results': s.results(), "
           "'workers': [a.pid for a in s.agents()]}))")


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    # Both kernels inherit this home: one server database, as two notebooks of one user.
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    monkeypatch.delenv("SWEEP_MAGIC_WAIT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    made: list[Kernel] = []

    def make() -> Kernel:
        k = Kernel()
        made.append(k)
        k.run(SETUP)
        return k

    yield make
    for k in made:
        k.close()


def _db_runs(home, sid: str) -> list[dict]:
    """The sweep's runs as the database holds them, read by a server of the test's own."""
    from sweep_magic.server import serve

    server = serve(db=os.path.join(home, "server.sqlite3"))
    try:
        # The store keeps configs as the wandb client sends them: {name: {"value": v}}.
        return [{"run_id": r["id"], "state": r["state"], "x": r["config"]["x"]["value"]} for r in server.runs(sid)]
    finally:
        server.stop()


def _summary(kernel: Kernel) -> dict:
    return json.loads(kernel.run(SUMMARY).strip().splitlines()[-1])


def _gone_within(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_two_kernels_share_a_grid_exactly_once(kernels, tmp_path):
    a, b = kernels(), kernels()
    sid = a.run(GRID.format(n=12, pause=0.3)).strip()
    b.run(f"sid = {sid!r}")
    cell_a, cell_b = a.start(CELL.format(sid="{sid}")), b.start(CELL.format(sid="{sid}"))
    a.finish(cell_a)
    b.finish(cell_b)
    got_a, got_b = _summary(a)["results"], _summary(b)["results"]
    assert got_a and got_b, "both kernels' agents got runs"
    xs = sorted(r["config"]["x"] for r in got_a + got_b)
    assert xs == list(range(12)), xs  # every point once, none twice
    assert {r["state"] for r in got_a + got_b} == {"finished"}
    runs = _db_runs(tmp_path, sid)
    assert len(runs) == 12 and sorted(r["x"] for r in runs) == list(range(12))


def test_a_killed_kernel_does_not_strand_the_other(kernels, tmp_path):
    a, b = kernels(), kernels()
    sid = a.run(GRID.format(n=10, pause=1.5)).strip()
    b.run(f"sid = {sid!r}")
    a.start(CELL.format(sid="{sid}"))
    cell_b = b.start(CELL.format(sid="{sid}"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(r["state"] == "running" for r in _db_runs(tmp_path, sid)):
        time.sleep(0.5)
    kernel_a = a.km.provisioner.process.pid
    workers_a = [p.pid for p in psutil.Process(kernel_a).children(recursive=True)]
    os.kill(kernel_a, signal.SIGKILL)  # kernel A dies with its embedded server mid-sweep
    assert not _gone_within(workers_a, 10), "kernel A's workers outlived it"
    b.finish(cell_b, timeout=300)  # B's sweep carries on and ends by itself
    runs = _db_runs(tmp_path, sid)
    xs = [r["x"] for r in runs]
    assert sorted(set(xs)) == list(range(10)) and len(xs) == 10, xs  # each point once
    assert {r["state"] for r in runs} <= {"finished", "crashed"}
    assert any(r["state"] == "finished" for r in runs)


def test_kernel_restart_mid_sweep_resumes_the_grid(kernels, tmp_path):
    k = kernels()
    sid = k.run(GRID.format(n=6, pause=2.0)).strip()
    k.start(CELL.format(sid="{sid}"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(r["state"] == "finished" for r in _db_runs(tmp_path, sid)):
        time.sleep(0.5)
    before = {r["run_id"]: r for r in _db_runs(tmp_path, sid)}
    finished_before = {r["x"] for r in before.values() if r["state"] == "finished"}
    assert finished_before, "a run finished before the restart"
    old_kernel = k.km.provisioner.process.pid
    old_workers = [p.pid for p in psutil.Process(old_kernel).children(recursive=True)]
    k.km.restart_kernel(now=True)
    k.kc.wait_for_ready(timeout=60)
    assert not _gone_within(old_workers, 10), "the old kernel's workers outlived the restart"
    k.run(SETUP)
    k.run(f"sid = {sid!r}")
    k.run(CELL.format(sid="{sid}"), timeout=300)
    runs = _db_runs(tmp_path, sid)
    xs = [r["x"] for r in runs]
    assert sorted(set(xs)) == list(range(6)), xs  # the sweep resumed to the end
    assert all(xs.count(x) == 1 for x in finished_before), "a finished point ran again"
    for run in runs:
        if run["run_id"] in before and before[run["run_id"]]["state"] == "running":
            assert run["state"] == "crashed", run  # running when the kernel went away
    assert {r["state"] for r in runs} <= {"finished", "crashed"}
