"""8. Ray: event latency worker → snapshot, and ``launch()`` → every agent in a run (N = 4 GPU agents).

A real multi-node cluster on this host (``ray.cluster_utils.Cluster``: a head and two nodes
declaring 2 GPUs each, the test suite's layout), in a private network namespace: run from
``python -m benchmarks``, this module re-runs itself under ``unshare -n`` (``lo`` up), since
Ray binds the host's addresses otherwise.  Per try: a grid of N runs that each log their own
``time.time()`` every 0.1 s; a subscriber to the session notes, at each change, how old the
newest logged timestamp (and each ``RunStarted`` time) is when the snapshot shows it.  Latency
therefore includes the worker's metric coalescing, the node's stream batching and Ray's
streaming generator — the whole path a view sees.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from benchmarks._common import REPO, loopback_only, rnd

N = 4

TRIAL_SRC = '''
def trial():
    import time
    import wandb
    with wandb.init() as run:
        end = time.time() + float(run.config.seconds)
        while time.time() < end:
            run.log({"t_log": time.time()})
            time.sleep(0.1)
'''


def _trial():
    namespace = {"__name__": "sweep_magic_bench_ray_trial"}  # not importable: travels by value
    exec(compile(TRIAL_SRC, "<bench_ray_trial>", "exec"), namespace)
    return namespace["trial"]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def _once(server, i: int, seconds: float) -> dict:
    import sweep_magic

    sid = server.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(N))},
                                                                 "seconds": {"value": seconds}}}, project="bench")
    ages: list[float] = []
    seen: dict = {}
    first: dict[int, float] = {}

    def on_change() -> None:
        now = time.time()
        for run in session.snapshot().runs:
            if run.run_id not in seen and run.started_at:
                seen[run.run_id] = None
                ages.append(now - run.started_at)
                first.setdefault(run.agent, now)
            t_log = run.metrics.get("t_log")
            if isinstance(t_log, float) and seen.get(run.run_id) != t_log:
                seen[run.run_id] = t_log
                ages.append(now - t_log)

    t0 = time.time()
    session = sweep_magic.launch(_trial(), sid, backend="ray", gpus=N)
    returned = time.time() - t0
    session.subscribe(on_change)
    try:
        finished = session.wait(120)
    finally:
        session.stop()
    out = {"launch_returned_s": rnd(returned), "events": len(ages),
           "latency_median_s": rnd(_percentile(ages, 0.5)), "latency_p95_s": rnd(_percentile(ages, 0.95)),
           "latency_max_s": rnd(max(ages) if ages else None),
           "all_in_a_run_s": rnd(max(first.values()) - t0) if len(first) == N else None}
    if not finished or len(first) != N:
        out["error"] = f"{len(first)}/{N} agents reached a run; finished={finished}"
    return out


def measure(quick: bool) -> dict:
    """In the namespace: cluster up, tries, cluster down."""
    import ray
    from ray.cluster_utils import Cluster

    from sweep_magic.agents import ray as ray_agents
    from sweep_magic.server import local_server

    temp_dir = tempfile.mkdtemp(prefix="sm-ray-", dir="/tmp")
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, num_gpus=0, include_dashboard=False, temp_dir=temp_dir, object_store_memory=80 * 2**20,
        no_monitor=True, include_log_monitor=False,
        _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False}))
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, num_gpus=2, temp_dir=temp_dir, object_store_memory=80 * 2**20)
        cluster.wait_for_nodes()
        started = time.time() - t0
        t1 = time.time()
        ray_agents.connect(cluster.address)
        connected = time.time() - t1
        tries = [_once(local_server(), i, 3.0 if quick else 6.0) for i in range(1 if quick else 3)]
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    p95s = [t["latency_p95_s"] for t in tries if t["latency_p95_s"] is not None]
    starts = [t["all_in_a_run_s"] for t in tries if t["all_in_a_run_s"] is not None]
    return {"N": N, "cluster_start_s": rnd(started), "connect_s": rnd(connected), "tries": tries,
            "latency_p95_s": rnd(max(p95s) if p95s else None),
            "all_in_a_run_median_s": rnd(sorted(starts)[len(starts) // 2] if starts else None)}


def run(bench) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'sweep_magic[ray]')"}
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from ray_helpers import only_loopback

    if only_loopback():
        return measure(bench.quick)
    return loopback_only("benchmarks.ray_latency", ["--quick"] if bench.quick else [], timeout=600)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_latency")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = measure(args.quick)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
