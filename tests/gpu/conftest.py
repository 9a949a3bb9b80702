"""Fixtures for the GPU path without a GPU: the fake NVML, built once per session, and
processes for it to report (ours, another user's).

Each scenario runs in a fresh process (``tests/gpu/probe.py``) started with the fake
on ``LD_LIBRARY_PATH``: the dynamic loader reads that variable only at process start,
and pynvml and ``sweep_magic.devices`` keep their NVML state for the life of a
process, so a fresh process per scenario is both what makes the fake load and what
keeps one scenario from leaking into the next (or into the test process, which
stays a machine with no driver for the other tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import fake_nvml
import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(REPO, "tests", "gpu", "probe.py")


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory) -> str:
    """The folder holding the fake ``libnvidia-ml.so.1``, compiled once per test session.

    A missing compiler or header fails with the fix: a skip would hide that the
    NVML path went untested."""
    try:
        return fake_nvml.build(str(tmp_path_factory.mktemp("fake-nvml")))
    except fake_nvml.BuildProblem as err:
        pytest.fail(str(err), pytrace=False)


@dataclass
class Probe:
    results: list
    lookups: dict[str, bool]  # NVML symbols pynvml looked up -> whether the library had them
    stderr: str
    trace: list[str]  # entry points the fake saw called, in order

    def warning_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class FakeNvml:
    """One scenario: a script for the fake, and probes that run against it."""

    def __init__(self, libdir: str, folder):
        self.libdir = libdir
        self.inventory = str(folder / "inventory.txt")
        self.trace = str(folder / "trace.txt")
        fake_nvml.write_inventory(self.inventory, [])

    def script(self, gpus, fails=None) -> None:
        fake_nvml.write_inventory(self.inventory, gpus, fails)

    def probe(self, *steps, env: dict | None = None, loaded: bool = True, timeout: float = 60) -> Probe:
        base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        base["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, base.get("PYTHONPATH")) if p)
        base["PYTHONWARNINGS"] = "default"  # what a notebook shows; pytest's own filters stay here
        if os.path.exists(self.trace):
            os.remove(self.trace)
        run_env = fake_nvml.env(self.libdir, self.inventory, self.trace, base) if loaded else base
        run_env.update(env or {})
        done = subprocess.run(
            [sys.executable, PROBE, json.dumps([list(s) for s in steps])],
            env=run_env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )  # fmt: skip
        out = [line for line in done.stdout.splitlines() if line.startswith("PROBE:")]
        assert done.returncode == 0 and out, f"probe failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        trace = open(self.trace).read().split() if os.path.exists(self.trace) else []
        report = json.loads(out[-1][len("PROBE:"):])
        return Probe(results=report["results"], lookups=report["lookups"], stderr=done.stderr, trace=trace)


@pytest.fixture
def nvml(fake_nvml_lib, tmp_path) -> FakeNvml:
    return FakeNvml(fake_nvml_lib, tmp_path)


@pytest.fixture
def sleepers():
    """Start ``sleep`` processes (as us, or as another user) for the fake to list as GPU users."""
    procs: list[subprocess.Popen] = []

    def start(user: int | None = None) -> int:
        proc = subprocess.Popen(["sleep", "300"], user=user, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def others_pid(sleepers) -> int:
    """A live process that belongs to another user: one we start as ``nobody`` when we are
    root, else any process of another user (pid 1 in most containers)."""
    if os.geteuid() == 0:
        return sleepers(user=65534)
    me = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        if proc.info["uids"] and proc.info["uids"].real != me:
            return proc.pid
    pytest.skip("no process of another user is visible here, and we are not root to start one")

