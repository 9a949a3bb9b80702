"""A server process killed with SIGKILL mid-grid and restarted on the same database: the grid
completes with no point run twice and none lost, while the same agents keep going."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from server_helpers import REPO, WORKER, agent_env, offline_run_dirs, reap, start, tail, wait_all, write_script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(db, port, wd, log):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep_magic.server", "--db", db, "--port", str(port), "--wandb-dir", wd,
         "--log-level", "INFO"],
        stdout=subprocess.PIPE, stderr=open(log, "ab"), env=env, text=True, start_new_session=True)
    lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
    return proc, lines


def _graphql(env, query, variables=None):
    token = base64.b64encode(f"api:{env['WANDB_API_KEY']}".encode()).decode()
    req = urllib.request.Request(env["WANDB_BASE_URL"] + "/graphql", method="POST",
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]


_RUNS = ("query SweepRuns($sweep: String!) { project { sweep(sweepName: $sweep) { state "
         "runs { edges { node { name state config } } } } } }")


def test_sigkilled_server_resumes_grid_without_repeats(tmp_path):
    wd, db, log = tmp_path / "wd", str(tmp_path / "db" / "s.sqlite3"), str(tmp_path / "server.log")
    wd.mkdir()
    port = _free_port()
    server, lines = _start_server(db, port, str(wd), log)
    procs = [server]
    try:
        env = {"WANDB_BASE_URL": lines["WANDB_BASE_URL"], "WANDB_API_KEY": lines["WANDB_API_KEY"],
               "WANDB_MODE": "offline"}
        config = ("method: grid\nparameters:\n  x: {values: [0, 1, 2, 3, 4, 5]}\n  y: {values: [a, b]}\n"
                  "  steps: {value: 5}\n  step_sleep: {value: 0.1}\n")
        sid = _graphql(env, "mutation UpsertSweep($config: String) { upsertSweep(input: {config: $config}) "
                            "{ sweep { name } configValidationWarnings } }", {"config": config}
                       )["upsertSweep"]["sweep"]["name"]
        script = write_script(tmp_path / "worker.py", WORKER)
        agents = [start([sys.executable, script, sid], agent_env(env, wd), tmp_path, tmp_path / f"agent{i}.log")
                  for i in range(2)]
        procs += agents

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runs = _graphql(env, _RUNS, {"sweep": sid})["project"]["sweep"]["runs"]["edges"]
            if sum(e["node"]["state"] == "finished" for e in runs) >= 4:
                break
            time.sleep(0.3)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        time.sleep(1.5)
        server, again = _start_server(db, port, str(wd), log)
        procs.append(server)
        assert again == lines  # same URL, same key: the agents carry on

        codes = wait_all(agents, 180)
        logs = "\n".join(tail(tmp_path / f"agent{i}.log") for i in range(2)) + tail(log)
        assert codes == [0, 0], logs
        sweep = _graphql(env, _RUNS, {"sweep": sid})["project"]["sweep"]
        nodes = [e["node"] for e in sweep["runs"]["edges"]]
        points = [json.dumps({k: v["value"] for k, v in json.loads(n["config"]).items()}, sort_keys=True)
                  for n in nodes]
        assert len(points) == 12 and len(set(points)) == 12, (nodes, logs)
        assert {n["state"] for n in nodes} == {"finished"}, (nodes, logs)
        assert len(offline_run_dirs(wd)) == 12  # nothing ran twice on disk either
        assert sweep["state"] == "FINISHED"
    finally:
        reap(procs)
