"""1. Sweep wall time: K sleep-bound trials of T seconds with N agents, four ways, same run.

(a) one ``wandb.agent`` process (today's notebook cell), (b) the W&B docs' recipe: N independent
``python agent.py`` started by a shell loop (``for i in ...; do python agent.py & done; wait``),
(c) ``sweep_magic.launch(trial, sweep_id, cpus=N)`` then ``.wait()``, with the kernel's warm start
server already up (``%load_ext sweep_magic`` starts it; a notebook loads the extension before it
launches).  Each variant gets a fresh
grid sweep of K points on the benchmark's embedded server.  Wall time is from the start (Popen /
``launch``) to every agent process having exited.  ``ideal`` is K·T/N.
(d), full run only: Ray Tune, the same trials with ``setup_wandb`` (``tune_compare.py``: why and
how it is timed); the quick run (CI) skips it, so CI needs no ``ray[tune]``.
"""

from __future__ import annotations

import os
import time
import warnings

from benchmarks._common import (
    QUIET,
    REPO,
    STALE,
    Bench,
    gaps,
    loopback_only,
    median,
    read_times,
    rnd,
    trial_function,
    wait_group,
)

FULL = [dict(K=32, T=2.0, N=4), dict(K=16, T=1.0, N=4), dict(K=8, T=1.0, N=2)]
QUICK = [dict(K=4, T=0.5, N=2)]


def _slot_gaps(rows: list[dict], N: int) -> list[float]:
    """N slots, whoever fills them: the i-th trial to start (i ≥ N) waited from the (i−N)-th end.
    Unlike ``gaps`` it needs no long-lived agent process (Tune starts an actor per trial)."""
    enters, exits = sorted(r["enter"] for r in rows), sorted(r["exit"] for r in rows)
    return [enters[i] - exits[i - N] for i in range(N, len(rows))]


def _summary(rows: list[dict], t0: float, K: int, wall: float | None, N: int) -> dict:
    out = {"wall_s": rnd(wall), "runs_done": len(rows), "complete": len(rows) == K}
    if rows:
        first = {}
        for r in sorted(rows, key=lambda r: r["enter"]):
            first.setdefault(r["pid"], r["enter"])
        out["span_s"] = rnd(max(r["exit"] for r in rows) - min(r["enter"] for r in rows))
        out["tail_s"] = rnd(t0 + wall - max(r["exit"] for r in rows)) if wall is not None else None
        # The N-th agent's first run (a fresh process per trial, as Tune's actors: the N-th trial)
        out["first_run_all_agents_s"] = rnd(sorted(first.values())[min(N, len(first)) - 1] - t0)
        g = gaps(rows, "enter", "exit")
        out["gap_median_s"] = rnd(median(g))
        out["slot_gap_median_s"] = rnd(median(_slot_gaps(rows, N)))
        out["init_median_s"] = rnd(median([r["inited"] - r["enter"] for r in rows]))  # wandb.init / setup_wandb
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
    out = _summary(read_times(times), t0, K, wall, N if shell_loop else 1)
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
    out = _summary(read_times(times), t0, K, wall if done else None, N)
    out["snapshot_runs_finished"] = sum(1 for r in snap.runs if r.state == "finished")
    if not done or not out["complete"]:
        tails = "\n".join(line for a in snap.agents for line in a.log_tail[-5:])
        out["error"] = f"done={done}, {out['runs_done']}/{K} runs; agents: " + "; ".join(
            f"{a.index}:{a.state}({a.reason})" for a in snap.agents) + "\n" + tails
        bench.log(f"  sweep_magic: {out['error']}")
    return out


def run_ray_tune(bench: Bench, K: int, T: float, N: int) -> dict:
    """(d): ``python -m benchmarks.tune_compare`` on loopback only; its trials summarised as the others'."""
    tag = f"tune-K{K}-T{T}-N{N}"
    times, storage = os.path.join(bench.root, f"{tag}.jsonl"), os.path.join(bench.root, tag)
    env = {k: v for k, v in os.environ.items() if k not in STALE}  # keeps the run's marker: leftovers()
    env.update(QUIET, WANDB_MODE="offline", WANDB_DIR=os.path.join(storage, "wandb"), PYTHONPATH=REPO,
               RAY_USAGE_STATS_ENABLED="0",
               # Ray's default token auth, without it writing ~/.ray/auth_token
               RAY_AUTH_TOKEN=bench.token * 4)
    os.makedirs(env["WANDB_DIR"])
    args = ["--K", str(K), "--T", str(T), "--N", str(N), "--times", times, "--storage", storage]
    r = loopback_only("benchmarks.tune_compare", args, timeout=180 + K * (T + 15) / N, env=env)
    if "t0" not in r:
        return {"error": r.get("error", r)}
    rows = read_times(times)
    out = _summary(rows, r["t0"], K, r["wall_s"], N)
    out.update({k: rnd(r[k]) for k in ("import_s", "ray_init_s", "fit_s", "shutdown_s")})
    if rows:  # where Tune's time goes
        out["fit_to_first_trial_s"] = rnd(min(x["enter"] for x in rows) - r["fit_start"])
        out["actor_process_to_trial_s"] = rnd(median([x["enter"] - x["spawned"] for x in rows]))
        out["import_wandb_median_s"] = rnd(median([x["imported"] - x["enter"] for x in rows]))
        out["setup_wandb_median_s"] = rnd(median([x["inited"] - x["imported"] for x in rows]))
        out["finish_median_s"] = rnd(median([x["exit"] - x["worked"] for x in rows]))
    if r.get("error") or not out["complete"]:
        out["error"] = r.get("error") or f"{out['runs_done']}/{K} trials wrote their times"
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
        if bench.quick:
            d = {"skipped": "full run only (needs ray[tune]: pandas, pyarrow; CI's quick run does without)"}
        else:
            d = run_ray_tune(bench, K, T, N)
            bench.log(f"  (d) Ray Tune, setup_wandb, {N} at once: {d.get('wall_s')} s "
                      f"(fit alone {d.get('fit_s')} s) {d.get('error') or ''}")
        ideal = K * T / N
        row = {"K": K, "T": T, "N": N, "ideal_s": rnd(ideal), "a_single": a, "b_shell_loop": b, "c_sweep_magic": c,
               "d_ray_tune": d}
        if c["wall_s"] and b["wall_s"]:
            row["c_over_b"] = rnd(c["wall_s"] / b["wall_s"])
        if c["wall_s"] and a["wall_s"]:
            row["c_over_a"] = rnd(c["wall_s"] / a["wall_s"])
        if c["wall_s"] and d.get("wall_s"):
            row["c_over_d"] = rnd(c["wall_s"] / d["wall_s"])
            row["c_over_d_fit"] = rnd(c["wall_s"] / d["fit_s"])  # Ray already up, as the kernel's zygote is
        if c["wall_s"]:
            row["ideal_over_c"] = rnd(ideal / c["wall_s"])
        results.append(row)
    return {"configs": results}
