"""Program sweeps: ``launch(None, sweep_id)`` runs the sweep's ``program:`` per run, as
``wandb agent`` does, for real (the real CLI agent is the reference for the command lines).

Every program here is a Python script in the test's folder, run by ``python`` from PATH
(the venv's, first on PATH, as for the CLI agent).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import threading
import time

import pytest
from server_helpers import VENV_BIN, agent_env, reap, start, wait_all, write_script
from workers_helpers import stop_decisions, wait_for

from sweep_magic import api, local_server, local_sweep
from sweep_magic.worker import program

TRAIN = """
import argparse, os, wandb
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
args = parser.parse_args()
with wandb.init() as run:
    run.log({"loss": args.x})
    run.summary["args_match_config"] = args.x == run.config.x
    run.summary["pid"] = os.getpid()
"""

DUMP = """
import json, os, sys
run_id = os.environ["WANDB_RUN_ID"]
cmdline = open("/proc/self/cmdline").read().split(chr(0))[:-1]  # after /usr/bin/env exec'd the interpreter
out = {"argv": sys.argv, "cmdline": cmdline, "cwd": os.getcwd(), "stdin": sys.stdin.read(), "own_group": os.getpgrp() == os.getpid(),
       "env": {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}}
with open(os.environ["WANDB_SWEEP_PARAM_PATH"]) as f:
    out["param_file"] = f.read()
for arg in sys.argv:
    if arg.endswith(".json") and os.path.exists(arg):
        out["json_file"] = open(arg).read()
with open(os.path.join(os.environ["DUMP_DIR"], run_id + ".json"), "w") as f:
    json.dump(out, f)
"""

LIVE = """
import time, wandb
with wandb.init() as run:
    for i in range(30):
        run.log({"loss": 1.0 / (i + 1), "t": time.time()})
        time.sleep(0.1)
"""

FAILS = """
import sys, wandb
with wandb.init() as run:
    run.log({"loss": 1.0})
print("about to give up", file=sys.stderr)
print("fatal: the data set is missing", file=sys.stderr)
sys.exit(1)
"""

SLOW_WHEN_BAD = """
import argparse, subprocess, time, wandb
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
args = parser.parse_args()
helper = subprocess.Popen(["sleep", "300"])  # the program's own child: it goes with the run's group
with wandb.init() as run:
    for step in range(40):
        run.log({"loss": args.x})
        time.sleep(0.1)
helper.kill()
"""


@pytest.fixture
def here(tmp_path, monkeypatch):
    """The programs' folder as the current directory, and the venv's `python` first on PATH."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    return tmp_path


def _program_sweep(script: str, values, project: str, **extra) -> str:
    config = {"method": "grid", "program": script, "metric": {"name": "loss", "goal": "minimize"},
              "parameters": {"x": {"values": list(values)}}, **extra}
    return local_sweep(config, project=project)


def _run(session, timeout=240):
    try:
        assert session.wait(timeout=timeout), session.agents()
    finally:
        session.stop()
    return session.results()


def test_a_program_grid_runs_each_point_in_a_process_of_its_own(here):
    write_script(here / "train.py", TRAIN)
    results = _run(api.launch(None, _program_sweep("train.py", [1, 2, 3, 4, 5, 6], "prog-grid"), cpus=2))
    assert len(results) == 6 and {r["state"] for r in results} == {"finished"}, results
    assert sorted(r["config"]["x"] for r in results) == [1, 2, 3, 4, 5, 6]
    assert all(r["summary"]["loss"] == r["config"]["x"] and r["summary"]["args_match_config"] for r in results)
    # Each run was its program's own process, reported live by the program's own hooks.
    assert len({r["summary"]["pid"] for r in results}) == 6
    assert all(r["pid"] == r["summary"]["pid"] for r in results)
    assert {r["agent"] for r in results} == {0, 1}


def test_launch_without_a_function_needs_a_program(here):
    sweep_id = local_sweep({"method": "grid", "parameters": {"x": {"values": [1]}}}, project="prog-none")
    with pytest.raises(api.SweepMagicError, match="no `program:` or `command:`"):
        api.launch(None, sweep_id, cpus=1)


