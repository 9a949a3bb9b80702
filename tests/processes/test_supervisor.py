"""Supervisor + workers for real: the embedded server, the real wandb.agent, real processes.

Each function below misbehaves on purpose (raise, hang, abort, ignore SIGINT, get
SIGKILLed), the way jupyter_client tests its restarter with kernels that fail.
"""

from __future__ import annotations

import os
import signal
import stat
import time

from workers_helpers import descendants, log_text, our_processes, start, wait_for

from sweep_magic import devices

# ---- functions shipped to workers (by value) ---------------------------------------------------


def train_ok():
    import os

    import wandb

    with wandb.init() as run:
        x = run.config.x
        for i in range(3):
            run.log({"loss": x / (i + 1), "i": i})
        run.summary["cores"] = sorted(os.sched_getaffinity(0))
        run.summary["omp"] = os.environ.get("OMP_NUM_THREADS")
        run.summary["cuda"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        # wandb-core of this worker, not the kernel's (WANDB_SERVICE is "3-<owner pid>-...").
        run.summary["own_service"] = os.environ.get("WANDB_SERVICE", "").split("-")[1] == str(os.getpid())
        # Looks like an event, but stdout is the log file: it must not become a run.
        print('{"v":1,"type":"run_started","run_id":"bogus","name":"x","config":{}}', flush=True)
        print(f"user output for x={x}", flush=True)


def train_floods():
    import wandb

    with wandb.init() as run:
        for i in range(3000):
            run.log({"loss": float(i), "other": i})
        print("flooded", flush=True)


def train_raises_on_2():
    import wandb

    with wandb.init() as run:
        run.log({"loss": 1.0})
        if run.config.x == 2:
            raise ValueError("x=2 is not allowed here")


def train_slow():
    import time

    import wandb

    with wandb.init() as run:
        for i in range(20):
            run.log({"loss": run.config.x + i})
            time.sleep(0.1)


def train_aborts_on_1():
    import os

    import wandb

    with wandb.init() as run:
        run.log({"loss": 1.0})
        if run.config.x == 1:
            os.abort()


def train_always_aborts():
    import os

    import wandb

    wandb.init()
    os.abort()


def train_hangs():
    import time

    import wandb

    wandb.init()
    time.sleep(10_000)


def train_ignores_sigint():
    import ctypes
    import signal
    import time

    import wandb

    wandb.init()
    # Process-wide SIG_IGN from the run thread (signal.signal only works in the main thread),
    # and pyagent's stop exception swallowed, as a broad `except Exception` would.
    ctypes.CDLL(None).signal(signal.SIGINT, ctypes.c_void_p(1))
    while True:
        try:
            time.sleep(0.2)
        except Exception:
            pass


# ---- tests -------------------------------------------------------------------------------------


def test_grid_sweep_end_to_end(server, tmp_path, monkeypatch):
    before = descendants()
    # As in a kernel that touched wandb: its service must not leak into the workers.
    monkeypatch.setenv("WANDB_SERVICE", "3-1-unix-/nonexistent/socket")
    monkeypatch.setenv("WANDB_RUN_ID", "stale")
    changes = []
    sup = start(server, train_ok, tmp_path, [1, 2, 3, 4], agents=2, on_change=lambda: changes.append(1))
    first = sup.snapshot()
    try:
        assert sup.wait(120), sup.snapshot()
        snap = sup.snapshot()
    finally:
        sup.stop()
    assert first.state == "running" and len(first.agents) == 2 and first.runs == ()
    assert snap.version > first.version and len(changes) > 5 and sup.snapshot() is sup.snapshot()
    assert snap.state == "finished" and snap.done
    assert [a.state for a in snap.agents] == ["exited", "exited"]
    assert sorted(r.config["x"] for r in snap.runs) == [1, 2, 3, 4]
    assert all(r.state == "finished" for r in snap.runs), snap.runs
    assert "bogus" not in {r.run_id for r in snap.runs}
    for run in snap.runs:
        assert run.summary["loss"] == run.config["x"] / 3
        assert run.metrics["loss"] == run.config["x"] / 3 and run.metrics["i"] == 2
        assert run.summary["omp"] == "1" and run.summary["cuda"] == "" and run.summary["own_service"]
        assert run.dir and os.path.isdir(run.dir) and run.duration is not None
    # Each CPU agent is pinned to its own share of the cores.
    slots = devices.plan(cpus=2)
    assert all(tuple(r.summary["cores"]) == slots[r.agent].cpus for r in snap.runs)
    assert sum(a.runs_done for a in snap.agents) == 4
    assert snap.best_run().config["x"] == 1
    # The server heard the outcome, and the metric's history in order, over the side channel.
    assert {r["state"] for r in server.runs(snap.sweep_id)} == {"finished"}
    for run in snap.runs:
        x = run.config["x"]
        assert [h["loss"] for h in server.controller.store.history(run.run_id)] == [x, x / 2, x / 3]
    # User prints land in the per-agent log (0600), and in its tail; never in the events.
    logs = log_text(sup, 0) + log_text(sup, 1)
    assert "user output for x=1" in logs and '"run_id":"bogus"' in logs
    assert any("user output" in line for a in snap.agents for line in a.log_tail)
    assert stat.S_IMODE(os.stat(snap.agents[0].log_path).st_mode) == 0o600
    assert not [f for f in os.listdir(tmp_path / "logs") if f.startswith(".spec")]  # read and deleted
    assert not our_processes(before)


def test_metrics_are_coalesced_and_history_batched(server, tmp_path):
    changes = []
    sup = start(server, train_floods, tmp_path, [1], agents=1, on_change=lambda: changes.append(time.monotonic()))
    try:
        assert sup.wait(120)
        snap = sup.snapshot()
    finally:
        sup.stop()
    (run,) = snap.runs
    assert run.state == "finished" and run.metrics["loss"] == 2999.0 and run.step == 2999
    # 3000 logs, a handful of updates: the kernel never sees the flood.
    assert len(changes) < 60
    history = server.controller.store.history(run.run_id)
    assert [h["loss"] for h in history] == [float(i) for i in range(3000)]


def test_function_raises_fails_that_run_and_agent_goes_on(server, tmp_path):
    sup = start(server, train_raises_on_2, tmp_path, [1, 2, 3, 4], agents=1)
    try:
        assert sup.wait(120)
        snap = sup.snapshot()
    finally:
        sup.stop()
    states = {r.config["x"]: r.state for r in snap.runs}
    assert states == {1: "finished", 2: "failed", 3: "finished", 4: "finished"}
    failed = next(r for r in snap.runs if r.state == "failed")
    assert "ValueError: x=2 is not allowed here" in failed.error and "Traceback" in failed.error
    assert snap.agents[0].state == "exited" and snap.agents[0].restarts == 0


def test_sigkilled_agent_is_restarted_and_sweep_completes(server, tmp_path):
    sup = start(server, train_slow, tmp_path, [1, 2, 3, 4, 5, 6], agents=2)
    try:
        victim = wait_for(
            lambda: next((a for a in sup.snapshot().agents if a.state == "running"), None),
            90, "a running agent", sup,
        )  # fmt: skip
        os.kill(victim.pid, signal.SIGKILL)
        assert sup.wait(150)
        snap = sup.snapshot()
    finally:
        sup.stop()
    crashed = [r for r in snap.runs if r.state == "crashed"]
    assert len(crashed) == 1 and crashed[0].run_id == victim.current_run
    assert "killed by SIGKILL" in crashed[0].error
    agent = snap.agents[victim.index]
    other = snap.agents[1 - victim.index]
    assert agent.restarts == 1 and agent.state == "exited"
    assert other.restarts == 0 and other.state == "exited"
    # The sweep completed: every other grid point ran to the end.
    assert sorted(r.config["x"] for r in snap.runs if r.state == "finished") == sorted(
        set(range(1, 7)) - {crashed[0].config["x"]}
    )


def test_abort_names_sigabrt(server, tmp_path):
    sup = start(server, train_aborts_on_1, tmp_path, [1, 2], agents=1)
    try:
        assert sup.wait(150)
        snap = sup.snapshot()
    finally:
        sup.stop()
    aborted = next(r for r in snap.runs if r.config["x"] == 1)
    assert aborted.state == "crashed" and "SIGABRT" in aborted.error
    assert snap.agents[0].restarts == 1
    assert [r.state for r in snap.runs if r.config["x"] == 2] == ["finished"]
    assert "Fatal Python error: Aborted" in log_text(sup, 0)  # faulthandler's traceback


def test_crash_loop_gives_up_after_max_restarts(server, tmp_path):
    sup = start(server, train_always_aborts, tmp_path, [1, 2, 3, 4], agents=1, max_restarts=1)
    try:
        assert sup.wait(120)
        snap = sup.snapshot()
    finally:
        sup.stop()
    (agent,) = snap.agents
    assert agent.state == "failed" and agent.restarts == 1
    assert agent.reason == "killed by SIGABRT; gave up after 1 restarts"
    assert [r.state for r in snap.runs] == ["crashed", "crashed"]


def test_hanging_function_is_stopped_within_15s(server, tmp_path):
    before = descendants()
    sup = start(server, train_hangs, tmp_path, [1, 2], agents=2)
    try:
        wait_for(lambda: all(a.state == "running" for a in sup.snapshot().agents), 90, "two running agents", sup)
    finally:
        t0 = time.monotonic()
        sup.stop()
        took = time.monotonic() - t0
    assert not our_processes(before) and took < 15
    snap = sup.snapshot()
    assert snap.state == "stopped"
    assert {r.state for r in snap.runs} == {"killed"}
    assert all(a.state in ("exited", "killed") for a in snap.agents)


def test_function_ignoring_sigint_is_still_stopped(server, tmp_path):
    before = descendants()
    sup = start(server, train_ignores_sigint, tmp_path, [1], agents=1)
    try:
        wait_for(lambda: sup.snapshot().agents[0].state == "running", 90, "a running agent", sup)
        time.sleep(0.5)  # let it install SIG_IGN
    finally:
        t0 = time.monotonic()
        sup.stop()
        took = time.monotonic() - t0
    assert not our_processes(before) and took < 15
    assert sup.snapshot().agents[0].state == "killed"


def test_eight_agents_started_together_get_distinct_first_configs(server, tmp_path):
    import warnings

    from sweep_magic import devices

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 agents on a 2-core machine: no pinning, by design
        slots = devices.plan(cpus=8)
    sup = start(server, train_ok, tmp_path, range(16), count=1, slots=slots)
    try:
        assert sup.wait(240)
        snap = sup.snapshot()
    finally:
        sup.stop()
    first = {}
    for run in snap.runs:
        first.setdefault(run.agent, run.config["x"])
    assert len(first) == 8 and len(set(first.values())) == 8, snap.runs
    assert all(a.state == "exited" and a.runs_done == 1 for a in snap.agents)


def test_drain_kill_and_restart_one_agent(server, tmp_path):
    sup = start(server, train_slow, tmp_path, range(1, 6), agents=2)
    try:
        wait_for(lambda: all(a.state == "running" for a in sup.snapshot().agents), 90, "two running agents", sup)
        draining = sup.snapshot().agents[0].current_run
        sup.drain_agent(0)
        assert sup.snapshot().agents[0].state == "draining"
        killed = sup.snapshot().agents[1].current_run
        sup.kill_agent(1)
        wait_for(lambda: sup.snapshot().agents[1].state == "killed", 30, "agent 1 killed", sup)
        wait_for(lambda: sup.snapshot().agents[0].state == "exited", 30, "agent 0 drained", sup)
        snap = sup.snapshot()
        runs = {r.run_id: r for r in snap.runs}
        assert runs[draining].state == "finished"  # the drained agent finished its run first
        assert runs[killed].state == "killed" and snap.agents[0].reason == "drained"
        assert snap.agents[0].runs_done == 1 and snap.agents[1].restarts == 0  # killed: no restart
        assert sup.wait(30) and sup.snapshot().state == "finished"  # done once the sidecars are gone
        sup.restart_agent(1)
        assert sup.wait(120)
        snap = sup.snapshot()
    finally:
        sup.stop()
    assert snap.agents[1].restarts == 1 and snap.agents[1].state == "exited" and snap.agents[1].runs_done >= 1
    assert snap.state == "finished"


def test_stop_with_drain_lets_runs_finish(server, tmp_path):
    before = descendants()
    sup = start(server, train_slow, tmp_path, range(1, 9), agents=2)
    try:
        wait_for(lambda: all(a.state == "running" for a in sup.snapshot().agents), 90, "two running agents", sup)
        running = {a.current_run for a in sup.snapshot().agents}
    finally:
        sup.stop(drain=True, timeout=60)
    snap = sup.snapshot()
    assert snap.state == "stopped" and not our_processes(before)
    assert {r.run_id: r.state for r in snap.runs if r.run_id in running} == dict.fromkeys(running, "finished")
    assert [a.state for a in snap.agents] == ["exited", "exited"]


def test_drain_and_stop_while_agents_are_still_starting(server, tmp_path, monkeypatch):
    # Fresh interpreters: a warm-started worker (a fork of the zygote) can be inside its first
    # run 60 ms after the spawn, before the drain below arrives; this test is about the drain
    # that comes while the worker is still importing wandb.
    monkeypatch.setenv("SWEEP_MAGIC_WARM", "0")
    before = descendants()
    sup = start(server, train_ok, tmp_path, [1, 2, 3, 4], agents=2)
    try:
        wait_for(lambda: all(a.pid for a in sup.snapshot().agents), 30, "two spawned workers", sup)
        sup.drain_agent(0)  # still importing: the drain is remembered, no run is taken
        wait_for(lambda: sup.snapshot().agents[0].ended, 60, "agent 0 drained", sup)
    finally:
        sup.stop()
    snap = sup.snapshot()
    assert snap.agents[0].state == "exited" and snap.agents[0].reason == "drained"
    assert snap.agents[0].runs_done == 0 and snap.state == "stopped"
    assert snap.agents[1].state in ("exited", "killed") and not our_processes(before)
