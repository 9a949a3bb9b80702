"""Agents on a real multi-node Ray cluster (conftest: a head and two nodes with 2 fake GPUs
each, loopback only): placement, the relay, failures, stop, secrets.

The tests share one cluster and run in file order; the node-death test adds the node it
kills, and the last test greps everything the others left for the server keys they used.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ray_helpers import agent_processes, live_actors, live_placement_groups, wait_for

import sweep_magic
from sweep_magic.errors import PlacementError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def _grid(n: int, **fixed) -> str:
    params = {"x": {"values": list(range(n))}, **{k: {"value": v} for k, v in fixed.items()}}
    config = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"}, "parameters": params}
    return sweep_magic.local_sweep(config, project="ray")


def trial():
    """Write where it runs (its node's folder, GPU, thread caps) to config.out, log a timestamp
    every 0.2 s for config.seconds."""
    import json
    import os
    import time

    import wandb

    with wandb.init() as run:
        cfg = dict(run.config)
        row = {"run": run.id, "x": cfg["x"], "node": os.path.basename(os.environ.get("WANDB_DIR", "")),
               "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
               "mkl": os.environ.get("MKL_NUM_THREADS"), "pid": os.getpid()}
        with open(cfg["out"], "a") as f:
            f.write(json.dumps(row) + "\n")
        end = time.time() + float(cfg["seconds"])
        while True:
            run.log({"loss": cfg["x"], "t_log": time.time()})
            if time.time() >= end:
                break
            time.sleep(0.2)


def _rows(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _run_state(session, run_id: str) -> str | None:
    return next((r["state"] for r in session.results() if r["run_id"] == run_id), None)


def _server_state(sweep_id: str, run_id: str) -> str | None:
    return next((r["state"] for r in sweep_magic.local_server().runs(sweep_id) if r["id"] == run_id), None)


def test_four_gpu_agents_on_four_node_gpu_pairs_finish_a_grid(cluster, keys, tmp_path):
    out = tmp_path / "where.jsonl"
    sid = _grid(8, out=str(out), seconds=1.0)
    latencies: list[float] = []
    seen: dict[str, object] = {}

    def on_change() -> None:
        # Worker clock → this snapshot: RunStarted's own time, then each logged timestamp.
        now = time.time()
        for run in session.snapshot().runs:
            if run.run_id not in seen and run.started_at:
                latencies.append(now - run.started_at)
                seen[run.run_id] = None
            t_log = run.metrics.get("t_log")
            if isinstance(t_log, float) and seen.get(run.run_id) != t_log:
                seen[run.run_id] = t_log
                latencies.append(now - t_log)

    session = sweep_magic.launch(trial, sid, backend="ray", gpus=4)
    keys.append(sweep_magic.local_server().api_key)
    session.subscribe(on_change)
    assert session.wait(120), session.agents()

    results = session.results()
    assert sorted(r["config"]["x"] for r in results) == list(range(8))
    assert [r["state"] for r in results] == ["finished"] * 8, [r["error"] for r in results]
    assert len({r["run_id"] for r in results}) == 8
    assert len({r["node"] for r in results}) == 2 and all(r["node"].startswith("127.0.0.1/") for r in results)
    # The server heard of every run through the relay: it cannot read the nodes' run files.
    assert sorted(r["state"] for r in sweep_magic.local_server().runs(sid)) == ["finished"] * 8
    agents = session.agents()
    assert all(a.node and a.device.startswith("gpu ") for a in agents), agents
    assert len({(a.node, a.device) for a in agents}) == 4
    rows = _rows(out)
    assert len(rows) == 8 and all(r["cvd"] in ("0", "1") for r in rows), rows  # exactly one GPU each
    assert len({(r["node"], r["cvd"]) for r in rows}) == 4
    assert len({r["node"] for r in rows}) == 2
    assert all(a.log_tail for a in agents)  # the nodes' log files reach the kernel's tail
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"event latency worker → snapshot: n={len(latencies)} median={latencies[len(latencies) // 2]:.3f}s "
          f"p95={p95:.3f}s max={latencies[-1]:.3f}s")
    assert len(latencies) >= 16 and p95 <= 2.0
    wait_for(lambda: not live_actors() and not live_placement_groups(), 5)
    assert not live_actors() and not live_placement_groups()


def test_a_request_the_cluster_cannot_meet_is_one_line_and_leaves_nothing(cluster, monkeypatch):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from sweep_magic.agents import ray as ray_agents

    sid = _grid(2, out="/dev/null", seconds=0)
    started = time.monotonic()
    with pytest.raises(PlacementError) as err:
        sweep_magic.launch(trial, sid, backend="ray", gpus=5)
    assert time.monotonic() - started < 20
    assert str(err.value) == "gpus=5: the Ray cluster has 4 GPUs"
    # Enough GPUs in all but not free now: the placement group's timeout (shortened) ends it.
    hold = placement_group([{"GPU": 1}])
    assert hold.wait(10)
    monkeypatch.setattr(ray_agents, "PLACEMENT_TIMEOUT", 2.0)
    try:
        with pytest.raises(PlacementError, match=r"could not place 4 agents .* within 2 s; 3 of 4 GPUs were free"):
            sweep_magic.launch(trial, sid, backend="ray", gpus=4)
    finally:
        remove_placement_group(hold)
    assert sweep_magic.sessions() == []
    assert not live_actors()
    assert wait_for(lambda: not live_placement_groups(), 5) is not None
    assert wait_for(lambda: ray.available_resources().get("GPU") == 4, 5)  # the release is asynchronous


def test_the_panel_over_the_cluster_places_agents_on_the_ticked_node(cluster, keys, tmp_path, monkeypatch):
    """``%sweep_parallel --ray ADDRESS``: the panel lists the cluster's nodes with a checkbox per
    GPU (Ray's figures), and Start puts the agents on the node whose boxes are ticked."""
    from panel_fakes import real_shell

    from sweep_magic import magic
    from sweep_magic.faces import kernel

    nodes = sweep_magic.ray_nodes()
    assert [(n.head, n.gpus, n.gpus_free, n.alive) for n in nodes] == [(True, 0, 0, True)] + [(False, 2, 2, True)] * 2
    assert len({n.label for n in nodes}) == 3 and all(n.label.startswith("127.0.0.1/") for n in nodes)
    shown = []
    monkeypatch.setattr(kernel, "widgets_available", lambda shell: True)
    monkeypatch.setattr("IPython.display.display", lambda panel: shown.append(panel))
    shell = real_shell()
    shell.user_ns["trial"] = trial
    magic.register(shell)
    shell.run_line_magic("sweep_parallel", "")  # Ray already connected here: the panel shows the cluster
    plain = shown.pop()
    plain.close()
    assert plain.form.ray and len(plain.form.node_rows) == 3
    shell.run_line_magic("sweep_parallel", f"--ray {cluster.address}")
    (panel,) = shown
    try:
        rows = panel.form.node_rows
        assert [len(r.boxes) for r in rows] == [0, 2, 2] and all(b.value for r in rows for b in r.boxes)
        chosen = rows[2].node
        for box in rows[1].boxes:
            box.value = False
        out = tmp_path / "where.jsonl"
        panel.form.sweep.value = _grid(4, out=str(out), seconds=0.3)
        panel.form.function.value = "trial"
        session = panel.start()
        keys.append(sweep_magic.local_server().api_key)
        assert session.wait(90), session.agents()
    finally:
        panel.close()
    assert panel.error.value == ""
    assert [r["state"] for r in session.results()] == ["finished"] * 4
    agents = session.agents()
    assert len(agents) == 2 and {a.node for a in agents} == {chosen.label}, agents
    assert {r["node"] for r in session.results()} == {chosen.label}  # each run names its node
    rows = _rows(out)
    assert len({r["node"] for r in rows}) == 1 and sorted({r["cvd"] for r in rows}) == ["0", "1"], rows
    wait_for(lambda: not live_actors() and not live_placement_groups(), 5)
    # Named nodes the cluster cannot give: one line, at once, nothing left.
    with pytest.raises(PlacementError, match=f"node {chosen.label}: 3 GPUs asked, it has 2 GPUs"):
        sweep_magic.launch(trial, panel.form.sweep.value, backend="ray", gpus={chosen.node_id[:8]: 3})
    with pytest.raises(PlacementError, match="no live node of the Ray cluster is 'nosuch'"):
        sweep_magic.launch(trial, panel.form.sweep.value, backend="ray", gpus="nosuch=1")
    assert not live_actors() and not live_placement_groups()


def test_cpu_agents_hide_gpus_cap_threads_use_a_local_module_and_stop_cleanly(cluster, keys, tmp_path):
    # A notebook's own module: gone from disk once launched, so only by-value shipping works.
    folder = tmp_path / "notebook"
    folder.mkdir()
    (folder / "h7_nb_utils.py").write_text("def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(folder))
    try:
        import h7_nb_utils as utils
    finally:
        sys.path.remove(str(folder))
    out = tmp_path / "where.jsonl"

    def train():
        import json
        import os
        import time

        import wandb

        with wandb.init() as run:
            row = {"x": run.config.x, "double": utils.double(run.config.x), "pid": os.getpid(),
                   "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "caps": [os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")]}
            with open(run.config.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            time.sleep(120)

    sid = _grid(4, out=str(out))
    with pytest.raises(PlacementError, match=r"^cpus_per_agent=3: no node of the Ray cluster has 3 CPUs \(the most: 2\)$"):
        sweep_magic.launch(train, sid, backend="ray", cpus=1, cpus_per_agent=3)
    try:
        # Two CPUs each: more than the head has, so one agent on each of the other two nodes.
        session = sweep_magic.launch(train, sid, backend="ray", cpus=2, cpus_per_agent=2)
    finally:
        os.unlink(folder / "h7_nb_utils.py")
        sys.modules.pop("h7_nb_utils", None)
    keys.append(sweep_magic.local_server().api_key)
    rows = wait_for(lambda: (len(_rows(out)) >= 2 and _rows(out)) or session.done, 90)
    assert rows is not True and rows, session.agents()
    for row in rows:
        assert row["cvd"] == "" and row["caps"] == ["2"] * 4 and row["double"] == 2 * row["x"], row
    assert {a.device for a in session.agents()} == {"cpu"}
    assert len({a.node for a in session.agents()}) == 2

    home = os.environ["SWEEP_MAGIC_HOME"]
    assert agent_processes(home)
    started = time.monotonic()
    session.stop()
    took = time.monotonic() - started
    print(f"stop() took {took:.2f}s")
    assert took <= 15
    assert agent_processes(home) == []
    assert {r["state"] for r in session.results()} == {"killed"}
    assert wait_for(lambda: not live_actors() and not live_placement_groups(), 5) is not None


def test_a_killed_actor_and_a_lost_node_crash_their_runs_and_the_sweep_completes(cluster, keys, tmp_path, capfd):
    import ray
    from conftest import NODE

    out = tmp_path / "where.jsonl"
    sid = _grid(6, out=str(out), seconds=6)
    session = sweep_magic.launch(trial, sid, backend="ray", gpus=2)
    keys.append(sweep_magic.local_server().api_key)
    killed = None
    try:
        assert wait_for(lambda: all(a.current_run for a in session.agents()), 90), session.agents()
        procs = [a.proc for a in session._supervisor._agents]  # the backend's RayAgentProcess
        # 1. ray.kill of agent 0's actor, mid-run.
        run0 = session.agents()[0].current_run
        started = time.monotonic()
        ray.kill(procs[0]._actor)
        assert wait_for(lambda: _run_state(session, run0) == "crashed" and _server_state(sid, run0) == "crashed", 5)
        print(f"ray.kill → run crashed in {time.monotonic() - started:.2f}s")
        # 2. SIGKILL of agent 1's node's raylet, mid-run.
        agent1 = session.agents()[1]
        run1, node1 = agent1.current_run, session._supervisor._agents[1].proc.node_id
        killed = next(n for n in cluster.worker_nodes if n.node_id == node1)
        started = time.monotonic()
        os.kill(killed.all_processes["raylet"][0].process.pid, signal.SIGKILL)
        assert wait_for(lambda: _run_state(session, run1) == "crashed" and _server_state(sid, run1) == "crashed", 5)
        print(f"raylet SIGKILL → run crashed in {time.monotonic() - started:.2f}s")
        assert session.wait(120), session.agents()
    finally:
        session.stop()
        # The killed node goes from the books (its leftover processes too), and a fresh one
        # takes its place: the module's cluster keeps its shape (and never holds a 4th node,
        # which the memory budget has no room for).
        if killed is not None:
            cluster.remove_node(killed, allow_graceful=False)
            cluster.add_node(**NODE, temp_dir=cluster.temp_dir)
            cluster.wait_for_nodes()
    results = session.results()
    assert sorted(r["config"]["x"] for r in results) == list(range(6))
    assert sorted(r["state"] for r in results) == ["crashed"] * 2 + ["finished"] * 4
    agents = session.agents()
    assert [a.state for a in agents] == ["exited", "exited"] and all(a.restarts >= 1 for a in agents), agents
    assert session._supervisor._agents[1].proc.node_id != node1  # restarted on another node
    assert session.snapshot().state == "finished"
    lost = [r for r in results if r["run_id"] == run1][0]
    assert "its Ray node's raylet died" in lost["error"], lost
    # Ray's "raylet died" messages went to a file, not into the cell (this test's output).
    captured = capfd.readouterr()
    assert "(raylet)" not in captured.out + captured.err
    messages = os.path.join(os.environ["SWEEP_MAGIC_HOME"], "ray-messages.log")
    assert wait_for(lambda: os.path.exists(messages) and "Raylet is terminated" in open(messages).read(), 5)


def test_a_node_that_stops_answering_loses_its_run_within_5_s_not_ray_s_15(cluster, keys, tmp_path):
    """A machine that vanishes whole (frozen, cut off, powered off) sends nothing and closes
    nothing: SIGSTOP of a node's every process (raylet, actors, workers, wandb-core) is that.
    Ray would declare the node dead only after its health checks (≈15 s); the kernel hears
    the agent's stream fall silent and its ping unanswered.  One agent is pinned to each GPU
    node by name, so the frozen one is known; a pinned agent cannot move, so the other
    agent finishes the grid."""
    import psutil
    import ray
    from conftest import NODE

    doomed, other = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[:2]
    out = tmp_path / "where.jsonl"
    sid = _grid(4, out=str(out), seconds=3)
    session = sweep_magic.launch(trial, sid, backend="ray", gpus={doomed.node_id: 1, other.node_id[:8]: 1})
    keys.append(sweep_magic.local_server().api_key)
    stopped: list = []
    try:
        assert wait_for(lambda: all(a.current_run for a in session.agents()), 90), session.agents()
        by_node = {a.proc.node_id: i for i, a in enumerate(session._supervisor._agents)}
        assert set(by_node) == {doomed.node_id, other.node_id}
        run = session.agents()[by_node[doomed.node_id]].current_run
        raylet = psutil.Process(doomed.all_processes["raylet"][0].process.pid)
        stopped = [raylet, *raylet.children(recursive=True)]
        started = time.monotonic()
        for proc in stopped:
            proc.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: _run_state(session, run) == "crashed" and _server_state(sid, run) == "crashed", 5)
        print(f"node frozen (SIGSTOP) → run crashed in {time.monotonic() - started:.2f}s")
        lost = next(r for r in session.results() if r["run_id"] == run)
        assert "its Ray node stopped answering" in lost["error"] and lost["node"], lost
        # The rest of the grid on the other node; nothing handed out twice.
        assert wait_for(lambda: sorted(r["state"] for r in session.results()) == ["crashed"] + ["finished"] * 3, 60), \
            session.results()
    finally:
        session.stop()
        for proc in stopped:
            try:
                proc.kill()
            except psutil.Error:
                pass
        cluster.remove_node(doomed, allow_graceful=False)
        # Until Ray's health checks mark it dead (≈15 s), the GCS would place later tests'
        # bundles on the frozen node: wait for that, then restore the module's shape.
        assert wait_for(lambda: doomed.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, 45)
        cluster.add_node(**NODE, temp_dir=cluster.temp_dir)
        cluster.wait_for_nodes()
    assert sorted(r["config"]["x"] for r in session.results()) == list(range(4))
    assert {r["node"] for r in session.results() if r["state"] == "finished"} != {lost["node"]}


DRIVER = """
import os, sys, time
import sweep_magic

def train():
    import json, os, time
    import wandb
    with wandb.init() as run:
        with open(run.config.out, "a") as f:
            row = {"pid": os.getpid(), "node": os.path.basename(os.environ["WANDB_DIR"]),
                   "cvd": os.environ.get("CUDA_VISIBLE_DEVICES")}
            f.write(json.dumps(row) + "\\n")
        time.sleep(300)

config = {"method": "grid", "parameters": {"x": {"values": [0, 1, 2, 3]}, "out": {"value": sys.argv[2]}}}
sid = sweep_magic.local_sweep(config, project="ray")
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, sweep_magic.local_server().api_key.encode())
os.close(fd)
session = sweep_magic.launch(train, sid, ray_address=sys.argv[1], gpus=1, agents_per_gpu=2)
print("launched", flush=True)
session.wait()
"""


def test_two_agents_share_a_gpu_and_the_kernel_dying_takes_every_actor_and_worker_with_it(
        cluster, keys, tmp_path, tmp_path_factory):
    home = tmp_path_factory.mktemp("driver-home")
    script, out, keyfile = tmp_path / "driver.py", tmp_path / "rows.jsonl", tmp_path / "key"
    script.write_text(textwrap.dedent(DRIVER))
    env = dict(os.environ, SWEEP_MAGIC_HOME=str(home))
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen([sys.executable, str(script), cluster.address, str(out), str(keyfile)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for(lambda: len(_rows(out)) >= 2, 90), (tmp_path / "driver.log").read_text()[-2000:]
        keys.append(keyfile.read_text())
        keyfile.unlink()
        rows = _rows(out)
        assert len({(r["node"], r["cvd"]) for r in rows}) == 1 and rows[0]["cvd"] in ("0", "1"), rows
        assert len(agent_processes(str(home))) >= 2
        assert live_actors()
        started = time.monotonic()
        driver.kill()
        driver.wait()
        gone = wait_for(lambda: not agent_processes(str(home)) and not live_actors() and not live_placement_groups(),
                        10)
        print(f"driver SIGKILL → nothing left after {time.monotonic() - started:.2f}s")
        assert gone, (agent_processes(str(home)), live_actors(), live_placement_groups())
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    # Ray's log_to_driver is off: no actor or worker line ("(AgentHost pid=…)") in the driver's output.
    assert "pid=" not in (tmp_path / "driver.log").read_text()


def test_the_server_keys_are_in_no_ray_state_log_or_session_file(cluster, keys, tmp_path_factory):
    """Last: every key the module's sessions used, plain or as the client's Basic auth."""
    from ray._private import state

    assert len(keys) >= 4
    needles = [k.encode() for k in keys] + [base64.b64encode(f"api:{k}".encode()) for k in keys]
    hits = []
    for root in (cluster.temp_dir, str(tmp_path_factory.getbasetemp())):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                if name.startswith("server.sqlite3") or not os.path.isfile(path) or os.path.islink(path):
                    continue  # the server's own database keeps its key (0600, by design)
                with open(path, "rb") as f:
                    data = f.read()
                hits += [path for needle in needles if needle in data]
    # The GCS tables the dashboard and `ray list actors --detail` read, raw: creation arguments
    # and runtime_env included.
    accessor = state.state._connect_and_get_accessor()
    rows = list(accessor.get_actor_table(None, None)) + list(accessor.get_job_table(skip_submission_job_info_field=False,
                                                                                   skip_is_running_tasks_field=True))
    hits += [f"GCS row {i}" for i, row in enumerate(rows) for needle in needles if needle in bytes(row)]
    assert not hits
