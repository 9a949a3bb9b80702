"""Several ``python -m sweep_magic.server`` processes on one database, with real agents.

This is issue 8 as users met it: two kernels (each with its own embedded server) running
agents on one sweep.  Every grid point must run exactly once across all of them, and a server
that dies (with its kernel) must not strand the others.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from server_helpers import (
    PYAGENT,
    WORKER,
    agent_env,
    graphql,
    offline_run_dirs,
    reap,
    start,
    start_server,
    tail,
    wait_all,
    write_script,
)

from sweep_magic._testing import kill_group
from sweep_magic.server.store import Store

UPSERT = ("mutation UpsertSweep($config: String) { upsertSweep(input: {config: $config}) "
          "{ sweep { name } configValidationWarnings } }")
GRID12 = ("method: grid\nmetric: {name: loss, goal: minimize}\n"
          "parameters:\n  x: {values: [0, 1, 2, 3]}\n  y: {values: [a, b, c]}\n")


def _point(run: dict) -> str:
    return json.dumps({k: v["value"] for k, v in run["config"].items() if k in ("x", "y")}, sort_keys=True)


def _runs(db: str, sid: str) -> tuple[list[dict], dict, list[dict]]:
    """(visible runs, sweep row, agents) read from the file, as one more process would."""
    store = Store(db)
    try:
        runs = [r for r in store.runs_of_sweep(sid) if r["state"] != "reclaimed"]
        agents = store._all("SELECT * FROM agents WHERE sweep_id = ?", (sid,))
        return runs, store.sweep(sid), agents
    finally:
        store.close()


def _brief(runs: list[dict]) -> list[tuple]:
    return [(r["id"], r["agent_id"], _point(r), r["state"], r["exit_code"], r.get("note"), r["summary"].get("loss"))
            for r in runs]


def _logs(tmp_path, names) -> str:
    return "\n".join(f"--- {n}\n{tail(tmp_path / n)}" for n in names)


def test_three_servers_on_one_db_run_each_grid_point_once(tmp_path):
    wd, db = tmp_path / "wd", str(tmp_path / "db" / "s.sqlite3")
    wd.mkdir()
    procs = []
    try:
        # A 12 s timeout against 5 s heartbeats: a server that judged agents by the heartbeats
        # it heard itself would reap the other servers' agents within the test.
        servers = [start_server(db, tmp_path / f"server{i}.log", "--wandb-dir", str(wd), "--agent-timeout", "12",
                                "--log-level", "INFO") for i in range(3)]
        procs += [p for p, _ in servers]
        envs = [env for _, env in servers]
        assert len({e["WANDB_BASE_URL"] for e in envs}) == 3
        sid = graphql(envs[0], UPSERT, {"config": GRID12})["upsertSweep"]["sweep"]["name"]
        script = write_script(tmp_path / "agent.py", PYAGENT)
        agents = [start([sys.executable, script, sid], agent_env(env, wd), tmp_path, tmp_path / f"agent{i}.log")
                  for i, env in enumerate(envs)]
        procs += agents

        reaped_while_running = []
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            runs, sweep, rows = _runs(db, sid)
            if sweep["state"] != "RUNNING":
                break
            reaped_while_running += [a["id"] for a in rows if a["gone"]]
            time.sleep(1.0)
        names = [f"agent{i}.log" for i in range(3)] + [f"server{i}.log" for i in range(3)]
        codes = wait_all(agents, 60)
        assert codes == [0, 0, 0], _logs(tmp_path, names)
        assert not reaped_while_running, _logs(tmp_path, names)

        runs, sweep, rows = _runs(db, sid)
        assert len(runs) == 12 and len({_point(r) for r in runs}) == 12, (runs, _logs(tmp_path, names))
        assert {r["state"] for r in runs} == {"finished"}, runs
        assert all(r["summary"]["loss"] == r["config"]["x"]["value"] ** 2 for r in runs)
        assert len(offline_run_dirs(wd)) == 12  # nothing ran twice on disk either
        assert sweep["state"] == "FINISHED"
        # Every server handed out work: the three really shared the grid.
        assert len({r["agent_id"] for r in runs}) == 3
        assert len({a["server_url"] for a in rows}) == 3
    finally:
        reap(procs)


def test_sigkilled_server_does_not_strand_the_other_servers_agents(tmp_path):
    """Kernel A dies (its server and its agents with it) while kernel B's agents work on the
    same sweep: B's server takes over what A left, B's agents finish the grid, no point twice."""
    wd, db = tmp_path / "wd", str(tmp_path / "db" / "s.sqlite3")
    wd.mkdir()
    procs = []
    try:
        server_a, env_a = start_server(db, tmp_path / "serverA.log", "--wandb-dir", str(wd), "--log-level", "INFO")
        server_b, env_b = start_server(db, tmp_path / "serverB.log", "--wandb-dir", str(wd), "--log-level", "INFO")
        procs += [server_a, server_b]
        config = GRID12 + "  steps: {value: 10}\n  step_sleep: {value: 0.3}\n"  # 3 s runs
        sid = graphql(env_a, UPSERT, {"config": config})["upsertSweep"]["sweep"]["name"]
        script = write_script(tmp_path / "worker.py", WORKER)
        agents_a = [start([sys.executable, script, sid], agent_env(env_a, wd), tmp_path, tmp_path / f"a{i}.log")
                    for i in range(2)]
        agents_b = [start([sys.executable, script, sid], agent_env(env_b, wd), tmp_path, tmp_path / f"b{i}.log")
                    for i in range(2)]
        procs += agents_a + agents_b
        names = ["a0.log", "a1.log", "b0.log", "b1.log", "serverA.log", "serverB.log"]

        # Kill A once both its agents are inside a run and some work is done.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runs, _, rows = _runs(db, sid)
            a_ids = {a["id"] for a in rows if a["server_url"] == env_a["WANDB_BASE_URL"]}
            # `started`: inside wandb.init (a prefetched run is listed as running while queued).
            busy_a = {r["agent_id"] for r in runs if r["agent_id"] in a_ids and r["state"] == "running"
                      and r["started"]}
            if sum(r["state"] == "finished" for r in runs) >= 3 and len(busy_a) == 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(_logs(tmp_path, names))
        server_a.send_signal(signal.SIGKILL)
        for proc in agents_a:  # children die with their kernel
            kill_group(proc)
        server_a.wait(timeout=10)

        assert wait_all(agents_b, 180) == [0, 0], _logs(tmp_path, names)
        runs, sweep, rows = _runs(db, sid)
        points = [_point(r) for r in runs]
        assert len(points) == 12 and len(set(points)) == 12, (runs, _logs(tmp_path, names))
        states = [r["state"] for r in runs]
        # The runs A's agents had in flight died with them; everything else finished.
        assert set(states) <= {"finished", "crashed"} and 1 <= states.count("crashed") <= 2, (_brief(runs), a_ids)
        assert sweep["state"] == "FINISHED"
        assert all(a["gone"] for a in rows if a["id"] in a_ids)
        # On disk: one folder per run that started, none for a point handed out again.
        on_disk = sorted(d.rsplit("-", 1)[1] for d in offline_run_dirs(wd))
        assert on_disk == sorted(r["id"] for r in runs), (on_disk, runs)
    finally:
        reap(procs)


KERNEL = """
import json, os, sys, time
import wandb
import sweep_magic
from sweep_magic import api

