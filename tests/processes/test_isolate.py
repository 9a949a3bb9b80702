"""``isolate="run"``: each run's function in a child process of its own, for real.

Real workers running the real ``wandb.agent`` against the embedded server; each run's
function runs in a child forked from the agent's fork server.  The functions below
misbehave on purpose: leak memory into a global, SIGKILL themselves, run too long.
"""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest
from workers_helpers import stop_decisions, wait_for

from sweep_magic import api, local_server, local_sweep
from sweep_magic.worker import isolation

MB = 1 << 20
_HOLD = []  # a module global: it survives from run to run in a long-lived agent


def leaks_200mb():
    import wandb

    with wandb.init() as run:
        _HOLD.append(b"\x01" * (200 * MB))  # written, so resident
        run.log({"loss": float(run.config.x), "held_mb": 200 * len(_HOLD)})


def kills_itself_on_2():
    import os
    import signal

    import wandb

    with wandb.init() as run:
        run.log({"loss": float(run.config.x)})
        if run.config.x == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def steps_with_a_helper():
    """Logs ``loss = x`` for ``steps`` steps; a helper process shares its process group."""
    import subprocess
    import time

    import wandb

    helper = subprocess.Popen(["sleep", "300"])
    with wandb.init() as run:
        run.summary["helper"] = helper.pid
        for _ in range(int(run.config.steps)):
            run.log({"loss": float(run.config.x)})
            time.sleep(float(run.config.step_sleep))
    helper.kill()


def ignores_sigint():
    import signal
    import time

    import wandb

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with wandb.init() as run:
        run.log({"loss": 1.0})
        time.sleep(300)


def quickstart_train():
    import wandb

    with wandb.init() as run:
        run.log({"loss": run.config.lr * run.config.width})


def _refuse_to_load():
    raise RuntimeError("this object cannot be loaded here")


class _LoadsNowhere:
    def __reduce__(self):
        return (_refuse_to_load, ())


def make_unloadable():
    thing = _LoadsNowhere()

    def train():
        return thing

    return train


def _sweep(values, project, **constants) -> str:
    params = {"x": {"values": list(values)}, **{k: {"value": v} for k, v in constants.items()}}
    return local_sweep({"method": "grid", "metric": {"name": "loss", "goal": "minimize"}, "parameters": params},
                       project=project)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader (not yet reaped by its parent) still "exists": count only live members.
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _run(session, run_id):
    return next(r for r in session.snapshot().runs if r.run_id == run_id)


class RssSampler(threading.Thread):
    """The worker's RSS every 50 ms: ``baseline`` once it is registered (before any run)."""

    def __init__(self, session):
        super().__init__(daemon=True)
        self.session, self.samples, self.baseline, self._done = session, [], None, threading.Event()

    def run(self):
        while not self._done.wait(0.05):
            agent = self.session.agents()[0]
            if agent.pid is None or agent.ended:
                continue
            try:
                rss = psutil.Process(agent.pid).memory_info().rss
            except psutil.Error:
                continue
            if self.baseline is None:
                if agent.state == "idle" and not self.session.snapshot().runs:
                    self.baseline = rss
                continue
            self.samples.append(rss)

    def growth_mb(self) -> float:
        self._done.set()
        self.join(5)
        assert self.baseline is not None and self.samples, "the worker was never sampled idle and running"
        return (max(self.samples) - self.baseline) / MB


def _leak_session(isolate: str):
    session = api.launch(leaks_200mb, _sweep(range(1, 6), f"leak-{isolate}"), cpus=1, isolate=isolate)
    sampler = RssSampler(session)
    sampler.start()
    try:
        assert session.wait(timeout=240), session.agents()
    finally:
        session.stop()
    return session, sampler.growth_mb()


