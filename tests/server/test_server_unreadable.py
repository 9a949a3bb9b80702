"""Reading a result must never re-issue work (issue 10).

A plain agent cannot report, so the server reads the run's ``.wandb`` file.  When that read
fails (wandb 0.28/0.30 failed with "could not open TTY"; here the run file is really damaged),
the run still STARTED: it is ``crashed`` with a note, and its grid point is not handed out
again, not even under ``retry_failed``.  The files are damaged for real, by the runs
themselves; nothing in the server is patched.
"""

from __future__ import annotations

import json
import sys

import pytest
from server_helpers import (
    agent_env,
    graphql,
    offline_run_dirs,
    reap,
    start,
    tail,
    wait_all,
    write_script,
)

from sweep_magic.server import serve
from sweep_magic.server.controller import Controller
from sweep_magic.server.store import Store

# y=a: the run file is overwritten with garbage (wandb's reader refuses it);
# y=b: the run file is deleted, its folder stays;  y=c: left alone (read normally).
DAMAGING_AGENT = """
import os, sys, wandb
from sweep_magic import _wandb

# A 1 s run ends between two heartbeats: never listed (wandb before 0.28 beats every 5 s anyway).
_wandb.set_heartbeat(2, _wandb.check(("agent",)))

def train():
    with wandb.init() as run:
        cfg = dict(run.config)
        run.log({"loss": float(cfg["x"]) ** 2})
        run_dir, run_id = os.path.dirname(run.dir), run.id
    path = os.path.join(run_dir, f"run-{run_id}.wandb")
    if cfg["y"] == "a":
        with open(path, "wb") as f:
            f.write(b"this is not a W&B transaction log")
    elif cfg["y"] == "b":
        os.remove(path)

wandb.agent(sys.argv[1], function=train)
"""

GRID12 = {"method": "grid", "retry_failed": 1, "metric": {"name": "loss", "goal": "minimize"},
          "parameters": {"x": {"values": [0, 1, 2, 3]}, "y": {"values": ["a", "b", "c"]}}}
RUNS = ("query SweepRuns($sweep: String!) { project { sweep(sweepName: $sweep) { state "
        "runs { edges { node { name state notes failed config summaryMetrics } } } } } }")


