"""Variant (d) of ``wall_time``: the same K sleep trials of T seconds, N at once, with Ray Tune.

The trainable does what TRIAL_SRC's sleep branch does, the way Ray's docs say to log to W&B from
Tune: ``setup_wandb(config)`` (``ray.air.integrations.wandb``), sleep T, set a summary value,
``finish()``, and append the same timestamp line (entry, wandb run up, work done, exit), plus
when its actor's process started and when ``import wandb`` was done, for where the time goes.  W&B is
offline (``WANDB_MODE``) into a folder of the benchmark: Tune has no sweep server to talk to.

Ray runs on a local instance the driver starts itself (``ray.init(num_cpus=N)``, every trial
1 CPU, ``max_concurrent_trials=N``), in a network namespace of its own (``_common.loopback_only``,
as ``ray_latency``).  The driver is ``python -m benchmarks.tune_compare``; its clock starts
before ``import ray``, so ``wall_s`` counts Ray's import and start as (b)'s counts each agent's
interpreter and ``import wandb``; ``fit_s`` is ``Tuner.fit()`` alone (a notebook that already
ran ``ray.init``, as (c) runs with the kernel's warm start server up).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time

TRAINABLE_SRC = '''
def trial(config):
    import json, os, time
    enter = time.time()
    import psutil
    from ray.air.integrations.wandb import setup_wandb  # imports wandb: once per actor, i.e. per trial
    imported = time.time()
    run = setup_wandb(config, project="bench")
    inited = time.time()
    time.sleep(float(config["seconds"]))
    worked = time.time()
    run.summary["logged"] = 0
    run.finish()
    leave = time.time()
    line = json.dumps({"pid": os.getpid(), "run": run.id, "x": config["x"], "enter": enter,
                       "inited": inited, "worked": worked, "exit": leave, "logged": 0,
                       "imported": imported, "spawned": psutil.Process().create_time()})
    with open(config["times"], "a") as f:
        f.write(line + "\\n")
'''

NEEDS = "pip install 'sweep_magic[bench]' (ray[tune]: pandas, pyarrow, fsspec, tensorboardX)"


def _trainable():
    namespace = {"__name__": "sweep_magic_bench_tune_trial"}  # not importable: Ray ships it by value
    exec(compile(TRAINABLE_SRC, "<bench_tune_trial>", "exec"), namespace)
    return namespace["trial"]


def measure(K: int, T: float, N: int, times: str, storage: str, reuse_actors: bool = False) -> dict:
    """In the namespace: import Ray, start it, fit K trials, stop it; the phases' times."""
    t0 = time.time()
    try:
        import ray
        from ray import tune
    except ImportError as err:
        return {"error": f"ray.tune cannot be imported ({err}): {NEEDS}"}
    imported = time.time()
    temp_dir = tempfile.mkdtemp(prefix="sm-tune-", dir="/tmp")  # short: Ray's socket paths have a limit
    ray.init(num_cpus=N, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir,
             object_store_memory=80 * 2**20)
    started = time.time()
    try:
        tuner = tune.Tuner(
            _trainable(),
            param_space={"x": tune.grid_search(list(range(K))), "seconds": T, "times": times},
            tune_config=tune.TuneConfig(max_concurrent_trials=N, reuse_actors=reuse_actors),  # 1 CPU a trial
            run_config=tune.RunConfig(name="bench", storage_path=storage, verbose=0))
        results = tuner.fit()
        fitted = time.time()
        failed = [str(r.error).splitlines()[0] for r in results if r.error]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    stopped = time.time()
    out = {"t0": t0, "import_s": imported - t0, "ray_init_s": started - imported, "fit_start": started,
           "fit_s": fitted - started, "wall_s": fitted - t0, "shutdown_s": stopped - fitted, "trials": len(results)}
    if failed:
        out["error"] = f"{len(failed)}/{K} trials failed: {failed[0]}"
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune_compare")
    for name, kind in (("--K", int), ("--T", float), ("--N", int), ("--times", str), ("--storage", str),
                       ("--out", str)):
        parser.add_argument(name, type=kind, required=True)
    # Off in the benchmark (Tune's default); on, to see what an actor per trial costs.
    parser.add_argument("--reuse-actors", action="store_true")
    args = parser.parse_args()
    result = measure(args.K, args.T, args.N, args.times, args.storage, args.reuse_actors)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    sys.exit(0 if "error" not in result else 1)
