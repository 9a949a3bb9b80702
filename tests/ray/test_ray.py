"""The Ray layer's entry: the cluster tests (``tests/ray/cluster/``) in a private network namespace.

Ray binds the host's addresses (and rewrites 127.0.0.1 to them) unless it sees only loopback,
and tests here may send traffic to loopback only.  So from a normal pytest run (the README's
``.venv/bin/python -m pytest``, CI), this test runs those files in a fresh pytest under
``unshare -n`` (root; ``unshare -rn`` where user namespaces are allowed instead), with ``lo``
up, and fails when they fail.  It also measures what the brief budgets: the run's wall time
and the peak PSS of every process under it (pytest, the cluster, actors, workers).

Inside a namespace already (a developer's ``unshare -n`` shell), pytest collects the cluster
files directly and this test steps aside.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import psutil
import pytest
from ray_helpers import only_loopback, ray_installed

HERE = pathlib.Path(__file__).parent
REPO = HERE.parents[1]
ARTIFACTS = REPO / "test-artifacts"
CURRENT_TEST = ARTIFACTS / "ray-current-test"  # written by cluster/conftest.py as each test starts
BUDGET_PSS_MB = 1536

pytestmark = pytest.mark.ray


def _unshare_prefix() -> list[str] | None:
    """The first of ``unshare -n`` / ``unshare -rn`` that works here, as a command prefix."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    for flags in (["-n"], ["-r", "-n"]):
        probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags]
    return None


class _PeakPss:
    """Samples the summed PSS of a process tree every ``period`` seconds, keeps the peak."""

    def __init__(self, pid: int, period: float = 1.0):
        self.peak_mb = 0.0
        self.at_peak: dict[str, float] = {}  # MB by kind of process, at the peak
        self.test_at_peak = "?"  # the inner test that was running then (cluster/conftest.py writes it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(pid, period), daemon=True)
        self._thread.start()

    def _loop(self, pid: int, period: float) -> None:
        while not self._stop.wait(period):
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            kinds: dict[str, float] = {}
            for proc in procs:
                try:
                    pss = proc.memory_full_info().pss / 2**20
                    kind = _kind(proc)
                except psutil.Error:
                    continue
                kinds[kind] = kinds.get(kind, 0.0) + pss
            total = sum(kinds.values())
            if total > self.peak_mb:
                self.peak_mb, self.at_peak = total, kinds
                try:
                    self.test_at_peak = CURRENT_TEST.read_text().strip() or "?"
                except OSError:
                    pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.peak_mb


def _kind(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    if "sweep_magic.worker" in cmd:
        return "worker"
    name = proc.name()
    if name.startswith("ray::"):  # an actor or an idle pooled Ray worker
        return name
    if "pytest" in cmd:
        return "pytest"
    base = os.path.basename(cmd[0]) if cmd else name
    if base.startswith("python"):
        script = next((os.path.basename(a) for a in cmd[1:] if a.endswith(".py")), "python")
        return script
    return base


@pytest.mark.timeout(420)
def test_ray_cluster_suite_in_a_private_network_namespace():
    if only_loopback():
        pytest.skip("already in a private network namespace: pytest collects tests/ray/cluster directly")
    if not ray_installed():
        pytest.fail("ray is not installed: pip install -e '.[test]' (or 'sweep_magic[ray]'); the Ray tests must run, not skip")
    prefix = _unshare_prefix()
    assert prefix, "the Ray tests need `unshare -n` (root) or `unshare -rn` (user namespaces) and `ip`"
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "ray-tests.log"
    inner = [sys.executable, "-m", "pytest", str(HERE / "cluster"), "-p", "no:cacheprovider", "-v", "-s",
             "--durations=0", "-o", "addopts=-ra"]
    # `exec "$0" "$@"`: the inner pytest replaces the shell, so the sampler sees its whole tree.
    cmd = [*prefix, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *inner]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                start_new_session=True)
        sampler = _PeakPss(proc.pid)
        try:
            code = proc.wait(timeout=400)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = "timeout"
        finally:
            peak = sampler.stop()
    took = time.monotonic() - started
    parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(sampler.at_peak.items(), key=lambda kv: -kv[1]))
    summary = (f"Ray cluster tests: exit {code}, {took:.0f} s wall, peak PSS {peak:.0f} MB "
               f"during {sampler.test_at_peak} "
               f"(log: {log_path}; MB at the peak: {parts})")
    print(summary)
    with open(log_path, "a") as log:
        log.write(summary + "\n")
    tail = log_path.read_text(errors="replace")[-6000:]
    assert code == 0, f"{summary}\n{tail}"
    assert peak <= BUDGET_PSS_MB, summary
