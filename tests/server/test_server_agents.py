"""Real agents against the server: plain ``wandb.agent`` processes, the ``wandb agent`` CLI,
worker stand-ins with the side channel (bayes, hyperband), and ``wandb.Api()`` reading back.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from server_helpers import (
    PYAGENT,
    VENV_BIN,
    WORKER,
    agent_env,
    offline_run_dirs,
    reap,
    start,
    tail,
    wait_all,
    write_script,
)

from sweep_magic.server import serve

GRID12 = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
          "parameters": {"x": {"values": [0, 1, 2, 3]}, "y": {"values": ["a", "b", "c"]}}}


@pytest.fixture
def env_dirs(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    return tmp_path, wd


def _logs(tmp_path, n, stem="agent"):
    return "\n".join(f"--- {stem}{i}\n{tail(tmp_path / f'{stem}{i}.log')}" for i in range(n))


def _distinct(runs):
    return {json.dumps({k: v["value"] for k, v in r["config"].items()}, sort_keys=True) for r in runs}


def test_three_plain_pyagents_share_a_12_point_grid(env_dirs):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        sid = srv.create_sweep(GRID12, project="p")
        script = write_script(tmp_path / "agent.py", PYAGENT)
        env = agent_env(srv.env(), wd)
        procs = [start([sys.executable, script, sid], env, tmp_path, tmp_path / f"agent{i}.log") for i in range(3)]
        codes = wait_all(procs, 200)
        assert codes == [0, 0, 0], _logs(tmp_path, 3)
        runs = srv.runs(sid)
        assert len(runs) == 12 and len(_distinct(runs)) == 12
        assert {r["state"] for r in runs} == {"finished"}, runs
        assert all(r["summary"]["loss"] == r["config"]["x"]["value"] ** 2 for r in runs)  # read from run files
        assert len(offline_run_dirs(wd)) == 12
        assert srv.sweep_state(sid) == "FINISHED"
    finally:
        reap(procs)
        srv.stop()


TRAIN_PROGRAM = """
import argparse, wandb
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
parser.add_argument("--y")
args = parser.parse_args()
with wandb.init() as run:
    assert run.config["x"] == args.x  # the config reached the child both ways
    run.log({"loss": args.x ** 2})
"""


def test_three_cli_agents_share_a_12_point_grid(env_dirs):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        write_script(tmp_path / "train.py", TRAIN_PROGRAM)
        sid = srv.create_sweep(dict(GRID12, program="train.py"), project="p")
        env = agent_env(srv.env(), wd)
        cmd = [os.path.join(VENV_BIN, "wandb"), "agent", "-p", "p", sid]
        procs = [start(cmd, env, tmp_path, tmp_path / f"agent{i}.log") for i in range(3)]
        codes = wait_all(procs, 240)
        assert codes == [0, 0, 0], _logs(tmp_path, 3)
        runs = srv.runs(sid)
        assert len(runs) == 12 and len(_distinct(runs)) == 12
        assert {r["state"] for r in runs} == {"finished"}, (runs, _logs(tmp_path, 3))
        assert all(r["summary"]["loss"] == r["config"]["x"]["value"] ** 2 for r in runs)
        assert len(offline_run_dirs(wd)) == 12
        assert srv.sweep_state(sid) == "FINISHED"
    finally:
        reap(procs)
        srv.stop()


def test_bayes_results_feed_later_suggestions(env_dirs):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        sid = srv.create_sweep({"method": "bayes", "run_cap": 4, "metric": {"name": "loss", "goal": "minimize"},
                                "parameters": {"x": {"min": -2.0, "max": 2.0}}}, project="p")
        env = agent_env(srv.env(), wd)
        script = write_script(tmp_path / "worker.py", WORKER)
        procs = [start([sys.executable, script, sid], env, tmp_path, tmp_path / "agent0.log")]
        assert wait_all(procs, 150) == [0], _logs(tmp_path, 1)
        runs = srv.runs(sid)
        assert len(runs) == 4 and {r["state"] for r in runs} == {"finished"}
        assert all(r["summary"]["loss"] == r["config"]["x"]["value"] for r in runs)
        # Each later suggestion was made after the earlier results were on the server …
        for earlier, later in zip(runs, runs[2:]):
            assert earlier["ended_at"] <= later["created_at"]
        # … and the engine is handed those results.
        engine_runs = srv.controller._engine_runs(srv.controller.sweep(sid), with_history=True)
        assert [r.summary_metrics.get("loss") for r in engine_runs] == [r["summary"]["loss"] for r in runs]
    finally:
        reap(procs)
        srv.stop()


def test_hyperband_stops_a_clearly_worse_run(env_dirs):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        sid = srv.create_sweep({
            "method": "grid", "metric": {"name": "loss", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "parameters": {"x": {"values": [1.0, 1.5, 100.0]}, "steps": {"value": 30},
                           "step_sleep": {"value": 0.1}}}, project="p")
        env = agent_env(srv.env(), wd, SM_PREFETCH="0")
        script = write_script(tmp_path / "worker.py", WORKER)
        procs = [start([sys.executable, script, sid], env, tmp_path, tmp_path / "agent0.log")]
        assert wait_all(procs, 150) == [0], _logs(tmp_path, 1)
        by_x = {r["config"]["x"]["value"]: r for r in srv.runs(sid)}
        assert by_x[1.0]["state"] == by_x[1.5]["state"] == "finished"
        assert by_x[100.0]["state"] == "killed" and by_x[100.0]["should_stop"]
        assert srv.controller.store.history_count(by_x[100.0]["id"]) < 30
        assert srv.controller.store.history_count(by_x[1.0]["id"]) == 30
    finally:
        reap(procs)
        srv.stop()


def test_wandb_api_best_run(env_dirs, monkeypatch):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        for key, value in srv.env().items():
            monkeypatch.setenv(key, value)
        for key, value in {"WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("WANDB_SERVICE", raising=False)
        import wandb

        config = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                  "parameters": {"x": {"values": [3.0, -0.5, 2.0]}}}
        sid = wandb.sweep(config, project="p", entity="me")
        env = agent_env(srv.env(), wd)
        script = write_script(tmp_path / "worker.py", WORKER)
        procs = [start([sys.executable, script, sid], env, tmp_path, tmp_path / "agent0.log")]
        assert wait_all(procs, 150) == [0], _logs(tmp_path, 1)
        sweep = wandb.Api().sweep(f"me/p/{sid}")
        assert sweep.state == "FINISHED"
        assert len(sweep.runs) == 3
        best = sweep.best_run()
        assert best.config["x"] == -0.5 and best.summary["loss"] == -0.5
        minus = sweep.best_run(order="-summary_metrics.loss")
        assert minus.config["x"] == 3.0
    finally:
        reap(procs)
        srv.stop()


SLOW_WHEN_BAD = """
import argparse, time, wandb
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
args = parser.parse_args()
with wandb.init() as run:
    for step in range(2000):
        run.log({"loss": args.x})
        time.sleep(0.01 if args.x > 10 else 0.0)
