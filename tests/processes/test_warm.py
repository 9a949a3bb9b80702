"""Warm starts (agents/warm.py, worker/zygote.py): agents forked from a zygote that
imported wandb once are the same workers as fresh interpreters, and every way the zygote
can be unavailable falls back to a fresh interpreter, never to a wrong agent."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from sweep_magic import api
from sweep_magic.agents import warm


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    return tmp_path


def _grid(n: int, project: str) -> str:
    from sweep_magic import local_sweep

    return local_sweep({"method": "grid", "parameters": {"x": {"values": list(range(n))}}}, project=project)


def _report_env():
    import os
    import time

    import wandb

    with wandb.init() as run:
        time.sleep(0.3)
        run.log({"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(), "sid": os.getsid(0),
                 "threads": os.environ.get("OMP_NUM_THREADS"), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                 "cwd": os.getcwd(), "service": os.environ.get("WANDB_SERVICE", "")})


def _summaries(session) -> list[dict]:
    return [r["summary"] for r in session.results()]


def test_warm_agents_are_whole_workers(home, monkeypatch, tmp_path):
    zygote = warm.warm_up()
    assert zygote is not None and zygote.wait_ready(60)
    monkeypatch.chdir(tmp_path)  # the kernel's cwd at launch, not the zygote's at its start
    monkeypatch.setenv("WANDB_SERVICE", "kernel-service-that-must-not-leak")
    session = api.launch(_report_env, _grid(4, "warm"), cpus=2)
    assert session.wait(timeout=180)
    got = _summaries(session)
    assert len(got) == 4 and {r["state"] for r in session.results()} == {"finished"}
    for s in got:
        assert s["ppid"] == zygote.proc.pid, "forked by the zygote"
        assert s["pid"] == s["pgid"] == s["sid"]  # the worker leads its own session and group
        assert s["threads"] == "1" and s["cuda"] == "" and s["cwd"] == str(tmp_path)
        assert s["service"] != "kernel-service-that-must-not-leak"  # its own wandb-core, not the kernel's
    workers = {a.pid for a in session.agents()}
    assert {s["pgid"] for s in got} == workers  # each worker leads its own group


def test_cold_when_turned_off_or_the_startup_env_differs(home, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_WARM", "0")
    off = api.launch(_report_env, _grid(1, "off"), cpus=1)
    assert off.wait(timeout=180)
    monkeypatch.setenv("SWEEP_MAGIC_WARM", "1")
    # The dynamic loader reads LD_LIBRARY_PATH once, at exec: a fork would not see the new value.
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/some/cuda/lib")
    changed = api.launch(_report_env, _grid(1, "ldpath"), cpus=1)
    assert changed.wait(timeout=180)
    for session in (off, changed):
        (s,) = _summaries(session)
        assert s["ppid"] == os.getpid(), "a fresh interpreter started by this process"


def test_a_dead_zygote_strands_nothing(home):
    zygote = warm.warm_up()
    assert zygote.wait_ready(60)
    session = api.launch(_sleeper, _grid(3, "zygote-dies"), cpus=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(a.current_run for a in session.agents()):
        time.sleep(0.1)
    worker = session.agents()[0].pid
    os.kill(zygote.proc.pid, signal.SIGKILL)
    # The worker outlives its zygote (it answers to this process's lifeline, not to its
    # parent); its end is still noticed, judged by its own last word, and the sweep ends.
    assert session.wait(timeout=180)
    assert [r["state"] for r in session.results()] == ["finished"] * 3
    (agent,) = session.agents()
    assert agent.pid == worker and agent.state == "exited" and agent.restarts == 0
    assert zygote.broken and not psutil.pid_exists(zygote.proc.pid)
    fresh = warm.warm_up()
    assert fresh is not zygote and fresh.wait_ready(60), "a new zygote replaces a dead one"


def _sleeper():
    import time

    import wandb

    with wandb.init() as run:
        time.sleep(1.0)
        run.log({"x": run.config.x})

