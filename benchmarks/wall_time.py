"""1. Sweep wall time: K sleep-bound trials of T seconds with N agents, three ways, same run.

(a) one ``wandb.agent`` process (today's notebook cell), (b) the W&B docs' recipe: N independent
``python agent.py`` started by a shell loop (``for i in ...; do python agent.py & done; wait``),
(c) ``sweep_magic.launch(trial, sweep_id, cpus=N)`` then ``.wait()``, with the kernel's warm start
server already up (``%load_ext sweep_magic`` starts it; a notebook loads the extension before it
launches).  Each variant gets a fresh
grid sweep of K points on the benchmark's embedded server.  Wall time is from the start (Popen /
``launch``) to every agent process having exited.  ``ideal`` is K·T/N.
"""

from __future__ import annotations

import time
import warnings

from benchmarks._common import Bench, gaps, median, read_times, rnd, trial_function, wait_group

FULL = [dict(K=32, T=2.0, N=4), dict(K=16, T=1.0, N=4), dict(K=8, T=1.0, N=2)]
QUICK = [dict(K=4, T=0.5, N=2)]


def _summary(rows: list[dict], t0: float, K: int, wall: float | None) -> dict:
    out = {"wall_s": rnd(wall), "runs_done": len(rows), "complete": len(rows) == K}
    if rows:
        first = {}
        for r in sorted(rows, key=lambda r: r["enter"]):
            first.setdefault(r["pid"], r["enter"])
        out["span_s"] = rnd(max(r["exit"] for r in rows) - min(r["enter"] for r in rows))
        out["tail_s"] = rnd(t0 + wall - max(r["exit"] for r in rows)) if wall is not None else None
        out["first_run_all_agents_s"] = rnd(max(first.values()) - t0)
        g = gaps(rows, "enter", "exit")
        out["gap_median_s"] = rnd(median(g))
    return out


def run_plain(bench: Bench, K: int, T: float, N: int, shell_loop: bool) -> dict:
    name = f"plain{N}" if shell_loop else "single"
    sid, times = bench.sweep(name, K, kind="sleep", seconds=T)
    t0 = time.time()
    if shell_loop:
        proc = bench.plain_agents(sid, N, name)
    else:
        env = bench.agent_env(bench.wandb_dir(name))
        proc = bench.start_shell(f"exec python agent.py {sid}", env, name)
    budget = 120 + K * (T + 15) / (N if shell_loop else 1)
    code = wait_group(proc, budget)
    wall = time.time() - t0
    out = _summary(read_times(times), t0, K, wall)
    out["exit_code"] = code
    if code != 0 or not out["complete"]:
        out["error"] = f"exit code {code}, {out['runs_done']}/{K} runs; log tail:\n{bench.log_tail(name)}"
        bench.log(f"  {name}: {out['error']}")
    return out


def run_sweep_magic(bench: Bench, K: int, T: float, N: int) -> dict:
    import sweep_magic
    from sweep_magic.agents import warm

    sid, times = bench.sweep(f"sweep_magic{N}", K, kind="sleep", seconds=T)
    fn = trial_function()
    zygote = warm.warm_up()
    if zygote is not None:
        zygote.wait_ready(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "N CPU agents on 2 cores: they will share cores"
        t0 = time.time()
        session = sweep_magic.launch(fn, sid, cpus=N)
    done = session.wait(timeout=120 + K * (T + 15) / N)
    wall = time.time() - t0
    if not done:
        session.stop()
    snap = session.snapshot()
    out = _summary(read_times(times), t0, K, wall if done else None)
    out["snapshot_runs_finished"] = sum(1 for r in snap.runs if r.state == "finished")
    if not done or not out["complete"]:
        tails = "\n".join(line for a in snap.agents for line in a.log_tail[-5:])
        out["error"] = f"done={done}, {out['runs_done']}/{K} runs; agents: " + "; ".join(
            f"{a.index}:{a.state}({a.reason})" for a in snap.agents) + "\n" + tails
        bench.log(f"  sweep_magic: {out['error']}")
    return out


def run(bench: Bench) -> dict:
    results = []
    for cfg in (QUICK if bench.quick else FULL):
        K, T, N = cfg["K"], cfg["T"], cfg["N"]
        bench.log(f"wall time K={K} T={T}s N={N}")
        a = run_plain(bench, K, T, N, shell_loop=False)
        bench.log(f"  (a) one wandb.agent: {a['wall_s']} s")
        b = run_plain(bench, K, T, N, shell_loop=True)
        bench.log(f"  (b) {N} wandb.agent by a shell loop: {b['wall_s']} s")
        c = run_sweep_magic(bench, K, T, N)
        bench.log(f"  (c) sweep_magic.launch(cpus={N}): {c['wall_s']} s")
        ideal = K * T / N
        row = {"K": K, "T": T, "N": N, "ideal_s": rnd(ideal), "a_single": a, "b_shell_loop": b, "c_sweep_magic": c}
        if c["wall_s"] and b["wall_s"]:
            row["c_over_b"] = rnd(c["wall_s"] / b["wall_s"])
        if c["wall_s"] and a["wall_s"]:
            row["c_over_a"] = rnd(c["wall_s"] / a["wall_s"])
        if c["wall_s"]:
            row["ideal_over_c"] = rnd(ideal / c["wall_s"])
        results.append(row)
    return {"configs": results}