ALL_MACROS = ["${env}", "${interpreter}", "${program}", "${args}", "${args_no_equals}", "${args_no_hyphens}",
              "${args_json}", "${args_json_file}", "${args_no_boolean_flags}", "${args_append_hydra}",
              "${args_override_hydra}", "${args_dict}", "${no_such_macro}", "--tag=${envvar:SM_TAG}",
              "${envvar:SM_UNSET_VAR}", "plain"]


def test_every_macro_and_the_environment_match_the_wandb_agent_cli(here, monkeypatch):
    write_script(here / "dump.py", DUMP)
    config = {"method": "grid", "program": "dump.py", "command": ALL_MACROS,
              "parameters": {"x": {"values": [0.5]}, "flag": {"values": [True, False]},
                             "name": {"value": "a b"}, "n": {"value": 3}}}
    dumps = {}
    # The reference: the real `wandb agent` CLI against the embedded server.
    srv = local_server()
    cli_sid = local_sweep(config, project="prog-cli")
    (here / "cli").mkdir()
    (here / "cli-wandb").mkdir()
    env = agent_env(srv.env(), here / "cli-wandb", SM_TAG="t1", DUMP_DIR=here / "cli")
    procs = [start([os.path.join(VENV_BIN, "wandb"), "agent", "-p", "prog-cli", cli_sid], env, here, here / "cli.log")]
    try:
        assert wait_all(procs, 120) == [0], (here / "cli.log").read_text()[-3000:]
    finally:
        reap(procs)
    dumps["cli"] = _read_dumps(here / "cli", cli_sid)
    # The same sweep config, run by sweep_magic.
    (here / "ours").mkdir()
    monkeypatch.setenv("SM_TAG", "t1")
    monkeypatch.setenv("DUMP_DIR", str(here / "ours"))
    ours_sid = local_sweep(config, project="prog-ours")
    results = _run(api.launch(None, ours_sid, cpus=1))
    assert {r["state"] for r in results} == {"finished"}, [r["error"] for r in results]
    dumps["ours"] = _read_dumps(here / "ours", ours_sid)
    assert len(dumps["cli"]) == len(dumps["ours"]) == 2
    for flag in (True, False):
        cli, ours = dumps["cli"][flag], dumps["ours"][flag]
        assert ours["argv"] == cli["argv"] and ours["cmdline"] == cli["cmdline"], f"flag={flag}"
        assert ours["json_file"] == cli["json_file"] and ours["param_file"] == cli["param_file"]
        assert ours["stdin"] == cli["stdin"] == "" and ours["own_group"] and cli["own_group"]
        assert ours["cwd"] == cli["cwd"] == str(here)
        for name in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH"):
            assert ours["env"][name] == cli["env"][name], name
        assert "WANDB_SERVICE" not in ours["env"] and "WANDB_SERVICE" not in cli["env"]
    # What the macros expand to (the same for both, as checked above).
    argv = dumps["ours"][True]["argv"]
    assert dumps["ours"][True]["cmdline"][:2] == ["python", "dump.py"]  # `python` from PATH, as the CLI
    assert argv[0] == "dump.py" and argv[-1] == "plain" and "--tag=t1" in argv and "SM_UNSET_VAR" in argv
    assert "--flag=True" in argv and "--name=a b" in argv and "+x=0.5" in argv and "++n=3" in argv


def _read_dumps(folder, sweep_id) -> dict:
    """{flag: dump}, with the sweep id, run id and WANDB_DIR replaced by placeholders."""
    found = {}
    for path in folder.glob("*.json"):
        dump = json.loads(path.read_text())
        run_id, wandb_dir = dump["env"]["WANDB_RUN_ID"], dump["env"]["WANDB_DIR"]

        def norm(value, run_id=run_id, wandb_dir=wandb_dir):  # bound now: used within this iteration
            if isinstance(value, str):
                return value.replace(wandb_dir, "<dir>").replace(sweep_id, "<sweep>").replace(run_id, "<run>")
            if isinstance(value, list):
                return [norm(v) for v in value]
            if isinstance(value, dict):
                return {k: norm(v) for k, v in value.items()}
            return value

        flag = "--flag=True" in dump["argv"]
        found[flag] = norm(dump)
    return found