def test_a_run_per_process_keeps_the_agent_flat_while_in_process_it_grows():
    isolated, growth_isolated = _leak_session("run")
    results = isolated.results()
    assert [r["state"] for r in results] == ["finished"] * 5, results
    assert growth_isolated <= 50, f"worker RSS grew {growth_isolated:.0f} MB with isolate='run'"
    # Every run had a process of its own; the agent stayed the same process throughout.
    (agent,) = isolated.agents()
    pids = [r["pid"] for r in results]
    assert None not in pids and len(set(pids)) == 5 and agent.pid not in pids
    assert agent.restarts == 0 and agent.runs_done == 5 and agent.state == "exited"
    assert all(run.metrics["held_mb"] == 200 for run in isolated.snapshot().runs)  # a fresh global each run

    shared, growth_shared = _leak_session("agent")
    assert [r["state"] for r in shared.results()] == ["finished"] * 5
    assert growth_shared >= 800, f"worker RSS grew only {growth_shared:.0f} MB in one process"
    assert sorted(run.metrics["held_mb"] for run in shared.snapshot().runs) == [200, 400, 600, 800, 1000]


@pytest.mark.parametrize("start", ["fork server", "spawn"])
def test_a_run_killed_by_sigkill_crashes_alone(start, monkeypatch):
    if start == "spawn":
        monkeypatch.setenv(isolation.FORKSERVER_VAR, "0")  # a fresh interpreter per run
    session = api.launch(kills_itself_on_2, _sweep([1, 2, 3], f"sigkill-{start[:4]}"), cpus=1, isolate="run")
    try:
        assert session.wait(timeout=180), session.agents()
    finally:
        session.stop()
    by_x = {r["config"]["x"]: r for r in session.results()}
    assert [by_x[x]["state"] for x in (1, 2, 3)] == ["finished", "crashed", "finished"], by_x
    assert by_x[2]["error"] == "killed by SIGKILL — often the out-of-memory killer"
    (agent,) = session.agents()
    assert agent.restarts == 0 and agent.runs_done == 3 and agent.state == "exited"
    assert {r["agent"] for r in by_x.values()} == {0}
    server_runs = {r["config"]["x"]["value"]: r["state"] for r in local_server().runs(session.sweep_id)}
    assert server_runs == {1: "finished", 2: "crashed", 3: "finished"}


def test_a_function_that_cannot_be_loaded_fails_the_agent_once():
    session = api.launch(make_unloadable(), _sweep([1, 2, 3], "unloadable"), cpus=1, isolate="run")
    try:
        assert session.wait(timeout=120), session.agents()
    finally:
        session.stop()
    (agent,) = session.agents()
    assert agent.state == "failed" and agent.restarts == 0
    assert "could not be loaded in the run's process" in agent.reason
    (run,) = session.results()  # the first run tells; the agent takes no more
    assert run["state"] == "failed" and "this object cannot be loaded here" in run["error"]


def test_hyperband_stop_kills_the_run_group_and_the_agent_goes_on(monkeypatch):
    sweep_id = local_sweep({
        "method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {"x": {"values": [1.0, 1.5, 100.0, 1.2]}, "steps": {"value": 30}, "step_sleep": {"value": 0.1}},
    }, project="hyperband-isolate")
    decided = stop_decisions(monkeypatch)  # run id → when the server decided to stop it
    session = api.launch(steps_with_a_helper, sweep_id, cpus=1, isolate="run")
    try:
        bad = wait_for(lambda: next((r for r in session.snapshot().runs if r.config.get("x") == 100.0), None), 120,
                       "the x=100 run to start")
        assert bad.pid and _group_alive(bad.pid)
        wait_for(lambda: not _group_alive(bad.pid), 60, "the stopped run's process group to go")
        gone = time.monotonic()
        assert session.wait(timeout=120), session.agents()
    finally:
        session.stop()
    assert bad.run_id in decided, "hyperband never stopped x=100"
    lived = gone - decided[bad.run_id]
    assert lived <= 5.0, f"the run's group lived {lived:.1f} s after the stop decision"
    by_x = {r["config"]["x"]: r for r in session.results()}
    assert by_x[100.0]["state"] == "killed"
    assert by_x[1.0]["state"] == by_x[1.5]["state"] == "finished"
    # The next run started after the stop, in a fresh process (hyperband may stop it too).
    assert by_x[1.2]["state"] in ("finished", "killed") and by_x[1.2]["pid"] != by_x[100.0]["pid"]
    (agent,) = session.agents()
    assert agent.restarts == 0 and agent.runs_done == 4
    assert not psutil.pid_exists(by_x[1.0]["summary"]["helper"])


