"""6. CPU-bound trials: pinned agents with thread caps vs plain agents that oversubscribe.

Each trial is a numpy matmul loop (``a = a @ a`` on n×n, ``reps`` times).  Variants, each on a
fresh K-point grid, same run:

* ``sweep_magic.launch(cpus=C)``: C agents, each pinned to its own cores, with OMP/MKL/OpenBLAS/
  NUMEXPR thread caps equal to its core count;
* C plain ``wandb.agent`` processes (shell loop) without caps: every OpenBLAS pool sizes itself
  to the whole machine, so C agents run C×cores threads on ``cores`` cores;
* (full run) the same plain agents with ``OMP_NUM_THREADS``-style caps of cores/C, unpinned: it
  separates the effect of the caps from the agents' start/gap overheads.

Reported: wall time (start → every agent exited) and the trials' own compute time (from
``wandb.init`` return to the end of the loop), whose ratio isolates the oversubscription.
"""

from __future__ import annotations

import os
import time

from benchmarks._common import Bench, median, read_times, rnd, trial_function, wait_group
from sweep_magic.devices import THREAD_CAP_VARS

FULL = dict(K=8, C=2, n=512, reps=600)
QUICK = dict(K=2, C=2, n=512, reps=200)


def _work(rows: list[dict]) -> dict:
    work = [r["worked"] - r["inited"] for r in rows]
    return {"runs_done": len(rows), "trial_compute_median_s": rnd(median(work)),
            "trial_compute_sum_s": rnd(sum(work)) if work else None}


def _plain(bench: Bench, cfg: dict, caps: bool) -> dict:
    name = "cpu-plain-caps" if caps else "cpu-plain"
    sid, times = bench.sweep(name, cfg["K"], kind="matmul", n=cfg["n"], reps=cfg["reps"])
    wandb_dir = bench.wandb_dir(name)
    env = bench.agent_env(wandb_dir)
    for var in THREAD_CAP_VARS:
        env.pop(var, None)
    if caps:
        env.update({var: str(max(1, (os.cpu_count() or 1) // cfg["C"])) for var in THREAD_CAP_VARS})
    command = f'for i in $(seq {cfg["C"]}); do python agent.py {sid} & done; wait'
    t0 = time.time()
    proc = bench.start_shell(command, env, name)
    code = wait_group(proc, 300 + cfg["K"] * 60)
    out = {"wall_s": rnd(time.time() - t0), "exit_code": code, **_work(read_times(times))}
    if code != 0 or out["runs_done"] != cfg["K"]:
        out["error"] = f"exit code {code}, {out['runs_done']}/{cfg['K']} runs:\n{bench.log_tail(name)}"
    return out


def _sweep_magic(bench: Bench, cfg: dict) -> dict:
    import sweep_magic

    sid, times = bench.sweep("cpu-sweep_magic", cfg["K"], kind="matmul", n=cfg["n"], reps=cfg["reps"])
    saved = {var: os.environ.pop(var) for var in THREAD_CAP_VARS if var in os.environ}
    try:
        t0 = time.time()
        session = sweep_magic.launch(trial_function(), sid, cpus=cfg["C"])
        done = session.wait(timeout=300 + cfg["K"] * 60)
        wall = time.time() - t0
    finally:
        os.environ.update(saved)
    if not done:
        session.stop()
    out = {"wall_s": rnd(wall), "agents": [a.device for a in session.snapshot().agents],
           **_work(read_times(times))}
    if not done or out["runs_done"] != cfg["K"]:
        out["error"] = f"done={done}, {out['runs_done']}/{cfg['K']} runs"
    return out


def run(bench: Bench) -> dict:
    cfg = QUICK if bench.quick else FULL
    out = dict(cfg)
    bench.log(f"cpu-bound: {cfg['K']} matmul trials ({cfg['n']}², ×{cfg['reps']}), {cfg['C']} agents")
    out["sweep_magic_pinned_capped"] = _sweep_magic(bench, cfg)
    bench.log(f"  sweep_magic cpus={cfg['C']}: {out['sweep_magic_pinned_capped']}")
    out["plain_uncapped"] = _plain(bench, cfg, caps=False)
    bench.log(f"  plain, no caps: {out['plain_uncapped']}")
    if not bench.quick:
        out["plain_capped"] = _plain(bench, cfg, caps=True)
        bench.log(f"  plain, caps: {out['plain_capped']}")
    sm, plain = out["sweep_magic_pinned_capped"], out["plain_uncapped"]
    if sm.get("wall_s") and plain.get("wall_s"):
        out["wall_ratio_sm_over_plain"] = rnd(sm["wall_s"] / plain["wall_s"])
    if sm.get("trial_compute_median_s") and plain.get("trial_compute_median_s"):
        out["compute_ratio_sm_over_plain"] = rnd(sm["trial_compute_median_s"] / plain["trial_compute_median_s"])
    capped = out.get("plain_capped", {})
    if capped.get("trial_compute_median_s") and plain.get("trial_compute_median_s"):
        out["compute_ratio_caps_over_nocaps_plain"] = rnd(
            capped["trial_compute_median_s"] / plain["trial_compute_median_s"])
    return out
