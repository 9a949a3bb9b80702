"""The public API and its text face.

Pure units first (function checks, sweep-id forms, the text rendering of
snapshots), then real sessions: workers running the real ``wandb.agent`` against
the embedded server, offline runs on disk.
"""

from __future__ import annotations

import threading
import time

import pytest

from sweep_magic import api, payload
from sweep_magic import target as targets
from sweep_magic.errors import FunctionError, SweepMagicError, SweepNotFound
from sweep_magic.faces import kernel as _display
from sweep_magic.faces import text
from sweep_magic.snapshot import AgentSnapshot, RunSnapshot, SessionSnapshot


# --- the function a worker gets ------------------------------------------------------------
def test_prepare_accepts_defaults_and_closures():
    factor = 3

    def train(lr=0.1, *, epochs=2):
        return lr * factor * epochs

    import cloudpickle

    assert cloudpickle.loads(payload.prepare(train))() == pytest.approx(0.6)
    assert payload.prepare(lambda: 1)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda x: x, "required arguments (x)"),
        (lambda *, k: k, "required arguments (k)"),
        (42, "is not a function"),
    ],
)
def test_prepare_rejects(fn, expected):
    with pytest.raises(FunctionError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        payload.prepare(fn)


def test_referenced_skips_modules_and_finds_nested_code():
    import os

    table = {"a": 1}

    def train():
        return [os.getpid() for _ in table]  # `table` is used inside a comprehension

    names = [name for name, _ in payload.referenced(train)]
    assert names == ["table"]


# --- sweep ids and metrics -------------------------------------------------------------------
def test_sweep_id_forms():
    assert targets.split("abc") == (None, None, "abc")
    assert targets.split("p/abc") == (None, "p", "abc")
    assert targets.split("e/p/abc") == ("e", "p", "abc")
    with pytest.raises(SweepNotFound):
        targets.split("a/b/c/d")


def test_metric_from_config():
    assert targets.metric({"metric": {"name": "acc", "goal": "maximize"}}) == ("acc", "maximize")
    assert targets.metric({"metric": {"name": "loss"}}) == ("loss", "minimize")
    assert targets.metric({}) == (None, None)


def test_count_is_checked_before_anything():
    with pytest.raises(SweepMagicError, match="count must be"):
        api.launch(lambda: None, "abc", count=0)


def test_headless_override(monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_WAIT", "1")
    assert _display.headless()
    monkeypatch.setenv("SWEEP_MAGIC_WAIT", "0")
    assert not _display.headless()
    monkeypatch.delenv("SWEEP_MAGIC_WAIT")
    assert not _display.headless()  # plain Python: never headless by guess


# --- the text face, from snapshots ---------------------------------------------------------
def _snap(state="running", runs=(), agents=None, version=1):
    agents = agents or (AgentSnapshot(0, "cpu 0", "running"), AgentSnapshot(1, "gpu 1", "running"))
    return SessionSnapshot("s1", "sw1", state, agents=tuple(agents), runs=tuple(runs), metric_name="loss",
                           metric_goal="minimize", started_at=100.0, ended_at=110.0 if state != "running" else None,
                           version=version)


def _run(rid, agent, loss=None, state="finished", x=1):
    summary = {"loss": loss} if loss is not None else {}
    return RunSnapshot(rid, agent, rid, {"x": x, "lr": 0.001}, state, summary=summary, started_at=100.0,
                       ended_at=None if state == "running" else 102.5, error="Traceback\nValueError: boom" if state == "failed" else None)


def test_event_lines_have_prefix_config_and_metric():
    start = _snap(runs=[_run("r1", 0, state="running")])
    lines = text.event_lines(None, start)
    assert lines == ["[agent 0 · cpu 0] run r1 started  lr=0.001 x=1"]
    end = _snap(runs=[_run("r1", 0, loss=0.25), _run("r2", 1, state="failed", x=2)], version=2)
    lines = text.event_lines(start, end)
    assert lines[0] == "[agent 0 · cpu 0] run r1 finished in 2.5s  loss=0.25  lr=0.001 x=1"
    assert lines[1] == "[agent 1 · gpu 1] run r2 started  lr=0.001 x=2"
    assert lines[2].startswith("[agent 1 · gpu 1] run r2 failed in 2.5s") and lines[2].endswith("(ValueError: boom)")


def test_agent_lines():
    before = _snap()
    after = _snap(agents=(AgentSnapshot(0, "cpu 0", "exited", runs_done=3),
                          AgentSnapshot(1, "gpu 1", "failed", reason="killed by SIGKILL")))
    assert text.event_lines(before, after) == [
        "[agent 0 · cpu 0] done after 3 runs",
        "[agent 1 · gpu 1] failed: killed by SIGKILL",
    ]


def test_table_is_best_first():
    snap = _snap("finished", runs=[_run("r1", 0, loss=0.5), _run("r2", 1, loss=0.1, x=2), _run("r3", 0, state="failed")])
    lines = text.table(snap).splitlines()
    assert lines[0].split() == ["#", "run", "agent", "state", "loss", "time", "lr", "x"]
    assert [line.split()[1] for line in lines[2:]] == ["r2", "r1", "r3"]
    block = text.render(snap, ["a line"])
    assert block.startswith("sweep sw1 · session s1 · finished") and "best loss=0.1 (r2)" in block
    assert "a line" in block and "r3" in block


# --- real sessions: the embedded server, real workers ----------------------------------------
def make_train(seconds: float = 0.1):
    # Defined in a factory so cloudpickle ships it by value, as it would a notebook function.
    def train():
        import time

        import wandb

        with wandb.init() as run:
            for step in range(3):
                time.sleep(seconds)
                run.log({"loss": run.config.x / (step + 1)})

    return train


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    return tmp_path


def _grid(n: int, project: str = "api") -> str:
    from sweep_magic import local_sweep

    config = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
              "parameters": {"x": {"values": list(range(1, n + 1))}}}
    return local_sweep(config, project=project)


def test_launch_runs_a_local_grid_to_the_end(home, capsys):
    assert _display.shell() is None, "plain Python here: show() streams text to stdout"
    sweep_id = _grid(4)
    session = api.launch(make_train(), sweep_id, cpus=2)
    try:
        assert session in api.sessions() and api.sessions()[-1] is session
        view = session.show()
        assert session.wait(timeout=180), session.agents()
        view.join(timeout=10)
    finally:
        session.stop()
    results = session.results()
    assert sorted(r["config"]["x"] for r in results) == [1, 2, 3, 4]
    assert {r["state"] for r in results} == {"finished"}
    assert all(isinstance(r["config"], dict) and r["duration"] is not None for r in results)
    assert {r["agent"] for r in results} <= {0, 1}
    snap = session.snapshot()
    assert snap.done and snap.metric_name == "loss" and snap.best_run().config["x"] == 1
    assert session.dir.startswith(str(home))
    log = capsys.readouterr().out
    assert log.count(" started ") == 4 and log.count(" finished in ") == 4
    assert "[agent 0 · cpu" in log and "best loss=" in log
    assert repr(session).startswith(f"<SweepSession {session.id} sweep=")


def test_stop_ends_a_running_session_and_count_limits_runs(home):
    sweep_id = _grid(6, project="api-stop")
    path = f"local/api-stop/{sweep_id}"  # the ENTITY/PROJECT/ID form of a local sweep works too
    session = api.launch(make_train(seconds=2.0), path, cpus=1, count=2)
    seen = threading.Event()
    calls = []
    unsubscribe = session.subscribe(lambda: (calls.append(len(session.snapshot().runs)), seen.set() if session.snapshot().runs else None))
    try:
        deadline = time.monotonic() + 60
        while not session.snapshot().runs and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session.snapshot().runs, session.agents()
        assert seen.wait(5), calls
        session.stop()
        assert session.wait(timeout=30)
    finally:
        unsubscribe()
        session.stop()
    assert session.done and all(a.ended for a in session.agents())
    assert len(session.results()) <= 2


def test_launch_against_a_self_hosted_wandb(home, monkeypatch):
    """The non-local path, for real: a second embedded server stands in for a self-hosted W&B.

    The sweep is not on this process's local server, so launch takes the W&B path: login
    from WANDB_API_KEY, the sweep checked with wandb.Api().sweep, and the agents pointed at
    WANDB_BASE_URL with that key (offline runs, since the stand-in has no run upload API).
    """
    from sweep_magic.server import serve

    with serve(db=str(home / "other.sqlite3")) as other:
        sweep_id = other.create_sweep({"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                                       "parameters": {"x": {"values": [3, 4]}}}, project="selfhosted", entity="team")
        for name, value in {"WANDB_BASE_URL": other.url, "WANDB_API_KEY": other.api_key, "WANDB_MODE": "offline"}.items():
            monkeypatch.setenv(name, value)
        session = api.launch(make_train(0.05), f"team/selfhosted/{sweep_id}", cpus=1, count=1)
        try:
            assert session.wait(timeout=120), session.agents()
        finally:
            session.stop()
            import wandb

            wandb.teardown()  # this process's wandb now knows the stand-in's URL and key: forget them
    assert not session.local and session.snapshot().metric_name == "loss"
    (result,) = session.results()
    assert result["state"] == "finished" and result["config"]["x"] in (3, 4)


def test_table_is_bounded():
    snap = _snap("finished", runs=[_run(f"r{i}", 0, loss=float(i)) for i in range(60)])
    lines = text.table(snap).splitlines()
    assert len(lines) == 2 + text.MAX_TABLE_ROWS + 1 and lines[-1].startswith("… 10 more runs")
    assert len(text.table(snap, limit=None).splitlines()) == 62


def _raise_when_odd():
    import wandb

    with wandb.init() as run:
        if run.config.x % 2:
            raise RuntimeError(f"odd x={run.config.x}")
        run.log({"loss": run.config.x})


def _always_raise():
    import wandb

    with wandb.init():
        raise RuntimeError("no data")


def test_raise_for_failures_only_when_nothing_finished(home):
    from sweep_magic.errors import SweepFailed

    mixed = api.launch(_raise_when_odd, _grid(2, project="mixed"), cpus=1)
    broken = api.launch(_always_raise, _grid(2, project="broken"), cpus=1)
    assert mixed.wait(timeout=180) and broken.wait(timeout=180)
    assert sorted(r["state"] for r in mixed.results()) == ["failed", "finished"]
    assert mixed.failures() is None
    mixed.raise_for_failures()  # some runs finished: the sweep did its job
    with pytest.raises(SweepFailed) as info:
        broken.raise_for_failures()
    message = str(info.value)
    assert "\n" not in message and message == broken.failures()
    assert message.startswith("2 of 2 runs failed and none finished; first (")
    assert message.endswith("RuntimeError: no data")


class _LoadsOnlyInTheKernel:
    """A global that pickles fine and fails to unpickle, as an object of a package missing
    from the workers' environment would."""

    def __reduce__(self):
        return (exec, ("raise ImportError('No module named cuda_only_package')",))


def test_raise_for_failures_when_no_agent_could_run(home):
    """Agents that fail before any run leave no runs to count; the sweep still failed."""
    from sweep_magic.errors import SweepFailed

    unloadable = _LoadsOnlyInTheKernel()

    def train():  # a closure: sent by value, with the object it holds
        return unloadable

    session = api.launch(train, _grid(2, project="unloadable"), cpus=2)
    assert session.wait(timeout=180)
    assert session.results() == [] and {a.state for a in session.agents()} == {"failed"}
    with pytest.raises(SweepFailed) as info:
        session.raise_for_failures()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("no run started: 2 of 2 agents failed; first (agent ")
    assert "could not be loaded" in message
