"""``launch(nice=N)`` / ``--nice N``: the agents (worker and wandb-core, process and session)
run at a lower priority, for real; without it nothing changes."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from IPython.core.error import UsageError
from shells import magic_shell

from sweep_magic import api, local_sweep
from sweep_magic._testing import sidecars_of


def _grid(n: int, project: str) -> str:
    return local_sweep({"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                        "parameters": {"x": {"values": list(range(1, n + 1))}}}, project=project)


def _held_train(release: str):
    """A trial that stays in its run until ``release`` exists (60 s at most)."""

    def train():
        import os
        import time

        import wandb

        with wandb.init() as run:
            deadline = time.time() + 60
            while not os.path.exists(release) and time.time() < deadline:
                time.sleep(0.05)
            run.log({"loss": float(run.config.x)})

    return train


def _autogroup_nice(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split("nice")[-1])
    except OSError:
        return None


def _agent_processes(session, timeout: float = 60) -> tuple[psutil.Process, psutil.Process]:
    """(worker, its wandb-core) once the agent is inside its run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agents = session.agents()
        if agents and agents[0].current_run and agents[0].pid:
            cores = sidecars_of(agents[0].pid)
            if cores:
                return psutil.Process(agents[0].pid), cores[0]
        time.sleep(0.1)
    raise AssertionError(f"no agent inside a run with its wandb-core after {timeout} s: {session.agents()}")


def _priorities(procs) -> list[tuple[int, int | None]]:
    return [(p.nice(), _autogroup_nice(p.pid)) for p in procs]


def _run_held(tmp_path, nice, check) -> None:
    release = str(tmp_path / "release")
    session = api.launch(_held_train(release), _grid(1, "prio"), cpus=1, count=1, **({} if nice is None else {"nice": nice}))
    try:
        worker, core = _agent_processes(session)
        check(worker, core)
        open(release, "w").close()
        assert session.wait(timeout=60), session.agents()
    finally:
        open(release, "a").close()
        session.stop()
    (result,) = session.results()
    assert result["state"] == "finished"


def test_nice_lowers_worker_and_wandb_core(tmp_path):
    def check(worker, core):
        expected = (7, 7 if os.path.exists(f"/proc/{worker.pid}/autogroup") else None)
        deadline = time.monotonic() + 5  # the worker's watcher looks for its wandb-core 5×/s
        while _priorities([worker, core]) != [expected, expected] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _priorities([worker, core]) == [expected, expected]

    _run_held(tmp_path, 7, check)


def test_default_launch_leaves_priority_alone(tmp_path):
    mine = os.getpriority(os.PRIO_PROCESS, 0)

    def check(worker, core):
        time.sleep(0.5)  # what a watcher would have done by now
        for proc in (worker, core):
            assert proc.nice() == mine
            assert _autogroup_nice(proc.pid) in (None, 0)

    _run_held(tmp_path, None, check)


@pytest.mark.parametrize("nice", [-1, 20, 2.5, True, "5"])
def test_launch_rejects_bad_nice_before_anything(nice):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(api.SweepMagicError, match="nice must be"):
        api.launch(lambda: None, "abc", cpus=1, nice=nice)
    assert api.sessions() == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.fixture
def ip():
    with magic_shell() as shell:
        yield shell


@pytest.mark.parametrize("value, expected", [("25", "from 0 to 19 (19 = lowest priority), got 25"), ("-3", "got -3"),
                                             ("x", "expected a whole number from 0 to 19")])
def test_magic_bad_nice_is_one_line_and_starts_nothing(ip, value, expected):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(UsageError) as info:
        ip.run_cell(f"%%sweep_parallel abc --cpus 1 --nice {value}\ndef train():\n    pass\n")
    message = str(info.value)
    assert "\n" not in message and "--nice" in message and expected in message
    assert api.sessions() == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_magic_passes_nice_on():
    from sweep_magic.magic import SweepMagics

    parse = SweepMagics.sweep_parallel.parser.parse_argstring
    assert parse("abc --nice 10").nice == 10 and parse("abc").nice is None
