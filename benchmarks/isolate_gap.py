"""7. ``isolate="agent"`` vs ``isolate="run"``: per-run gap side by side, and a run child's start.

Per-run gap: one agent (``cpus=1``) works through a K-point grid of T-second sleep trials,
once per variant, in this same run: ``isolate="agent"`` (every run in the worker),
``isolate="run"`` (each run forked from the agent's fork server) and ``isolate="run"`` with
``SWEEP_MAGIC_FORKSERVER=0`` (a fresh ``python -m sweep_magic.worker.run_child`` per run).
The gap is the snapshot's ``ended_at`` of a run → ``started_at`` of the agent's next run
(``wandb.init`` returned), and, from the trial's own timestamps, function exit → next entry.

Child start: request → the function entered, for a fork of the fork server vs a spawned
interpreter (no wandb.init; the run child's imports and setup only).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from types import SimpleNamespace

from benchmarks._common import Bench, gaps, median, pct, read_times, rnd, trial_function

VARIANTS = (("agent", "agent", True), ("run, fork server", "run", True), ("run, spawn", "run", False))
FULL = {"K": 10, "T": 1.0, "starts": 8}
QUICK = {"K": 4, "T": 0.5, "starts": 4}


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "median_s": rnd(median(values)), "p95_s": rnd(pct(values, 95)),
            "max_s": rnd(max(values) if values else None)}


def _gap_case(bench: Bench, label: str, isolate: str, forkserver: bool, K: int, T: float) -> dict:
    import sweep_magic
    from sweep_magic.worker.isolation import FORKSERVER_VAR

    sid, times = bench.sweep(f"isolate-{isolate}-{int(forkserver)}", K, kind="sleep", seconds=T)
    old = os.environ.get(FORKSERVER_VAR)
    os.environ[FORKSERVER_VAR] = "1" if forkserver else "0"  # read by the worker, which inherits it
    try:
        session = sweep_magic.launch(trial_function(), sid, cpus=1, isolate=isolate)
        done = session.wait(timeout=120 + K * (T + 15))
        if not done:
            session.stop()
    finally:
        if old is None:
            os.environ.pop(FORKSERVER_VAR, None)
        else:
            os.environ[FORKSERVER_VAR] = old
    runs = sorted((r for r in session.snapshot().runs if r.started_at and r.ended_at), key=lambda r: r.started_at)
    snap_gaps = [b.started_at - a.ended_at for a, b in zip(runs, runs[1:])]
    rows = read_times(times)
    for row in rows:
        row["pid"] = 0  # one agent: the trial's pid is the run's own with isolate="run"
    out = {"variant": label, "K": K, "T": T, "snapshot": _stats(snap_gaps),
           "exit_to_enter": _stats(gaps(rows, "enter", "exit")), "exit_to_init": _stats(gaps(rows, "inited", "exit")),
           "distinct_pids": len({r.pid for r in runs}) if isolate == "run" else None}
    if not done or len(rows) != K:
        out["error"] = f"done={done}, {len(rows)}/{K} runs"
    return out


STAMP_SRC = '''
def stamp():
    import os, time
    with open(os.environ["SM_BENCH_STAMP"], "a") as f:
        f.write(str(time.time()) + "\\n")
'''


def _child_starts(bench: Bench, n: int) -> dict:
    """Request → function entry, fork server vs spawn (the worker's own machinery, no agent)."""
    import cloudpickle

    from sweep_magic.worker import isolation

    namespace = {"__name__": "sweep_magic_bench_stamp"}
    exec(compile(STAMP_SRC, "<bench_stamp>", "exec"), namespace)
    spec = SimpleNamespace(function_pickle=cloudpickle.dumps(namespace["stamp"]), metric_name=None, report_url=None)
    stamp = os.path.join(bench.root, "child-stamps.txt")
    env = {**os.environ, "SM_BENCH_STAMP": stamp}
    out = {}
    for label, use_server in (("fork server", True), ("spawn", False)):
        os.environ[isolation.FORKSERVER_VAR] = "1" if use_server else "0"
        runs = isolation.FunctionRuns(spec, reporter=None)
        os.environ.pop(isolation.FORKSERVER_VAR, None)
        took, ready_s = [], None
        try:
            if runs.server is not None:
                t0 = time.monotonic()
                runs.server.wait_ready(isolation.READY_TIMEOUT)
                ready_s = time.monotonic() - t0
            for i in range(n):
                before = len(read_lines(stamp))
                r, w = os.pipe()
                t0 = time.time()
                try:
                    child = runs.start(f"bench{i}", {}, env, w)
                finally:
                    os.close(w)
                while child.poll() is None:
                    time.sleep(0.005)
                os.close(r)
                isolation._groups.discard(child.pid)
                stamps = read_lines(stamp)
                if len(stamps) > before:
                    took.append(float(stamps[-1]) - t0)
        finally:
            runs.close()
        out[label] = {**_stats(took), "server_ready_s": rnd(ready_s)}
    return out


def read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []


def run(bench: Bench) -> dict:
    sizes = QUICK if bench.quick else FULL
    cases = []
    for label, isolate, forkserver in VARIANTS:
        bench.log(f"isolate gap: {label}, one agent, {sizes['K']} runs of {sizes['T']}s")
        case = _gap_case(bench, label, isolate, forkserver, sizes["K"], sizes["T"])
        bench.log(f"  median gap (snapshot) {case['snapshot']['median_s']} s; function exit → next entry "
                  f"{case['exit_to_enter']['median_s']} s")
        cases.append(case)
    bench.log(f"run child start, {sizes['starts']} each: fork server vs spawn")
    starts = _child_starts(bench, sizes["starts"])
    bench.log("  " + json.dumps({k: v["median_s"] for k, v in starts.items()}))
    return {"cases": cases, "child_start": starts}


if __name__ == "__main__":  # python -m benchmarks.isolate_gap [--quick]: this one alone
    import sys

    from benchmarks.__main__ import main

    sys.exit(main(["--only", "isolate_gap", *sys.argv[1:], "--out", tempfile.mkdtemp(prefix="isolate_gap_")]))
