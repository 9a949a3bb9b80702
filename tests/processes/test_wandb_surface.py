"""The wandb adapter's surface check, on this wandb and on a moved one.

A moved surface is made for real: ``wandb_breaks`` deletes or re-signs a touch point (named
by its id in the adapter's table) in a fresh interpreter, in-process or through a
``sitecustomize`` in a worker started by the supervisor -- the product running against a
wandb whose internals moved, not a fake of wandb.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import wandb
from wandb_breaks import REPO, TESTS, site_dir
from workers_helpers import grid_sweep, spec_builder

from sweep_magic import _wandb, devices
from sweep_magic._wandb import surface
from sweep_magic.agents.supervisor import Supervisor


def known_gaps(version: str) -> set[str]:
    """Touch points measured missing on a tested release (docs/wandb-compat.md): best effort
    only.  pyagent grew ``_heartbeat_commands`` and ``HEARTBEAT_SLEEP_SECONDS`` in 0.28.1."""
    release = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    return {"agent.heartbeat_commands", "agent.heartbeat_seconds"} if release < (0, 28, 1) else set()


def test_this_wandb_fits():
    found = _wandb.check()
    assert found.version == wandb.__version__ and found.tested
    assert not found.refused and found.live
    assert set(found.problems) == known_gaps(found.version)
    # each gap is said once: in the views, or (fallback as good) in the worker's log
    assert len(found.notes()) + len(found.degradations(shown=False)) == len(found.problems)


def test_every_moved_touch_point_is_refused_degraded_or_named():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    out = subprocess.run([sys.executable, "-m", "wandb_breaks"], env=env, cwd=TESTS, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    version = result["version"]
    cases = result["cases"]
    assert set(result["clean"]) == known_gaps(version)
    # every point deleted, method points re-signed too (but the ones this wandb lacks already)
    assert {c.split(":")[0] for c in cases} == {p.id for p in surface.POINTS} - set(result["clean"])
    for case, seen in cases.items():
        point = surface.BY_ID[case.split(":")[0]]
        assert seen["problem"], f"{case}: the check did not notice"
        if point.cls == surface.REQUIRED:
            assert seen["refused"], case
            line = seen["refusal"]
            assert "\n" not in line and f"wandb {version}" in line and point.where in line, (case, line)
        elif point.cls == surface.LIVE:
            assert not seen["refused"] and not seen["live"], case
            (note,) = [n for n in seen["notes"] if n.startswith("live detail off")]
            assert point.where in note and f"wandb {version}" in note, (case, note)
        else:
            assert not seen["refused"] and seen["live"], case
            said = seen["notes"] if point.shown else seen["log_only"]
            assert any(point.degradation in n and point.where in n for n in said), (case, seen)


def _supervisor(server, tmp_path, function, values, moved: dict, isolate: str = "agent") -> Supervisor:
    """One agent whose interpreters (and its run children's) have ``moved`` applied at start
    (a sitecustomize)."""
    sweep_id = grid_sweep(server, values)
    build = spec_builder(server, function, sweep_id, tmp_path)

    def spec_for_slot(slot):
        spec = build(slot)
        spec.env = {**spec.env, **moved}
        spec.isolate = isolate
        return spec

    sup = Supervisor(spec_for_slot, devices.plan(cpus=1), session_id="s", sweep_id=sweep_id,
                     log_dir=str(tmp_path / "logs"), metric_name="loss", metric_goal="minimize")  # fmt: skip
    sup.start()
    return sup


def train_logs_then_maybe_raises():
    import wandb

    with wandb.init() as run:
        x = run.config.x
        run.log({"loss": x * 10.0})
        run.log({"loss": x * 1.0})
        if x == 3:
            raise RuntimeError("three is bad")


@pytest.mark.parametrize("isolate", ["agent", "run"])
def test_worker_without_the_live_hooks_still_finishes_the_sweep(server, tmp_path, isolate):
    """Run._finish re-signed: live detail off, said once; runs still start, end, get their
    state and their last logged values as summary, and the server gets them too -- with
    runs in the agent's process, and in a process per run."""
    moved = site_dir(tmp_path / "site", "run.finish", "resign")
    sup = _supervisor(server, tmp_path, train_logs_then_maybe_raises, [1, 2, 3], moved, isolate)
    try:
        assert sup.wait(120), sup.snapshot()
    finally:
        sup.stop()
    snap = sup.snapshot()
    assert len(set(snap.notices)) == len(snap.notices)  # each said once, not once per agent or run
    (notice,) = [n for n in snap.notices if n.startswith("live detail off")]
    assert notice.startswith(f"live detail off on wandb {wandb.__version__}")
    assert surface.BY_ID["run.finish"].where in notice
    runs = {r.config["x"]: r for r in snap.runs}
    assert sorted(runs) == [1, 2, 3]
    assert runs[1].state == runs[2].state == "finished" and runs[3].state == "failed"
    assert "three is bad" in runs[3].error
    assert [runs[x].summary["loss"] for x in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert all(r.dir and os.path.isdir(r.dir) for r in runs.values())
    if isolate == "run":  # each run reported by its own process's (public) hooks
        assert len({r.pid for r in runs.values()} - {None, snap.agents[0].pid}) == 3
    served = {r["id"]: r for r in server.runs(snap.sweep_id)}
    assert served[runs[2].run_id]["state"] == "finished" and served[runs[2].run_id]["summary"]["loss"] == 2.0
    assert (snap.agents[0].state, snap.agents[0].restarts) == ("exited", 0)


def test_worker_refuses_with_one_line_when_a_required_point_moved(server, tmp_path):
    moved = site_dir(tmp_path / "site", "agent.run_job")
    sup = _supervisor(server, tmp_path, train_logs_then_maybe_raises, [1], moved)
    try:
        assert sup.wait(60), sup.snapshot()
    finally:
        sup.stop()
    snap = sup.snapshot()
    (agent,) = snap.agents
    assert agent.state == "failed" and agent.restarts == 0 and not snap.runs
    assert "\n" not in agent.reason
    assert f"wandb {wandb.__version__} cannot run sweep_magic agents" in agent.reason
    assert surface.BY_ID["agent.run_job"].where in agent.reason


SAVED_KEY = """
import json, sys, wandb_breaks
from sweep_magic import _wandb
restore = wandb_breaks.apply(sys.argv[1]) if sys.argv[1] != "none" else None
saved = _wandb.saved_api_key("https://api.example.test")
print(json.dumps({"key": saved.api_key, "missed": list(saved.missed)}))
"""


def test_saved_login_survives_a_moved_lookup(tmp_path):
    """~/.netrc is still read when wandb's reader moves; a moved wandb.login() lookup is
    reported (target's LoginRequired then says so) instead of looking like no login."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.example.test\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS]), "NETRC": str(netrc),
           "WANDB_CONFIG_DIR": str(tmp_path / "config")}  # fmt: skip
    env.pop("WANDB_API_KEY", None)
    seen = {}
    for moved in ("none", "login.netrc", "login.session"):
        out = subprocess.run([sys.executable, "-c", SAVED_KEY, moved], env=env, cwd=TESTS, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        seen[moved] = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(s["key"] == "k" * 40 for s in seen.values()), seen
    assert seen["none"]["missed"] == seen["login.netrc"]["missed"] == []
    assert seen["login.session"]["missed"] == ["login.session"]