def train():
    with wandb.init() as run:
        time.sleep(1.5)  # long enough that kernel B is up before kernel A is through the grid
        run.log({"loss": float(run.config.x) ** 2})

role, sid_file = sys.argv[1], sys.argv[2]
if role == "A":
    config = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
              "parameters": {"x": {"values": [0, 1, 2, 3]}, "y": {"values": ["a", "b", "c"]}}}
    sid = sweep_magic.local_sweep(config, project="p")
    with open(sid_file + ".tmp", "w") as f:
        f.write(sid)
    os.replace(sid_file + ".tmp", sid_file)
else:
    while not os.path.exists(sid_file):
        time.sleep(0.1)
    sid = open(sid_file).read()
session = api.launch(train, sid, cpus=2)
ok = session.wait(timeout=240)
session.stop()
print(json.dumps({"ok": ok, "server": sweep_magic.local_server().url,
                  "runs": [r["config"] for r in session.results()]}))
"""


def test_two_kernels_with_their_own_servers_share_one_sweep(tmp_path):
    """The issue as reported: two kernels, each with its embedded server on the same
    SWEEP_MAGIC_HOME, run agents on one local sweep; 12 grid points give 12 runs."""
    home, script = tmp_path / "home", write_script(tmp_path / "kernel.py", KERNEL)
    env = agent_env({}, tmp_path / "unused", SWEEP_MAGIC_HOME=home)
    env.pop("WANDB_DIR")
    sid_file = str(tmp_path / "sweep_id")
    kernels = [start([sys.executable, script, role, sid_file], env, tmp_path, tmp_path / f"kernel{role}.log")
               for role in "AB"]
    try:
        codes = wait_all(kernels, 280)
        names = ["kernelA.log", "kernelB.log"]
        assert codes == [0, 0], _logs(tmp_path, names)
        outs = [json.loads(tail(tmp_path / n).strip().splitlines()[-1]) for n in names]
        assert all(o["ok"] for o in outs) and outs[0]["server"] != outs[1]["server"], outs
        assert all(o["runs"] for o in outs), outs  # both kernels ran part of the grid
        sid = open(sid_file).read()
        runs, sweep, _ = _runs(str(home / "server.sqlite3"), sid)
        assert len(runs) == 12 and len({_point(r) for r in runs}) == 12, _brief(runs)
        assert {r["state"] for r in runs} == {"finished"} and sweep["state"] == "FINISHED"
    finally:
        reap(kernels)
