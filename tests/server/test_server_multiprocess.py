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
