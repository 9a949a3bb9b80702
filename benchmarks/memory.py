"""5. Memory per agent beyond the user's function (a function that only sleeps).

N agents, each inside a run whose function does nothing but ``time.sleep``; then, per agent,
PSS and USS (psutil ``memory_full_info``) of the agent process, its children and its wandb-core
sidecar (``--pid <agent>``, its own session).  The same for N plain ``wandb.agent`` processes
(the shell-loop recipe), so what is wandb's and what is ours can be told apart.
"""

from __future__ import annotations

import os
import time
import warnings

import psutil

from benchmarks._common import Bench, kill_group, median, rnd, sidecars, trial_function

MB = 2**20


def _measure(pid: int) -> dict:
    """PSS/USS/RSS in MB of ``pid`` + its descendants, and of its wandb-core sidecars."""
    own, cores = [], []
    try:
        root = psutil.Process(pid)
        own = [root] + root.children(recursive=True)
    except psutil.Error:
        pass
    cores = sidecars({p.pid for p in own})
    own = [p for p in own if p.pid not in {c.pid for c in cores}]

    def total(procs):
        pss = uss = rss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            pss += getattr(info, "pss", 0)
            uss += info.uss
            rss += info.rss
        return pss / MB, uss / MB, rss / MB

    pss_a, uss_a, rss_a = total(own)
    pss_c, uss_c, rss_c = total(cores)
    return {"agent_pss_mb": pss_a, "agent_uss_mb": uss_a, "agent_rss_mb": rss_a,
            "core_pss_mb": pss_c, "core_uss_mb": uss_c, "core_rss_mb": rss_c,
            "total_pss_mb": pss_a + pss_c, "total_uss_mb": uss_a + uss_c,
            "processes": len(own) + len(cores)}


def _sample(pids: list[int], settle: float) -> dict:
    """Median over 3 samples of each figure, averaged over the agents."""
    time.sleep(settle)
    samples = []
    for _ in range(3):
        per = [_measure(pid) for pid in pids]
        samples.append({k: sum(m[k] for m in per) / len(per) for k in per[0]})
        time.sleep(1.0)
    return {k: rnd(median([s[k] for s in samples]), 1) for k in samples[0]}


def run(bench: Bench) -> dict:
    import sweep_magic

    n = 2 if bench.quick else 4
    settle = 2.0 if bench.quick else 4.0
    out = {"N": n}

    bench.log(f"memory: {n} sweep_magic agents in a sleeping run")
    sid, _ = bench.sweep("memory-sm", n, kind="sleep", seconds=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = sweep_magic.launch(trial_function(), sid, cpus=n)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            snap = session.snapshot()
            if len([r for r in snap.runs if r.state == "running"]) >= n:
                break
            time.sleep(0.2)
        else:
            out["sweep_magic"] = {"error": "agents did not all reach a run in 90 s"}
        if "sweep_magic" not in out:
            pids = [a.pid for a in session.snapshot().agents]
            out["sweep_magic"] = _sample(pids, settle)
    finally:
        session.stop()

    bench.log(f"memory: {n} plain wandb.agent processes in a sleeping run")
    sid, _ = bench.sweep("memory-plain", n, kind="sleep", seconds=300)
    proc = bench.plain_agents(sid, n, "memory-plain")
    try:
        deadline = time.monotonic() + 120
        pids: list[int] = []
        while time.monotonic() < deadline:
            try:
                kids = psutil.Process(proc.pid).children()
                pids = [k.pid for k in kids if "agent.py" in " ".join(k.cmdline())]
            except psutil.Error:
                pids = []
            if len(pids) >= n and _in_run(proc.wandb_dir) >= n:
                break
            time.sleep(0.3)
        else:
            out["plain"] = {"error": "plain agents did not all reach a run in 120 s"}
        if "plain" not in out:
            out["plain"] = _sample(pids, settle)
    finally:
        kill_group(proc)
    if "error" not in out.get("sweep_magic", {}) and "error" not in out.get("plain", {}):
        out["ours_pss_mb"] = rnd(out["sweep_magic"]["total_pss_mb"] - out["plain"]["total_pss_mb"], 1)
    bench.log(f"  per agent PSS: sweep_magic {out['sweep_magic'].get('total_pss_mb')} MB, "
              f"plain {out['plain'].get('total_pss_mb')} MB")
    return out


def _in_run(wandb_dir: str) -> int:
    """How many runs have started under ``wandb_dir`` (``wandb.init`` made their offline folder)."""
    base = os.path.join(wandb_dir, "wandb")
    try:
        return sum(1 for d in os.listdir(base) if d.startswith("offline-run-"))
    except OSError:
        return 0