def test_unreadable_run_files_never_reissue_a_grid_point(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        sid = srv.create_sweep(GRID12, project="p")
        script = write_script(tmp_path / "agent.py", DAMAGING_AGENT)
        env = agent_env(srv.env(), wd)
        procs = [start([sys.executable, script, sid], env, tmp_path, tmp_path / f"agent{i}.log") for i in range(2)]
        codes = wait_all(procs, 200)
        logs = "\n".join(tail(tmp_path / f"agent{i}.log") for i in range(2))
        assert codes == [0, 0], logs

        everything = srv.controller.store.runs_of_sweep(sid)
        assert len(everything) == 12, [(r["state"], r["point"], r.get("note")) for r in everything]  # none reclaimed
        assert len({r["point"] for r in everything}) == 12
        assert len(offline_run_dirs(wd)) == 12  # and each point ran once on disk
        by_y = {y: [r for r in everything if r["config"]["y"]["value"] == y] for y in "abc"}
        for run in by_y["a"]:
            assert run["state"] == "crashed" and "could not be read" in run["note"], run
        for run in by_y["b"]:
            assert run["state"] == "crashed" and "has no run file" in run["note"], run
        for run in by_y["c"]:
            assert run["state"] == "finished" and run["note"] is None
            assert run["summary"]["loss"] == run["config"]["x"]["value"] ** 2
        assert srv.sweep_state(sid) == "FINISHED"

        # What wandb's client sees: wandb states, the reason in the run's notes.
        sweep = graphql(srv.env(), RUNS, {"sweep": sid})["project"]["sweep"]
        nodes = {n["name"]: n for n in (e["node"] for e in sweep["runs"]["edges"])}
        assert sweep["state"] == "FINISHED" and len(nodes) == 12
        for run in by_y["a"] + by_y["b"]:
            node = nodes[run["id"]]
            assert node["state"] == "crashed" and node["failed"] and node["notes"].startswith("result unknown")
            assert json.loads(node["summaryMetrics"]) == {}  # unknown, not an empty success
    finally:
        reap(procs)
        srv.stop()


# -- the same rules, one decision at a time (no agents) --------------------------------------
@pytest.fixture
def ctl(tmp_path):
    controller = Controller(Store(str(tmp_path / "db" / "s.sqlite3")), wandb_dirs=[str(tmp_path / "wd")])
    yield controller
    controller.store.close()


def _handed_out_and_gone(ctl, config):
    """A plain agent takes a run, which ends before any heartbeat lists it; returns its id."""
    sid, _ = ctl.create_sweep(config)
    agent = ctl.create_agent(sid, "h")
    run_id = ctl.heartbeat(agent, "{}")[0]["run_id"]
    ctl.heartbeat(agent, "{}")  # not listed: ending (and a second point handed out)
    assert ctl.store.run(run_id)["state"] == "ending"
    return sid, agent, run_id


def _run_folder(tmp_path, run_id):
    folder = tmp_path / "wd" / "wandb" / f"offline-run-20260101_000000-{run_id}"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("damage", ["garbage", "folder_only", "file_is_a_folder"])
def test_started_run_with_unreadable_result_is_crashed_not_reclaimed(ctl, tmp_path, damage):
    config = {"method": "grid", "retry_failed": 2, "parameters": {"x": {"values": [1, 2, 3]}}}
    sid, agent, run_id = _handed_out_and_gone(ctl, config)
    folder = _run_folder(tmp_path, run_id)
    if damage == "garbage":
        (folder / f"run-{run_id}.wandb").write_bytes(b"\x00garbage" * 64)
    elif damage == "file_is_a_folder":
        (folder / f"run-{run_id}.wandb").mkdir()
    ctl.finalize(run_id)
    run = ctl.store.run(run_id)
    assert run["state"] == "crashed" and run["started"] and run["note"].startswith("result unknown")
    # Its point is used: the engine gets the other points, then nothing (retry_failed ignores it).
    points = {r["config"]["x"]["value"] for r in ctl.store.runs_of_sweep(sid)}
    for other in ctl.store.runs_of_sweep(sid):
        if other["id"] != run_id:
            ctl.run_finished(other["id"], {"exit_code": 0})
    while (cmd := ctl.heartbeat(agent, "{}")) and cmd[0]["type"] == "run":
        points_now = cmd[0]["args"]["x"]["value"]
        assert points_now not in points
        points.add(points_now)
        ctl.run_finished(cmd[0]["run_id"], {"exit_code": 0})
    assert cmd == [{"type": "exit"}] and points == {1, 2, 3}
    assert len(ctl.visible_runs(sid)) == 3


def test_a_late_finish_report_replaces_the_unknown_result(ctl, tmp_path):
    _, _, run_id = _handed_out_and_gone(ctl, {"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
    _run_folder(tmp_path, run_id)
    ctl.finalize(run_id)
    assert ctl.store.run(run_id)["note"]
    ctl.run_finished(run_id, {"exit_code": 0, "summary": {"loss": 1.5}})
    run = ctl.store.run(run_id)
    assert run["state"] == "finished" and run["note"] is None and run["summary"] == {"loss": 1.5}


def test_only_a_run_without_any_trace_is_reclaimed(ctl, tmp_path):
    _, _, run_id = _handed_out_and_gone(ctl, {"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
    # A folder of another run whose id merely ends the same way is not this run's.
    (tmp_path / "wd" / "wandb" / f"offline-run-20260101_000000-x{run_id}").mkdir(parents=True)
    ctl.finalize(run_id)
    assert ctl.store.run(run_id)["state"] == "reclaimed"