def test_stop_and_kill_agent_leave_no_run_process_behind():
    session = api.launch(steps_with_a_helper, _sweep(range(1, 7), "kill-isolate", steps=600, step_sleep=0.1),
                         cpus=2, isolate="run")
    try:
        runs = wait_for(lambda: len([r for r in session.snapshot().runs if r.pid]) >= 2 and session.snapshot().runs,
                        120, "both agents to run")
        first = next(r for r in runs if r.agent == 0)
        other = next(r for r in runs if r.agent == 1)
        worker = psutil.Process(session.agents()[0].pid)
        members = [first.pid] + [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        session.kill_agent(0)
        wait_for(lambda: not _group_alive(first.pid), 10, "the killed agent's run group to go")
        wait_for(lambda: not _alive(worker.pid), 10, "the killed worker to go")
        assert not any(_alive(pid) for pid in members)
        wait_for(lambda: _run(session, first.run_id).state != "running" and session.agents()[0].ended, 20,
                 "the killed agent to be settled")
        assert _group_alive(other.pid)
        session.stop()
        assert session.wait(timeout=30)
        assert not _group_alive(other.pid)
    finally:
        session.stop()
    states = {r.run_id: r.state for r in session.snapshot().runs}
    assert states[first.run_id] == "killed" and states[other.run_id] == "killed"
    # The no_orphans fixture checks every process of the test (fork servers, run children,
    # their helpers, wandb-core) is gone.


def test_stop_escalates_on_a_run_that_ignores_sigint():
    session = api.launch(ignores_sigint, _sweep([1, 2], "sigint-isolate"), cpus=1, isolate="run")
    try:
        run = wait_for(lambda: next((r for r in session.snapshot().runs if r.pid), None), 120, "the run to start")
        agent_pid = session.agents()[0].pid
        t0 = time.monotonic()
        session.stop()
        took = time.monotonic() - t0
    finally:
        session.stop()
    assert took < 10, f"stop took {took:.1f} s"
    assert not _group_alive(run.pid) and not _alive(agent_pid)
    assert _run(session, run.run_id).state == "killed"
    (agent,) = session.agents()
    assert agent.state == "exited" and agent.reason == "stopped"  # the agent itself ended cleanly


def test_quickstart_grid_gives_the_same_results_in_both_modes():
    config = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
              "parameters": {"lr": {"values": [0.003, 0.01, 0.03, 0.1]}, "width": {"values": [16, 64]}}}
    outcome = {}
    for isolate in ("agent", "run"):
        session = api.launch(quickstart_train, local_sweep(config, project=f"quickstart-{isolate}"), cpus=2,
                             isolate=isolate)
        try:
            assert session.wait(timeout=240), session.agents()
        finally:
            session.stop()
        results = {(r["config"]["lr"], r["config"]["width"]): (r["state"], r["summary"]["loss"])
                   for r in session.results()}
        best = session.snapshot().best_run()
        outcome[isolate] = (results, (best.config["lr"], best.config["width"]))
    assert len(outcome["agent"][0]) == 8
    assert outcome["agent"] == outcome["run"]
    assert outcome["run"][1] == (0.003, 16)


def test_isolate_is_checked_and_the_magic_passes_it_on():
    from IPython.core.error import UsageError

    from sweep_magic.errors import SweepMagicError
    from sweep_magic.magic import SweepMagics

    with pytest.raises(SweepMagicError, match="isolate must be one of 'agent', 'run'"):
        api.launch(quickstart_train, "abc", cpus=1, isolate="trial")
    parse = SweepMagics.sweep_parallel.parser.parse_argstring
    assert parse("abc --isolate run").isolate == "run" and parse("abc").isolate == "agent"
    with pytest.raises(UsageError):
        parse("abc --isolate trial")
