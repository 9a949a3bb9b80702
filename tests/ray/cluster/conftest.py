"""One real Ray cluster for the whole module: a head and two worker nodes declaring 2 GPUs
each (``ray.cluster_utils.Cluster``: separate raylets on this host, as Ray's own multi-node
tests run), in Ray's own temp folder, shut down by its own handle (never ``ray stop``, which
would take other users' Ray processes with it).

Only collected inside a private network namespace (see ``tests/ray/conftest.py``)."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from ray_helpers import agent_processes, only_loopback, ray_installed, wait_for

NODE = dict(num_cpus=2, num_gpus=2, object_store_memory=80 * 1024 * 1024)


@pytest.fixture(scope="session")
def cluster():
    if not only_loopback():
        pytest.fail("the Ray cluster tests must run in a private network namespace (tests/ray/test_ray.py does that)")
    if not ray_installed():
        pytest.fail("ray is not installed: pip install -e '.[test]' (or 'sweep_magic[ray]'); the Ray tests must run, not skip")
    import ray
    from ray.cluster_utils import Cluster

    # A short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="sm-ray-", dir="/tmp")
    # What a sweep does not need is left out to fit the memory budget (≈200 MB): the
    # autoscaler monitor, the log monitor (it feeds log_to_driver, which is off), and idle
    # Ray workers started ahead of time.
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, num_gpus=0, include_dashboard=False, temp_dir=temp_dir,
        object_store_memory=80 * 1024 * 1024, no_monitor=True, include_log_monitor=False,
        _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False}))
    try:
        for _ in range(2):
            c.add_node(temp_dir=temp_dir, **NODE)
        c.wait_for_nodes()
        from sweep_magic.agents import ray as ray_agents

        ray_agents.connect(c.address)  # as launch(ray_address=...) does
        c.temp_dir = temp_dir
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def warm_start_server():
    """Overrides the suite's: a Ray sweep's agents are started by their actors on the nodes,
    never forked from the kernel's zygote, so this "kernel" runs none (≈45 MB of the
    module's memory budget)."""
    yield None


@pytest.fixture(scope="session")
def keys():
    """Every sweep server key the module used: none may show up in Ray's or our files."""
    return []


@pytest.fixture(autouse=True)
def no_orphans(request, tmp_path_factory):
    """Overrides the suite's check: Ray's own worker processes are legitimately long-lived
    children of this process here; what must be gone after each test is every worker and
    wandb-core of this module's sessions (their homes are under pytest's temp folder), on
    every node."""
    _note_current_test(request.node.name)
    yield
    base = str(tmp_path_factory.getbasetemp())
    wait_for(lambda: not agent_processes(base), timeout=15)
    left = agent_processes(base)
    for proc in left:
        try:
            proc.kill()
        except Exception:
            pass
    if left:
        pytest.fail(f"processes left behind by {request.node.name}: {[p.pid for p in left]}")


def _note_current_test(name: str) -> None:
    """For the memory sampler of ``test_ray.py``: which test was running at the peak."""
    import pathlib

    artifacts = pathlib.Path(__file__).resolve().parents[3] / "test-artifacts"
    try:
        artifacts.mkdir(exist_ok=True)
        (artifacts / "ray-current-test").write_text(name)
    except OSError:
        pass