"""


def test_hyperband_stops_a_cli_run_read_from_its_live_run_file(env_dirs):
    # wandb-core writes the run file in 32 KiB blocks, so live history exists only for runs that
    # log enough; 2000 steps fill several blocks.
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        write_script(tmp_path / "train.py", SLOW_WHEN_BAD)
        sid = srv.create_sweep({
            "method": "grid", "program": "train.py", "metric": {"name": "loss", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "parameters": {"x": {"values": [1.0, 1.5, 100.0]}}}, project="p")
        cmd = [os.path.join(VENV_BIN, "wandb"), "agent", "-p", "p", sid]
        procs = [start(cmd, agent_env(srv.env(), wd), tmp_path, tmp_path / "agent0.log")]
        assert wait_all(procs, 150) == [0], _logs(tmp_path, 1)
        by_x = {r["config"]["x"]["value"]: r for r in srv.runs(sid)}
        assert by_x[1.0]["state"] == by_x[1.5]["state"] == "finished"
        assert by_x[100.0]["should_stop"] and by_x[100.0]["state"] in ("killed", "crashed")
        assert srv.controller.store.history_count(by_x[100.0]["id"]) < 2000
    finally:
        reap(procs)
        srv.stop()


def test_prefetched_run_dropped_at_count_is_handed_out_again(env_dirs):
    tmp_path, wd = env_dirs
    srv = serve(db=str(tmp_path / "db" / "s.sqlite3"), wandb_dirs=[str(wd)])
    procs = []
    try:
        sid = srv.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2, 3, 4]},
                                                                  "step_sleep": {"value": 1.0}}}, project="p")
        script = write_script(tmp_path / "worker.py", WORKER)
        env = agent_env(srv.env(), wd)
        # count=2 with prefetch: pyagent queues a third run, then drops it when it reaches its count.
        first = start([sys.executable, script, sid, "2"], env, tmp_path, tmp_path / "agent0.log")
        procs.append(first)
        assert wait_all([first], 90) == [0], _logs(tmp_path, 1)
        procs.append(start([sys.executable, script, sid], env, tmp_path, tmp_path / "agent1.log"))
        assert wait_all(procs[1:], 120) == [0], _logs(tmp_path, 2)
        everything = srv.controller.store.runs_of_sweep(sid)
        assert [r["state"] for r in everything].count("reclaimed") == 1, everything
        runs = srv.runs(sid)
        assert len(runs) == 4 and len(_distinct(runs)) == 4 and {r["state"] for r in runs} == {"finished"}
        assert len(offline_run_dirs(wd)) == 4
        assert srv.sweep_state(sid) == "FINISHED"
    finally:
        reap(procs)
        srv.stop()
