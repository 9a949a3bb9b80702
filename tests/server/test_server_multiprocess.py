"""Several processes deciding on one sweep database at once (controller level, no HTTP).

Each child is a fresh interpreter with its own ``Controller`` and ``Store`` on the same file,
as two notebook kernels or two ``python -m sweep_magic.server`` processes would be.  They all
start hammering at one agreed instant, so their hand-outs really overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from server_helpers import REPO

from sweep_magic.server.controller import Controller
from sweep_magic.server.store import Store

HAMMER = r"""
import json, sys, time
from sweep_magic.server.config import sweeps_engine
from sweep_magic.server.controller import Controller
from sweep_magic.server.store import Store

db, sid, start_at, n_agents = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
ctl = Controller(Store(db))
agents = [ctl.create_agent(sid, "h") for _ in range(n_agents)]
sweeps_engine()  # imported before the start, so no process is still importing when others begin
late = time.time() - start_at
while time.time() < start_at:
    time.sleep(0.005)
handed, exited = [], set()
deadline = time.time() + 60
while len(exited) < len(agents) and time.time() < deadline:
    for agent in agents:
        if agent in exited:
            continue
        cmds = ctl.heartbeat(agent, "{}")
        if cmds and cmds[0]["type"] == "run":
            handed.append(cmds[0]["args"]["x"]["value"])
            ctl.run_started(cmds[0]["run_id"])
            ctl.run_finished(cmds[0]["run_id"], {"exit_code": 0, "summary": {"loss": 0.0}})
        elif cmds and cmds[0]["type"] == "exit":
            exited.add(agent)
    # A breath between rounds (agents heartbeat every 0.5-5 s in life): SQLite's lock is not
    # fair, and a process that never pauses would take every hand-out while the others wait.
    time.sleep(0.05)
