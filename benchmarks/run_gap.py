"""Measure the idle gap between runs in one agent against the embedded server.

    python benchmarks/run_gap.py [--runs N]

For each mode, one agent process (the real ``wandb.agent``) works through an N-point grid of
near-empty runs; the train function records when it is entered, when ``wandb.init`` returned
and when it left.  The gap is the next run's entry (or init) minus the previous run's exit.

Modes:
  plain     pyagent as shipped: 5 s heartbeat, no hello, so no prefetch
  prefetch  what sweep_magic's worker does: 0.5 s heartbeat and a hello asking for prefetch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from server_helpers import WORKER, agent_env, reap, start, tail, wait_all, write_script  # noqa: E402

from sweep_magic.server import serve  # noqa: E402

MODES = {"plain": {"SM_HEARTBEAT": "5", "SM_HELLO": "0"},
         "prefetch": {"SM_HEARTBEAT": "0.5", "SM_HELLO": "1", "SM_PREFETCH": "1"}}


def _p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(mode: str, runs: int, root: str) -> dict:
    wd = os.path.join(root, mode)
    os.makedirs(wd)
    srv = serve(db=os.path.join(root, f"{mode}.sqlite3"), wandb_dirs=[wd])
    procs = []
    try:
        sid = srv.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(runs))}}}, project="gap")
        times = os.path.join(root, f"{mode}.jsonl")
        script = write_script(os.path.join(root, "worker.py"), WORKER)
        env = agent_env(srv.env(), wd, SM_TIMES=times, **MODES[mode])
        procs = [start([sys.executable, script, sid], env, root, os.path.join(root, f"{mode}.log"))]
        if wait_all(procs, 60 + runs * 15) != [0]:
            raise SystemExit(f"{mode} agent failed:\n{tail(os.path.join(root, f'{mode}.log'))}")
        rows = [json.loads(line) for line in open(times)]
    finally:
        reap(procs)
        srv.stop()
    enter = [b["enter"] - a["exit"] for a, b in zip(rows, rows[1:])]
    inited = [b["inited"] - a["exit"] for a, b in zip(rows, rows[1:])]
    return {"mode": mode, "runs": len(rows), "gap_to_function_median": statistics.median(enter),
            "gap_to_function_p95": _p95(enter), "gap_to_init_median": statistics.median(inited),
            "gap_to_init_p95": _p95(inited)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="plain,prefetch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for mode in args.modes.split(","):
            r = measure(mode, args.runs, root)
            print(f"{r['mode']:9s} runs={r['runs']:3d}  gap to next function: median {r['gap_to_function_median']:.2f} s"
                  f"  p95 {r['gap_to_function_p95']:.2f} s   gap to next wandb.init return: median "
                  f"{r['gap_to_init_median']:.2f} s  p95 {r['gap_to_init_p95']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
