"""results.json → results.md: the targets table first, then one table per benchmark."""

from __future__ import annotations


def _f(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def _verdict(ok) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def targets(out: dict) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, verdict) rows; a figure that was not measured says so."""
    b = out.get("benchmarks", {})
    rows = []
    for case in b.get("run_gap", {}).get("cases", []):
        if case["variant"] != "sweep_magic":
            continue
        med = case.get("snapshot", {}).get("median_s")
        rows.append((f"per-run gap in one agent, median (sweep_magic, {case['T']} s trials; p95 "
                     f"{_f(case.get('snapshot', {}).get('p95_s'), ' s')})", _f(med, " s"), "≤ 0.5 s",
                     _verdict(None if med is None else med <= 0.5)))
    configs = b.get("wall_time", {}).get("configs", [])
    main = next((c for c in configs if (c["K"], c["T"], c["N"]) == (32, 2.0, 4)), None)
    if main is not None:
        v = main.get("ideal_over_c")
        rows.append(("ideal/c, K=32 T=2 s N=4", _f(v), "≥ 0.9", _verdict(None if v is None else v >= 0.9)))
        short = next((c for c in configs if (c["K"], c["T"], c["N"]) == (16, 1.0, 4)), None)
        if short is not None:
            v = short.get("ideal_over_c")
            rows.append(("ideal/c, K=16 T=1 s N=4", _f(v), "≥ 0.75", _verdict(None if v is None else v >= 0.75)))
    elif configs:
        c = configs[0]
        rows.append((f"ideal/c (quick config K={c['K']} T={c['T']} s N={c['N']}; target is for K=32 T=2 N=4)",
                     _f(c.get("ideal_over_c")), "≥ 0.9", "– (not the target's config)"))
    one_second = [c for c in configs if c["T"] == 1.0 and c.get("c_over_b") is not None]
    for c in one_second:
        v = c["c_over_b"]
        rows.append((f"c/b on one-second trials, K={c['K']} N={c['N']}", _f(v), "≤ 0.25", _verdict(v <= 0.25)))
    for c in one_second:
        if c.get("c_over_d") is not None:
            rows.append((f"c/d, sweep_magic vs Ray Tune (`setup_wandb`), one-second trials, K={c['K']} N={c['N']} "
                         f"(Ray already started: {_f(c.get('c_over_d_fit'))})", _f(c["c_over_d"]),
                         "none set (issue 11: the comparison)", "–"))
    ratios = [c.get("c_over_b") for c in configs if c.get("c_over_b") is not None]
    if ratios:
        rows.append(("c/b, worst over all configs", _f(max(ratios)), "never > 1.0", _verdict(max(ratios) <= 1.0)))
    start = b.get("start_latency", {})
    if start:
        warm, cold = start.get("warm", {}), start.get("cold", {})
        v = warm.get("median_s")
        rows.append((f"start latency, launch → all {start.get('N')} agents in a run, warm (median; max "
                     f"{_f(warm.get('max_s'), ' s')}; cold {_f(cold.get('median_s'), ' s')}, "
                     f"warm/cold {_f(start.get('warm_over_cold'))})",
                     _f(v, " s"), "≤ 1.0 s", _verdict(None if v is None else v <= 1.0)))
    load = b.get("server_load", {})
    if load.get("p99_ms") is not None:
        v = load["p99_ms"]
        rows.append((f"server: heartbeat reply p99 with {load['agents']} agents at 1/s "
                     f"(p50 {_f(load.get('p50_ms'), ' ms', 1)}, {load.get('errors')} errors)",
                     _f(v, " ms", 1), "≤ 50 ms", _verdict(v <= 50 and not load.get("errors"))))
    flood = b.get("kernel_flood", {})
    if flood.get("flood"):
        v = flood["flood"].get("p99_ms")
        rows.append((f"trivial cell round trip p99 under a {flood['agents']}-agent log flood",
                     _f(v, " ms", 1), "< 100 ms", _verdict(None if v is None else v < 100)))
        nv = (flood.get("flood_launch_nice10") or {}).get("p99_ms")
        if nv is not None:
            rows.append(("… the same flood launched with `--nice 10` (`launch(nice=10)`, opt-in)",
                         _f(nv, " ms", 1), "< 100 ms", _verdict(nv < 100)))
        c = flood.get("control_plain_flood") or {}
        if c.get("p99_ms") is not None:
            rows.append(("… control: same flood from plain agents outside an idle kernel (not a target)",
                         _f(c["p99_ms"], " ms", 1), "< 100 ms", _verdict(c["p99_ms"] < 100)))
        sent = (flood.get("panel_stats") or {}).get("max_1s")
        w = flood["flood"].get("widget_msgs_max_1s")
        rows.append(("widget messages the kernel sent in any 1 s under the flood (panel.stats)", _f(sent), "≤ 10 /s",
                     _verdict(None if sent is None else sent <= 10)))
        rows.append(("… the same messages as they arrived at the client, any 1 s (iopub comm_msg)", _f(w), "≤ 10 /s",
                     _verdict(None if w is None else w <= 10)))
        syn = flood.get("panel_rate_synthetic") or {}
        if syn.get("widget_msgs_max_1s") is not None:
            w = syn["widget_msgs_max_1s"]
            rows.append(("widget messages in any 1 s, panel alone under 2,000 changes/s (panel_rate.py)", _f(w),
                         "≤ 10 /s", _verdict(w <= 10)))
    else:
        rows.append(("trivial cell round trip p99 under log flood", "not measured", "< 100 ms", "–"))
        rows.append(("widget messages per second", "not measured", "≤ 10 /s", "–"))
    for case in b.get("isolate_gap", {}).get("cases", []):
        if case["variant"] == "run, fork server":
            med = case.get("snapshot", {}).get("median_s")
            rows.append((f"per-run gap with isolate=\"run\" (fork server), median ({case['T']} s trials)",
                         _f(med, " s"), "≤ 0.5 s", _verdict(None if med is None else med <= 0.5)))
    mem = b.get("memory", {}).get("sweep_magic", {})
    v = mem.get("total_pss_mb")
    rows.append(("memory per agent (worker + wandb-core, PSS), sleeping function", _f(v, " MB", 0), "≤ 250 MB",
                 _verdict(None if v is None else v <= 250)))
    ray = b.get("ray_latency", {})
    if ray.get("tries"):
        v = ray.get("latency_p95_s")
        rows.append((f"Ray: event latency worker → snapshot, p95 ({ray.get('N')} GPU agents, 2 nodes)",
                     _f(v, " s"), "≤ 2 s", _verdict(None if v is None else v <= 2.0)))
    return rows


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(out: dict) -> str:
    m = out.get("machine", {})
    b = out.get("benchmarks", {})
    md = [f"# sweep_magic benchmarks ({out.get('mode')} run, {out.get('date_utc')} UTC)\n",
          f"Machine: {m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('memory_gb')} GB, Python {m.get('python')}, "
          f"wandb {m.get('wandb')}, sweeps {m.get('sweeps')}; load average at start {m.get('load_avg_at_start')}, "
          f"at end {m.get('load_avg_at_end')}. Total {out.get('total_seconds')} s. "
          "Every ratio compares variants measured in this same run.\n"]
    md.append("## Targets\n")
    md.append(_table(["measurement", "measured", "target", "verdict"], [list(r) for r in targets(out)]))

    configs = b.get("wall_time", {}).get("configs", [])
    if configs:
        md.append("## 1. Sweep wall time (sleep-bound trials)\n")
        md.append("(a) one `wandb.agent` process; (b) N `python agent.py &` from a shell loop, then `wait`; "
                  "(c) `sweep_magic.launch(fn, sweep, cpus=N)` + `.wait()`; (d) Ray Tune, full run only: the same "
                  "trials as a function trainable calling `setup_wandb` (W&B offline), `ray.init(num_cpus=N)`, "
                  "`max_concurrent_trials=N`, in a private network namespace. Wall = start → every agent exited "
                  "(d: `import ray` → `Tuner.fit()` returned, `ray.init` included; in brackets `fit()` alone); "
                  "tail = last run's end → exit; gap = median function exit → next function entry per agent; "
                  "slot gap = median end of a trial → start of the trial that took its place.\n")
        variants = (("a_single", "(a) one wandb.agent"), ("b_shell_loop", "(b) {N} agents, shell loop"),
                    ("c_sweep_magic", "(c) sweep_magic cpus={N}"), ("d_ray_tune", "(d) Ray Tune, {N} at once"))
        rows, skipped = [], set()
        for c in configs:
            for key, label in variants:
                v = c.get(key)
                if not v or v.get("skipped"):
                    skipped.update([v["skipped"]] if v else [])
                    continue
                wall = _f(v.get("wall_s"), " s", 1) + (f" ({_f(v['fit_s'], ' s', 1)})" if "fit_s" in v else "")
                rows.append([f"K={c['K']} T={c['T']}s N={c['N']}", label.format(N=c["N"]), wall,
                             f"{_f(v.get('runs_done'))}/{c['K']}", _f(v.get("span_s"), " s", 1), _f(v.get("tail_s"), " s", 1),
                             _f(v.get("gap_median_s"), " s"), _f(v.get("slot_gap_median_s"), " s"),
                             _f(v.get("first_run_all_agents_s"), " s")])
            d_ratios = (f", c/d **{_f(c['c_over_d'])}** (Ray already up: {_f(c.get('c_over_d_fit'))})"
                        if c.get("c_over_d") is not None else "")
            rows.append([f"K={c['K']} T={c['T']}s N={c['N']}", f"**ideal K·T/N = {_f(c['ideal_s'], ' s', 1)}**",
                         f"c/b **{_f(c.get('c_over_b'))}**, c/a {_f(c.get('c_over_a'))}{d_ratios}, "
                         f"ideal/c **{_f(c.get('ideal_over_c'))}**", "", "", "", "", "", ""])
        md.append(_table(["config", "variant", "wall", "runs", "first run → last run end", "tail", "gap", "slot gap",
                          "start → N agents in a run"], rows))
        for note in sorted(skipped):
            md.append(f"(d) Ray Tune: skipped, {note}.\n")
        tune = [(c, c["d_ray_tune"]) for c in configs if (c.get("d_ray_tune") or {}).get("fit_s") is not None]
        if tune:
            md.append("Where (d)'s time goes: the driver's phases, then per trial (medians): its actor's process "
                      "start → the function entered, `import wandb` (via `ray.air.integrations.wandb`), "
                      "`setup_wandb` (`wandb.init`), `run.finish()`.\n")
            md.append(_table(["config", "import ray", "ray.init", "Tuner.fit", "ray.shutdown", "fit → first trial",
                              "actor process → trial", "import wandb", "setup_wandb", "finish"],
                             [[f"K={c['K']} T={c['T']}s N={c['N']}"] + [_f(d.get(k), " s") for k in (
                                 "import_s", "ray_init_s", "fit_s", "shutdown_s", "fit_to_first_trial_s",
                                 "actor_process_to_trial_s", "import_wandb_median_s", "setup_wandb_median_s",
                                 "finish_median_s")] for c, d in tune]))

    cases = b.get("run_gap", {}).get("cases", [])
    if cases:
        md.append("## 2. Per-run gap in one agent\n")
        md.append("From the trial function's own timestamps (exit → next entry, exit → next `wandb.init` "
                  "returned) and, for sweep_magic, from the snapshot (`ended_at` → next `started_at`).\n")
        rows = []
        for case in cases:
            for key, label in (("exit_to_enter", "function exit → next entry"),
                               ("exit_to_init", "function exit → next wandb.init returned"),
                               ("snapshot", "snapshot ended_at → next started_at")):
                d = case.get(key)
                if d:
                    rows.append([case["variant"], f"{case['K']} × {case['T']} s", label, d.get("n"),
                                 _f(d.get("median_s"), " s"), _f(d.get("p95_s"), " s"), _f(d.get("max_s"), " s")])
        md.append(_table(["agent", "runs", "gap", "n", "median", "p95", "max"], rows))

    start = b.get("start_latency")
    if start:
        md.append(f"## 3. Start latency (N = {start['N']})\n")
        rows = [[mode, i + 1, _f(t.get("launch_returned_s"), " s", 3), _f(t.get("all_registered_s"), " s"),
                 _f(t.get("first_agent_in_run_s"), " s"), _f(t.get("all_in_first_run_s"), " s")]
                for mode in ("cold", "warm") for i, t in enumerate(start.get(mode, {}).get("tries", []))]
        md.append(_table(["mode", "try", "launch() returned", "all agents registered", "first agent in a run",
                          "all agents in a run"], rows))

    flood = b.get("kernel_flood")
    if flood:
        f = flood.get("flood", {})
        nf = flood.get("flood_launch_nice10", {})
        cf = flood.get("control_plain_flood") or {}
        idle = flood.get("idle", {})
        rate = flood.get("achieved_rate_per_agent", {})
        md.append(f"## 4. Kernel responsiveness under a log flood ({flood['agents']} agents × "
                  f"{flood['target_rate_per_agent']} `run.log`/s)\n")
        md.append("Sweep started in a real kernel with `%%sweep_parallel SWEEP --cpus N --no-wait` (panel shown); "
                  f"{flood['round_trips']} `execute(\"1\")` round trips per column once every agent was logging.\n")
        md.append("Last column: the same flood launched with `--nice 10` (`launch(nice=10)`): each worker and its "
                  "wandb-core at nice 10, both the process's nice and its session's (`/proc/PID/autogroup`: with "
                  "`sched_autogroup_enabled` = 1, CPU is shared between sessions first, and each worker and each "
                  "wandb-core is a session of its own). Each variant is its own launch on a fresh sweep in the same "
                  "run (full run: ABBA, two launches each); agent processes found at the variant's nice, per launch: "
                  f"{f.get('processes_at_level')} / {nf.get('processes_at_level')}. Agents still in their run after "
                  f"each window: {f.get('agents_still_running_after')} / {nf.get('agents_still_running_after')} of "
                  f"{flood['agents']}.\n")
        md.append("Control column (full run only): the kernel idle — no sweep, no supervisor, no panel in it — while the "
                  "same flood comes from plain `wandb.agent` processes the benchmark starts: the machine's load alone.\n")
        md.append(_table(["measurement", "idle kernel", "control: flood outside the kernel", "under flood, as launched",
                          "under flood, launch(nice=10)"], [
            ["round trip p50", _f(idle.get("p50_ms"), " ms", 1), _f(cf.get("p50_ms"), " ms", 1),
             _f(f.get("p50_ms"), " ms", 1), _f(nf.get("p50_ms"), " ms", 1)],
            ["round trip p99", _f(idle.get("p99_ms"), " ms", 1), _f(cf.get("p99_ms"), " ms", 1),
             _f(f.get("p99_ms"), " ms", 1), _f(nf.get("p99_ms"), " ms", 1)],
            ["round trip max", "", _f(cf.get("max_ms"), " ms", 1), _f(f.get("max_ms"), " ms", 1), _f(nf.get("max_ms"), " ms", 1)],
            ["kernel CPU", "", _f(cf.get("kernel_cpu_pct"), " %", 1), _f(f.get("kernel_cpu_pct"), " %", 1),
             _f(nf.get("kernel_cpu_pct"), " %", 1)],
            ["widget messages (iopub comm_msg), mean / max in 1 s", "", "",
             f"{_f(f.get('widget_msgs_per_s'), '/s', 1)} / {_f(f.get('widget_msgs_max_1s'))}", ""],
            ["panel.stats (messages_sent, max in 1 s, deferred)", "", "",
             _f(None) if not flood.get("panel_stats") else
             f"{flood['panel_stats']['sent']}, {flood['panel_stats']['max_1s']}, {flood['panel_stats']['deferred']}", ""],
            ["achieved run.log rate per agent (min / median)", "", "", f"{_f(rate.get('min'), '', 0)} / {_f(rate.get('median'), '', 0)}",
             f"{_f((nf.get('achieved_rate_per_agent') or {}).get('min'), '', 0)} / {_f((nf.get('achieved_rate_per_agent') or {}).get('median'), '', 0)}"],
            ["measured window", "", _f(cf.get("window_s"), " s", 1), _f(f.get("window_s"), " s", 1),
             _f(nf.get("window_s"), " s", 1)],
        ]))
        syn = flood.get("panel_rate_synthetic") or {}
        if syn.get("error") or syn.get("note"):
            md.append(f"`benchmarks/panel_rate.py --synthetic`: {syn.get('error') or syn.get('note')}\n")
        elif syn:
            md.append(f"The panel alone (`benchmarks/panel_rate.py` synthetic mode, reused: "
                      f"{_f(syn.get('snapshot_changes_per_s'), '', 0)} snapshot changes/s for {syn.get('seconds')} s, no workers): "
                      f"{_f(syn.get('widget_msgs_per_s'), '/s', 1)} widget messages, max {_f(syn.get('widget_msgs_max_1s'))} in 1 s; "
                      f"round trip p50/p99 idle {syn.get('rtt_idle_p50_p99_ms')} ms, "
                      f"flood {syn.get('rtt_flood_p50_p99_ms')} ms.\n")

    mem = b.get("memory")
    if mem:
        md.append(f"## 5. Memory per agent ({mem['N']} agents, function only sleeps)\n")
        rows = []
        for key, label in (("sweep_magic", "sweep_magic worker"), ("plain", "plain wandb.agent")):
            d = mem.get(key, {})
            rows.append([label, _f(d.get("agent_pss_mb"), " MB", 0), _f(d.get("agent_uss_mb"), " MB", 0),
                         _f(d.get("core_pss_mb"), " MB", 0), _f(d.get("core_uss_mb"), " MB", 0),
                         _f(d.get("total_pss_mb"), " MB", 0), _f(d.get("total_uss_mb"), " MB", 0)])
        md.append(_table(["agent", "process PSS", "process USS", "wandb-core PSS", "wandb-core USS",
                          "total PSS", "total USS"], rows))
        if mem.get("ours_pss_mb") is not None:
            md.append(f"sweep_magic's own share (PSS, worker − plain agent): {_f(mem['ours_pss_mb'], ' MB', 1)}.\n")

    cpu = b.get("cpu_bound")
    if cpu:
        md.append(f"## 6. CPU-bound trials ({cpu['K']} × numpy {cpu['n']}² matmul ×{cpu['reps']}, {cpu['C']} agents)\n")
        rows = []
        for key, label in (("sweep_magic_pinned_capped", f"sweep_magic cpus={cpu['C']} (pinned, thread caps)"),
                           ("plain_uncapped", f"{cpu['C']} plain wandb.agent, no caps"),
                           ("plain_capped", f"{cpu['C']} plain wandb.agent, thread caps, unpinned")):
            d = cpu.get(key)
            if d:
                rows.append([label, _f(d.get("wall_s"), " s", 1), _f(d.get("trial_compute_median_s"), " s"),
                             _f(d.get("trial_compute_sum_s"), " s", 1)])
        md.append(_table(["variant", "wall", "trial compute, median", "trial compute, sum"], rows))
        md.append(f"Ratios (sweep_magic / plain uncapped): wall {_f(cpu.get('wall_ratio_sm_over_plain'))}, "
                  f"trial compute {_f(cpu.get('compute_ratio_sm_over_plain'))}"
                  + (f"; plain capped / plain uncapped compute {_f(cpu['compute_ratio_caps_over_nocaps_plain'])}"
                     if cpu.get("compute_ratio_caps_over_nocaps_plain") is not None else "") + ".\n")

    iso = b.get("isolate_gap")
    if iso:
        md.append("## 7. isolate=\"agent\" vs isolate=\"run\": per-run gap in one agent\n")
        md.append("The same grid of sleep trials per variant, one agent each, in this run. isolate=\"run\" forks each "
                  "run from the agent's fork server (or spawns a fresh interpreter with SWEEP_MAGIC_FORKSERVER=0).\n")
        rows = []
        for case in iso.get("cases", []):
            for key, label in (("snapshot", "snapshot ended_at → next started_at"),
                               ("exit_to_enter", "function exit → next entry")):
                d = case.get(key) or {}
                rows.append([case["variant"], f"{case['K']} × {case['T']} s", label, d.get("n"),
                             _f(d.get("median_s"), " s"), _f(d.get("p95_s"), " s"), _f(d.get("max_s"), " s")])
        md.append(_table(["variant", "runs", "gap", "n", "median", "p95", "max"], rows))
        starts = iso.get("child_start") or {}
        if starts:
            md.append("Run child start (request → the function entered, no wandb.init): "
                      + "; ".join(f"{k} median {_f(v.get('median_s'), ' s', 3)} (max {_f(v.get('max_s'), ' s', 3)})"
                                  for k, v in starts.items()) + ".\n")

    ray = b.get("ray_latency")
    if ray and ray.get("tries"):
        md.append(f"## 8. Ray: {ray['N']} GPU agents on a 2-node cluster (this host, private network namespace)\n")
        md.append(f"Cluster start {_f(ray.get('cluster_start_s'), ' s')}, connect {_f(ray.get('connect_s'), ' s')}. "
                  "Latency = a logged `time.time()` (or a run's start) → the snapshot that shows it.\n")
        rows = [[i + 1, _f(t.get("launch_returned_s"), " s"), _f(t.get("all_in_a_run_s"), " s"), t.get("events"),
                 _f(t.get("latency_median_s"), " s"), _f(t.get("latency_p95_s"), " s"), _f(t.get("latency_max_s"), " s")]
                for i, t in enumerate(ray["tries"])]
        md.append(_table(["try", "launch() returned", "launch → all agents in a run", "events", "latency median",
                          "p95", "max"], rows))

    if out.get("errors"):
        md.append("## Errors\n")
        for name, text in out["errors"].items():
            md.append(f"* **{name}**: `{text.strip().splitlines()[-1][:300]}`\n")
    if out.get("leftover_processes"):
        md.append(f"## Processes that outlived the run (killed)\n\n{out['leftover_processes']}\n")
    return "\n".join(md)