print(json.dumps({"handed": handed, "exited": len(exited), "late": round(late, 2), "took": round(time.time() - start_at, 2)}))
"""


def test_four_processes_hand_out_each_grid_point_once(tmp_path):
    db = str(tmp_path / "db" / "s.sqlite3")
    points = 80
    setup = Controller(Store(db))
    sid, _ = setup.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(points))}}})
    setup.store.close()
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    env = dict(os.environ, PYTHONPATH=REPO)
    start_at = time.time() + 6  # after every child has imported the engine (~1-2 s each)
    procs = [subprocess.Popen([sys.executable, str(script), db, sid, str(start_at), "3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    handed = sorted(v for o in outs for v in o["handed"])
    assert handed == list(range(points)), [o["handed"] for o in outs]
    assert all(len(o["handed"]) > 0 for o in outs), outs  # really interleaved
    assert [o["exited"] for o in outs] == [3] * 4
    check = Store(db)
    try:
        assert check.sweep(sid)["state"] == "FINISHED"
        seqs = [r["seq"] for r in check.runs_of_sweep(sid)]
        assert len(set(seqs)) == len(seqs) == points  # hand-out order is one order across processes
    finally:
        check.close()


# -- two servers on one file, one decision at a time ----------------------------------------------
# Two Controllers with their own Store (connection) on one file decide exactly as two processes
# would: they share nothing but the database.
def _pair(tmp_path, timeout_a=100.0, timeout_b=5.0):
    db = str(tmp_path / "db" / "s.sqlite3")
    a = Controller(Store(db), server_url="http://127.0.0.1:1", agent_timeout=timeout_a)
    b = Controller(Store(db), server_url="http://127.0.0.1:2", agent_timeout=timeout_b)
    return a, b


def test_a_server_reaps_another_servers_agent_only_by_its_stored_heartbeat_and_timeout(tmp_path):
    a, b = _pair(tmp_path)
    try:
        sid, _ = a.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        agent = a.create_agent(sid, "h")
        run_id = a.heartbeat(agent, "{}")[0]["run_id"]
        a.heartbeat(agent, json.dumps({run_id: True}))
        # B never heard this agent and its own timeout is 5 s; the agent's (A's) is 100 s.
        assert b.reap(now=time.time() + 50) == []
        a.store.update_agent(agent, last_seen=time.time() - 90)  # an old heartbeat …
        a.heartbeat(agent, json.dumps({run_id: True}))  # … then A hears it: B judges by the new time
        assert b.reap(now=time.time() + 50) == []
        assert b.reap(now=time.time() + 101) == [agent]
        assert b.store.run(run_id)["state"] == "ending"
    finally:
        a.store.close()
        b.store.close()


def test_a_restarted_server_gives_grace_to_its_own_agents_only(tmp_path):
    a, b = _pair(tmp_path)
    try:
        sid, _ = a.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        mine, theirs = a.create_agent(sid, "h"), b.create_agent(sid, "h")
        for agent in (mine, theirs):
            a.store.update_agent(agent, last_seen=1000.0)
        a.store.close()
        again = Controller(Store(b.store.path), server_url="http://127.0.0.1:1")  # A, restarted
        again.start()
        try:
            assert again.store.agent(mine)["last_seen"] > 1000.0
            assert again.store.agent(theirs)["last_seen"] == 1000.0  # B's agent: B's business
        finally:
            again.close()
            again.store.close()
    finally:
        b.store.close()


def test_an_ending_run_left_by_a_dead_server_is_settled_by_another(tmp_path):
    from sweep_magic.server.settle import ORPHAN_ENDING_S

    a, b = _pair(tmp_path)
    try:
        sid, _ = a.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        agent = a.create_agent(sid, "h")
        first = a.heartbeat(agent, "{}")[0]
        a.heartbeat(agent, "{}")  # `first` left unlisted: ending, queued in A, whose finalizer never runs
        ending_at = b.store.run(first["run_id"])["ending_at"]
        assert b.settler.adopt_orphans(now=ending_at + 1) == []  # A is still on it
        assert b.settler.adopt_orphans(now=ending_at + ORPHAN_ENDING_S + 1) == [first["run_id"]]
        b.finalize(first["run_id"])
        assert b.store.run(first["run_id"])["state"] == "reclaimed"  # no trace: it never started
        other = b.create_agent(sid, "h")
        assert b.heartbeat(other, "{}")[0]["args"] == first["args"]
    finally:
        a.store.close()
        b.store.close()


def test_stored_dirs_let_another_server_find_the_run_file(tmp_path):
    db = str(tmp_path / "db" / "s.sqlite3")
    a = Controller(Store(db), server_url="http://127.0.0.1:1", wandb_dirs=[str(tmp_path / "a_dir")])
    b = Controller(Store(db), server_url="http://127.0.0.1:2", wandb_dirs=[str(tmp_path / "b_dir")])
    try:
        sid, _ = a.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        agent = a.create_agent(sid, "h")
        run_id = a.heartbeat(agent, "{}")[0]["run_id"]
        a.heartbeat(agent, "{}")
        # Only A's dir holds the run's folder; B settles it by the dirs stored with the agent.
        (tmp_path / "a_dir" / "wandb" / f"offline-run-20260101_000000-{run_id}").mkdir(parents=True)
        b.finalize(run_id)
        assert b.store.run(run_id)["state"] == "crashed"  # started; not reclaimed
    finally:
        a.store.close()
        b.store.close()


def test_a_file_written_by_an_earlier_version_gains_the_new_columns(tmp_path):
    import sqlite3

    from sweep_magic.server import store as store_module

    db = str(tmp_path / "old.sqlite3")
    old = sqlite3.connect(db)
    for statement in store_module._SCHEMA:  # the first release's tables, without later columns
        old.execute(statement)
    old.execute("INSERT INTO agents (id, sweep_id, host, created_at, last_seen) VALUES ('a1', 's', 'h', 1, 1)")
    old.commit()
    old.close()
    ctl = Controller(Store(db))
    try:
        assert ctl.store.agent("a1")["server_url"] is None and ctl.store.agent("a1")["timeout_s"] is None
        sid, _ = ctl.create_sweep({"method": "grid", "parameters": {"x": {"values": [1]}}})
        agent = ctl.create_agent(sid, "h")
        run = ctl.heartbeat(agent, "{}")[0]["run_id"]
        assert ctl.store.run(run)["note"] is None and ctl.store.sweep(sid)["early_stop_due"] == 1
    finally:
        ctl.store.close()