def test_live_metrics_of_a_program_arrive_while_it_runs(here):
    write_script(here / "live.py", LIVE)
    session = api.launch(None, _program_sweep("live.py", [1], "prog-live"), cpus=1)
    delays, lock = [], threading.Lock()
    last = {}

    def seen():
        for run in session.snapshot().runs:
            t = run.metrics.get("t")
            if run.state == "running" and t is not None and last.get(run.run_id) != t:
                last[run.run_id] = t
                with lock:
                    delays.append(time.time() - t)

    unsubscribe = session.subscribe(seen)
    try:
        (result,) = _run(session, timeout=120)
    finally:
        unsubscribe()
    assert result["state"] == "finished" and result["summary"]["loss"] == pytest.approx(1 / 30)
    assert len(delays) >= 5, f"only {len(delays)} live updates while the program ran"
    median = statistics.median(delays)
    print(f"\nprogram run.log → snapshot: median {median * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms, "
          f"{len(delays)} updates")
    assert median < 1.0


def test_a_program_exiting_1_fails_with_its_last_stderr_line(here):
    write_script(here / "fails.py", FAILS)
    (result,) = _run(api.launch(None, _program_sweep("fails.py", [1], "prog-fails"), cpus=1))
    assert result["state"] == "failed" and result["error"] == "fatal: the data set is missing"
    assert result["summary"]["loss"] == 1.0  # what it logged before failing is kept


def test_hyperband_stop_reaches_the_programs_group(here, monkeypatch):
    write_script(here / "slow.py", SLOW_WHEN_BAD)
    sweep_id = _program_sweep("slow.py", [1.0, 1.5, 100.0], "prog-hyperband",
                              early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2})
    decided = stop_decisions(monkeypatch)  # run id → when the server decided to stop it
    session = api.launch(None, sweep_id, cpus=1)
    try:
        bad = wait_for(lambda: next((r for r in session.snapshot().runs if r.config.get("x") == 100.0), None), 180,
                       "the x=100 run to start")
        assert bad.pid
        wait_for(lambda: not _group_alive(bad.pid), 60, "the stopped program's group to go")
        gone = time.monotonic()
        assert session.wait(timeout=120), session.agents()
    finally:
        session.stop()
    assert bad.run_id in decided, "hyperband never stopped x=100"
    assert gone - decided[bad.run_id] <= 5.0
    by_x = {r["config"]["x"]: r for r in session.results()}
    assert by_x[100.0]["state"] == "killed"
    assert by_x[1.0]["state"] == by_x[1.5]["state"] == "finished"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# -- the command line, as a unit ---------------------------------------------------------------
def test_build_expands_macros_like_the_cli():
    run = {"run_id": "r1", "program": "train.py",
           "args": {"lr": {"value": 0.1}, "on": {"value": True}, "off": {"value": False}, "s": {"value": None}}}
    argv, json_file = program.build(None, run, {}, sweep_id="sw", wandb_dir="/d")
    assert argv == ["/usr/bin/env", "python", "train.py", "--lr=0.1", "--on=True", "--off=False", "--s=None"]
    assert json_file is None
    argv, json_file = program.build(["x${envvar:HOME2}y", "${args_no_boolean_flags}", "${args_json_file}", 7, "${}"],
                                    run, {"HOME2": "/h"}, sweep_id="sw", wandb_dir="/d")
    assert argv == ["x/hy", "--lr=0.1", "--on", "--s=None", "/d/wandb/sweep-sw/config-r1.json", "7"]
    assert json_file == "/d/wandb/sweep-sw/config-r1.json"
    assert re.fullmatch(r"\{.*\}", program.sweep_vars(run["args"])["args_json"][0])
    assert sys.platform != "win32"
