"""2. Per-run gap in one agent: one run's end to the next run's start.

One agent works through a K-point grid of short sleep trials, twice: a plain ``wandb.agent``
process, and ``sweep_magic.launch(cpus=1)``.  For sweep_magic the gap comes from the
snapshot (``RunSnapshot.ended_at`` of a run → ``started_at`` of the agent's next run, i.e.
``wandb.init`` returned); for both, also from the trial function's own timestamps (function
exit → next function entry, and → next ``wandb.init`` return), which compare like for like.
"""

from __future__ import annotations

import time

from benchmarks._common import Bench, gaps, median, pct, read_times, rnd, trial_function, wait_group

FULL = dict(K=16, T=0.5)
QUICK = dict(K=4, T=0.2)


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "median_s": rnd(median(values)), "p95_s": rnd(pct(values, 95)),
            "max_s": rnd(max(values) if values else None)}


def _function_gaps(rows: list[dict]) -> dict:
    return {"exit_to_enter": _stats(gaps(rows, "enter", "exit")),
            "exit_to_init": _stats(gaps(rows, "inited", "exit"))}


def run(bench: Bench) -> dict:
    import sweep_magic

    cfg = QUICK if bench.quick else FULL
    K, T = cfg["K"], cfg["T"]
    out = {"K": K, "T": T}

    bench.log(f"run gap: plain wandb.agent, {K} runs of {T}s")
    sid, times = bench.sweep("gap-plain", K, kind="sleep", seconds=T)
    env = bench.agent_env(bench.wandb_dir("gap-plain"))
    proc = bench.start_shell(f"exec python agent.py {sid}", env, "gap-plain")
    code = wait_group(proc, 120 + K * (T + 15))
    rows = read_times(times)
    out["plain"] = _function_gaps(rows)
    if code != 0 or len(rows) != K:
        out["plain"]["error"] = f"exit code {code}, {len(rows)}/{K} runs:\n{bench.log_tail('gap-plain')}"

    bench.log(f"run gap: sweep_magic, {K} runs of {T}s")
    sid, times = bench.sweep("gap-sweep_magic", K, kind="sleep", seconds=T)
    session = sweep_magic.launch(trial_function(), sid, cpus=1)
    done = session.wait(timeout=120 + K * (T + 15))
    if not done:
        session.stop()
    snap = session.snapshot()
    runs = sorted((r for r in snap.runs if r.started_at and r.ended_at), key=lambda r: r.started_at)
    snap_gaps = []
    for agent in {r.agent for r in runs}:
        mine = [r for r in runs if r.agent == agent]
        snap_gaps += [b.started_at - a.ended_at for a, b in zip(mine, mine[1:])]
    rows = read_times(times)
    out["sweep_magic"] = {"snapshot": _stats(snap_gaps), **_function_gaps(rows)}
    if not done or len(rows) != K:
        out["sweep_magic"]["error"] = f"done={done}, {len(rows)}/{K} runs"
    p, s = out["plain"]["exit_to_init"]["median_s"], out["sweep_magic"]["exit_to_init"]["median_s"]
    bench.log(f"  median gap (function exit → next wandb.init): plain {p} s, sweep_magic {s} s; "
              f"sweep_magic snapshot median {out['sweep_magic']['snapshot']['median_s']} s")
    return out
