"""The worker process: its spec, environment, failure modes, and dying with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import psutil
from workers_helpers import QUIET, grid_sweep, spec_builder, wait_for

from sweep_magic import devices
from sweep_magic._testing import sidecars_of
from sweep_magic.agents.local import describe_exit
from sweep_magic.agents.supervisor import Supervisor
from sweep_magic.protocol import env as _env
from sweep_magic.protocol.spec import WorkerSpec
from sweep_magic.worker.main import read_spec


def test_spec_is_read_and_deleted(tmp_path):
    path = tmp_path / "spec"
    spec = WorkerSpec(function_pickle=b"x", sweep_id="abc", env={"WANDB_API_KEY": "k" * 40})
    path.write_bytes(cloudpickle.dumps(spec))
    assert read_spec(str(path)) == spec
    assert not path.exists()


def test_child_env_scrubs_the_kernels_wandb_state():
    kernel = {
        "WANDB_SERVICE": "3-123-unix-/tmp/x",
        "WANDB_RUN_ID": "old",
        "WANDB_SWEEP_PARAM_PATH": "/tmp/old.yaml",
        "WANDB_AGENT_DISABLE_FLAPPING": "true",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "SECRET_FOR_REMOVAL": "1",
        "PATH": "/usr/bin",
    }
    spec = WorkerSpec(
        function_pickle=b"",
        sweep_id="s",
        env={"WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "", "WANDB_SERVICE": "3-9-unix-/copied"},
        remove_env=["SECRET_FOR_REMOVAL"],
        report_url="http://127.0.0.1:1",
    )
    env = _env.child_env(kernel, spec)
    for name in ("WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_AGENT_DISABLE_FLAPPING",
                 "SECRET_FOR_REMOVAL"):  # fmt: skip
        assert name not in env
    assert env["PATH"] == "/usr/bin" and env["MPLBACKEND"] == "Agg" and env["PYTHONUNBUFFERED"] == "1"
    assert env["WANDB_MODE"] == "offline" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["WANDB__DISABLE_STATS"] == "true" and env["WANDB_ERROR_REPORTING"] == "false"


def test_exit_reasons():
    assert describe_exit(-signal.SIGABRT) == "killed by SIGABRT"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(137) == "exit code 137 (SIGKILL, often the out-of-memory killer)"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(0) == "exited"


def _one_agent(server, tmp_path, spec_for_slot):
    sup = Supervisor(spec_for_slot, devices.plan(cpus=1), session_id="s", sweep_id="x", log_dir=str(tmp_path / "logs"))
    sup.start()
    return sup


def test_function_that_cannot_load_fails_the_agent_without_restarts(server, tmp_path):
    good = spec_builder(server, print, grid_sweep(server, [1]), tmp_path)

    def spec_for_slot(slot):
        spec = good(slot)
        spec.function_pickle = b"not a pickle"
        return spec

    sup = _one_agent(server, tmp_path, spec_for_slot)
    try:
        assert sup.wait(60)
    finally:
        sup.stop()
    (agent,) = sup.snapshot().agents
    assert agent.state == "failed" and agent.restarts == 0
    assert "could not be loaded" in agent.reason
    assert any("UnpicklingError" in line for line in agent.log_tail)


def test_unknown_sweep_fails_the_agent_without_restarts(server, tmp_path):
    sup = _one_agent(server, tmp_path, spec_builder(server, print, "nosuchsweep", tmp_path))
    try:
        assert sup.wait(90)
    finally:
        sup.stop()
    (agent,) = sup.snapshot().agents
    assert agent.state == "failed" and agent.restarts == 0 and "wandb.agent failed" in agent.reason


KERNEL = textwrap.dedent(
    """
    # A stand-in for a Jupyter kernel: it launches agents, then gets SIGKILLed.  Its WANDB_*
    # (WANDB_SERVICE included, when pytest's own wandb-core runs) go into the specs: the
    # scrub must still give every worker a wandb-core of its own.
    import os, sys, time, subprocess
    from sweep_magic import devices
    from sweep_magic.agents.supervisor import Supervisor
    from sweep_magic.protocol.spec import WorkerSpec
    import cloudpickle

    def train():  # defined in __main__, like a notebook cell: travels by value
        import subprocess, time, wandb
        wandb.init()
        subprocess.Popen(["sleep", "1000"])  # a grandchild in the worker's group
        time.sleep(1000)

    env = {k: v for k, v in os.environ.items() if k.startswith("WANDB")}
    payload = cloudpickle.dumps(train)
    spec = lambda slot: WorkerSpec(function_pickle=payload, sweep_id=sys.argv[1], project="p",
                                   env={**env, **slot.env}, cpus=list(slot.cpus),
                                   report_url=os.environ["WANDB_BASE_URL"], heartbeat_seconds=0.5)
    sup = Supervisor(spec, devices.plan(cpus=2), session_id="k", sweep_id=sys.argv[1], log_dir=sys.argv[2])
    sup.start()
    while True:
        time.sleep(1)
    """
)


def test_workers_die_with_their_kernel(server, tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    sweep_id = grid_sweep(server, [1, 2, 3, 4])
    env = {**os.environ, **server.env(), **QUIET, "WANDB_DIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    kernel = subprocess.Popen([sys.executable, str(script), sweep_id, str(tmp_path / "logs")], env=env)
    try:
        # Two `sleep` grandchildren: both workers are inside their (hanging) runs, each with
        # its wandb-core.
        wait_for(lambda: sum(_name(p) == "sleep" for p in _tree(kernel.pid)) == 2, 180, "two runs under way")
        tree = _tree(kernel.pid)
        assert sum("wandb-core" in _name(p) for p in tree) == 2
        kernel.kill()
        kernel.wait()
        t0 = time.monotonic()
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.info if hasattr(p, "info") else p for p in alive]
        assert time.monotonic() - t0 < 10
    finally:
        kernel.kill()
        kernel.wait()


def _tree(pid: int) -> list[psutil.Process]:
    kids = psutil.Process(pid).children(recursive=True)
    pids = {k.pid for k in kids}
    return kids + [c for k in kids for c in sidecars_of(k.pid) if c.pid not in pids]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


MODULE = """
def train():
    import wandb

    with wandb.init() as run:
        run.log({"loss": run.config.x * 10})
"""


def test_function_from_a_module_on_the_kernels_path(server, tmp_path, monkeypatch):
    """Pickled by reference: the worker imports it from the kernel's sys.path."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_training_code.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    import my_training_code

    sweep_id = grid_sweep(server, [1])
    build = spec_builder(server, print, sweep_id, tmp_path)

    def spec_for_slot(slot):
        spec = build(slot)
        spec.function_pickle = cloudpickle.dumps(my_training_code.train)  # by reference
        return spec

    assert b"my_training_code" in cloudpickle.dumps(my_training_code.train)
    sup = _one_agent(server, tmp_path, spec_for_slot)
    try:
        assert sup.wait(90)
    finally:
        sup.stop()
    (run,) = sup.snapshot().runs
    assert run.state == "finished" and run.summary["loss"] == 10
