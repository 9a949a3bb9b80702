"""2. Per-run gap in one agent: one run's end to the next run's start.

One agent works through a K-point grid of short sleep trials, twice: a plain ``wandb.agent``
process, and ``sweep_magic.launch(cpus=1)``.  For sweep_magic the gap comes from the
snapshot (``RunSnapshot.ended_at`` of a run → ``started_at`` of the agent's next run, i.e.
``wandb.init`` returned); for both, also from the trial function's own timestamps (function
exit → next function entry, and → next ``wandb.init`` return), which compare like for like.
"""

from __future__ import annotations

from benchmarks._common import Bench, gaps, median, pct, read_times, rnd, trial_function, wait_group

# (variant, trial seconds T, runs K).  Short trials show the hand-out pacing (a trial shorter
# than the heartbeat period ends before the server could prefetch the next run); 2-s trials
# show the per-run cost once prefetch works.
FULL = [("plain", 0.5, 10), ("sweep_magic", 0.2, 12), ("sweep_magic", 2.0, 8)]
QUICK = [("plain", 0.2, 2), ("sweep_magic", 0.2, 4), ("sweep_magic", 1.5, 3)]


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "median_s": rnd(median(values)), "p95_s": rnd(pct(values, 95)),
            "max_s": rnd(max(values) if values else None)}


def _function_gaps(rows: list[dict]) -> dict:
    return {"exit_to_enter": _stats(gaps(rows, "enter", "exit")),
            "exit_to_init": _stats(gaps(rows, "inited", "exit"))}


def _plain(bench: Bench, T: float, K: int) -> dict:
    sid, times = bench.sweep("gap-plain", K, kind="sleep", seconds=T)
    env = bench.agent_env(bench.wandb_dir("gap-plain"))
    proc = bench.start_shell(f"exec python agent.py {sid}", env, "gap-plain")
    code = wait_group(proc, 120 + K * (T + 15))
    rows = read_times(times)
    out = {"variant": "plain", "T": T, "K": K, **_function_gaps(rows)}
    if code != 0 or len(rows) != K:
        out["error"] = f"exit code {code}, {len(rows)}/{K} runs:\n{bench.log_tail('gap-plain')}"
    return out


def _sweep_magic(bench: Bench, T: float, K: int) -> dict:
    import sweep_magic

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
    out = {"variant": "sweep_magic", "T": T, "K": K, "snapshot": _stats(snap_gaps), **_function_gaps(rows)}
    if not done or len(rows) != K:
        out["error"] = f"done={done}, {len(rows)}/{K} runs"
    return out


def run(bench: Bench) -> dict:
    results = []
    for variant, T, K in (QUICK if bench.quick else FULL):
        bench.log(f"run gap: {variant}, one agent, {K} runs of {T}s")
        r = (_plain if variant == "plain" else _sweep_magic)(bench, T, K)
        bench.log(f"  median gap, function exit → next wandb.init: {r['exit_to_init']['median_s']} s"
                  + (f"; snapshot {r['snapshot']['median_s']} s" if "snapshot" in r else ""))
        results.append(r)
    return {"cases": results}
