"""3. Start latency: ``launch()`` → every agent inside its first run (N = 4).

A grid of N trials long enough that every agent is in its first run at the same time.  From the
snapshot (polled at 50 Hz): when each agent registered with the server (state ``idle``) and when
its first run's ``wandb.init`` returned (``RunSnapshot.started_at``); the trial's own timestamp
gives the function entry.  Latency = the slowest agent.  Repeated, then stopped.
"""

from __future__ import annotations

import time
import warnings

from benchmarks._common import Bench, median, read_times, rnd, trial_function

N = 4


def _once(bench: Bench, i: int) -> dict:
    import sweep_magic

    sid, times = bench.sweep(f"start{i}", N, kind="sleep", seconds=60)
    fn = trial_function()
    registered: dict[int, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.time()
        session = sweep_magic.launch(fn, sid, cpus=N)
    returned = time.time() - t0
    try:
        deadline = time.monotonic() + 90
        first: dict[int, float] = {}
        while time.monotonic() < deadline:
            snap = session.snapshot()
            now = time.time()
            for a in snap.agents:
                if a.state != "starting":
                    registered.setdefault(a.index, now)
            for r in snap.runs:
                if r.started_at is not None:
                    first[r.agent] = min(first.get(r.agent, r.started_at), r.started_at)
            if len(first) == N:
                break
            time.sleep(0.02)
    finally:
        session.stop()
    rows = read_times(times)
    out = {
        "launch_returned_s": rnd(returned),
        "all_registered_s": rnd(max(registered.values()) - t0) if len(registered) == N else None,
        "all_in_first_run_s": rnd(max(first.values()) - t0) if len(first) == N else None,
        "first_agent_in_run_s": rnd(min(first.values()) - t0) if first else None,
        "all_entered_function_s": rnd(max(r["enter"] for r in rows) - t0) if len(rows) >= N else None,
    }
    if len(first) != N:
        out["error"] = f"only {len(first)}/{N} agents reached a run in 90 s"
    return out


def run(bench: Bench) -> dict:
    repeats = 1 if bench.quick else 3
    tries = []
    for i in range(repeats):
        tries.append(_once(bench, i))
        bench.log(f"  start latency try {i + 1}: {tries[-1]}")
    values = [t["all_in_first_run_s"] for t in tries if t["all_in_first_run_s"] is not None]
    return {"N": N, "tries": tries, "median_s": rnd(median(values)),
            "max_s": rnd(max(values) if values else None)}
