"""4. Kernel responsiveness under a log flood.

A real kernel (jupyter_client ``KernelManager``, the venv's ``python3`` kernelspec, a client
that allows stdin as JupyterLab does, so the magic shows the panel).  Inside it, on the kernel's
own embedded server::

    %load_ext sweep_magic
    %%sweep_parallel SWEEP --cpus 8 --no-wait       # the cell defines the flood trial

Each of the 8 agents runs one trial that calls ``run.log({...})`` 2,000 times a second (paced in
10 ms slices).  Once every agent is inside its run: round trips of a trivial cell
(``execute("1")`` → ``execute_reply``), the kernel's CPU% over that window (psutil on the kernel
pid), and the widget messages the kernel sends (``comm_msg`` on iopub, counted by our client;
also the panel's own ``stats.messages_sent``).  The same round trips on the idle kernel first,
for reference.  Each agent's achieved log rate comes from the trial's own count.

Two variants, launched one after the other in the same run (full: ABBA, two launches each): the
flood as launched, and ``%%sweep_parallel ... --nice 10`` (``launch(nice=10)``: each worker and
its wandb-core at nice 10, process and session).  Each launch runs its trials to the end.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time

import psutil

from benchmarks._common import (
    REPO,
    TRIAL_SRC,
    Bench,
    kill_group,
    pct,
    read_times,
    rnd,
    sidecars,
)
from sweep_magic.faces.panel_refresh import max_in_window

FULL = dict(agents=8, rate=2000, seconds=45, round_trips=200, synthetic_seconds=10)
QUICK = dict(agents=4, rate=2000, seconds=15, round_trips=50, synthetic_seconds=3)
GAP_BETWEEN = 0.02  # seconds between round trips: a person re-running cells, not a tight loop


class _Iopub(threading.Thread):
    """Drains iopub (only this thread touches that socket): comm_msg times, outputs of a request."""

    def __init__(self, kc):
        super().__init__(daemon=True, name="bench-iopub")
        self.kc = kc
        self.comm_times: list[float] = []
        self.outputs: dict[str, list[str]] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:
                if self.stop.is_set():
                    return
                continue
            kind = msg.get("msg_type")
            if kind == "comm_msg":
                self.comm_times.append(time.monotonic())
            elif kind in ("stream", "error", "execute_result"):
                parent = msg.get("parent_header", {}).get("msg_id")
                c = msg["content"]
                text = c.get("text") or c.get("data", {}).get("text/plain") or "\n".join(c.get("traceback", []))
                self.outputs.setdefault(parent, []).append(text)


def _execute(kc, iopub: _Iopub, code: str, timeout: float = 120) -> tuple[float, str, str]:
    """(seconds to execute_reply, status, output text) of one cell."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code, allow_stdin=True, store_history=False)
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            break
    elapsed = time.perf_counter() - t0
    time.sleep(0.05)  # outputs travel on iopub and may trail the reply a little
    return elapsed, reply["content"]["status"], "".join(iopub.outputs.pop(msg_id, []))


def _round_trips(kc, iopub: _Iopub, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg_id = kc.execute("1", store_history=False)
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                break
        times.append(time.perf_counter() - t0)
        iopub.outputs.pop(msg_id, None)
        time.sleep(GAP_BETWEEN)
    return times


def _control(bench: Bench, kc, iopub: _Iopub, kernel: psutil.Process, cfg: dict) -> dict:
    """The same flood from N plain ``wandb.agent`` processes the benchmark starts (the kernel has no
    sweep, no supervisor, no panel): what the machine's load alone does to the round trip."""
    n = cfg["agents"]
    sid, _ = bench.sweep("flood-plain", n, kind="flood", rate=cfg["rate"], seconds=300)
    proc = bench.plain_agents(sid, n, "flood-plain")
    try:
        base = os.path.join(proc.wandb_dir, "wandb")
        deadline = time.monotonic() + 120
        started = 0
        while time.monotonic() < deadline:
            try:
                started = sum(1 for d in os.listdir(base) if d.startswith("offline-run-"))
            except OSError:
                started = 0
            if started >= n:
                break
            time.sleep(0.3)
        if started < n:
            return {"error": f"only {started}/{n} plain agents reached their run in 120 s"}
        time.sleep(1.0)  # every run past wandb.init and logging
        c0, t0 = kernel.cpu_times(), time.monotonic()
        values = _round_trips(kc, iopub, cfg["round_trips"])
        c1, t1 = kernel.cpu_times(), time.monotonic()
        alive = proc.poll() is None
    finally:
        kill_group(proc)
    return {"round_trips": len(values), "window_s": rnd(t1 - t0, 2), "p50_ms": rnd(pct(values, 50) * 1e3, 1),
            "p99_ms": rnd(pct(values, 99) * 1e3, 1), "max_ms": rnd(max(values) * 1e3, 1),
            "kernel_cpu_pct": rnd(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0), 1),
            "agents_alive_after": alive}


def _panel_rate(bench: Bench, cfg: dict) -> dict:
    """``benchmarks/panel_rate.py``, synthetic mode: the panel alone (no worker
    processes) under 2,000 snapshot changes a second, measured on the wire the same way."""
    try:
        from benchmarks import panel_rate
    except ImportError:
        return {"note": "benchmarks/panel_rate.py is not there; not measured"}
    bench.log("  panel_rate.py --synthetic (the panel alone under 2,000 snapshot changes/s)")
    try:
        r = panel_rate.run("synthetic", cfg["synthetic_seconds"], 2000.0)
    except Exception as err:  # someone else's script: keep our figures, but say it failed
        return {"error": f"panel_rate.run failed: {type(err).__name__}: {err}"}
    return {"seconds": cfg["synthetic_seconds"], "snapshot_changes_per_s": rnd(r.get("changes_per_s"), 0),
            "widget_msgs_per_s": rnd(r.get("messages_per_s"), 1), "widget_msgs_max_1s": r.get("worst_window"),
            "rtt_idle_p50_p99_ms": [rnd(x, 1) for x in r.get("rtt_idle", ())],
            "rtt_flood_p50_p99_ms": [rnd(x, 1) for x in r.get("rtt_flood", ())]}


def _at_level(pids: list[int], level: int) -> int:
    """How many of the agents' workers and wandb-cores run at ``level``: process nice, and the
    session's (``/proc/PID/autogroup``) where there is one."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    procs += sidecars(set(pids))
    count = 0
    for proc in procs:
        try:
            ok = proc.nice() == level
            with open(f"/proc/{proc.pid}/autogroup") as f:
                ok = ok and int(f.read().split("nice")[-1]) == level
        except (psutil.Error, OSError, ValueError):
            continue
        count += ok
    return count


def _phase(bench: Bench, kc, iopub: _Iopub, kernel: psutil.Process, cfg: dict, level: int, times_path: str,
           per: int, first: bool) -> dict:
    """One launch of the flood from the kernel (``--nice level`` unless 0), ``per`` round trips once
    every agent is logging, then the session stopped (or, for the last, left to end on its own)."""
    n = cfg["agents"]
    # Twice as many runs as agents: a worker queues its next run as soon as one starts, so with
    # exactly n runs an agent that starts late can find none left.  The second runs are stopped.
    sweep_cfg = {"method": "grid", "parameters": {
        "x": {"values": list(range(2 * n))}, "kind": {"value": "flood"}, "rate": {"value": cfg["rate"]},
        "seconds": {"value": cfg["seconds"]}, "times": {"value": times_path}}}
    _, status, text = _execute(kc, iopub, f"bench_sid = sweep_magic.local_sweep({sweep_cfg!r}, project='bench')")
    if status != "ok":
        raise RuntimeError(f"sweep setup failed: {text}")
    nice = f" --nice {level}" if level else ""
    t_launch = time.monotonic()
    _, status, text = _execute(kc, iopub, f"%%sweep_parallel {{bench_sid}} --cpus {n} --no-wait{nice}\n{TRIAL_SRC}")
    if status != "ok":
        raise RuntimeError(f"%%sweep_parallel failed: {text}")
    wait_code = ("s = sweep_magic.sessions()[-1]\n"
                 "deadline = time.time() + 120\n"
                 "while time.time() < deadline and not all(a.current_run for a in s.agents()):\n"
                 "    time.sleep(0.1)\n"
                 "from sweep_magic.faces.panel import _PANELS\n"
                 "p = _PANELS.get(s.id)\n"
                 "print(json.dumps({'running': sum(1 for a in s.agents() if a.current_run),\n"
                 "  'pids': [a.pid for a in s.agents()],\n"
                 "  'panel': p is not None, 'sent': p.stats.messages_sent if p else None}))")
    _, status, text = _execute(kc, iopub, wait_code, timeout=150)
    state = json.loads(text.strip().splitlines()[-1])
    result: dict = {"all_running_after_s": rnd(time.monotonic() - t_launch, 2)}
    if state["running"] < n:
        _, _, tail = _execute(kc, iopub, "import glob\nprint(s)\nfor p in sorted(glob.glob(s.dir + '/logs/*'))[:1]:\n"
                                         "    print(open(p).read()[-1500:])")
        raise RuntimeError(f"only {state['running']}/{n} agents reached their run (nice {level}): {tail[-2500:]}")
    time.sleep(1.0)  # every run past wandb.init and logging; the worker's watcher has seen its wandb-core
    result["at_level"] = _at_level(state["pids"], level)
    comm_before = len(iopub.comm_times)
    c0, t0 = kernel.cpu_times(), time.monotonic()
    result["samples"] = _round_trips(kc, iopub, per)
    c1, t1 = kernel.cpu_times(), time.monotonic()
    result["cpu"] = (c1.user + c1.system) - (c0.user + c0.system)
    result["wall"] = t1 - t0
    _, status, text = _execute(kc, iopub, "print(sum(1 for a in s.agents() if a.current_run))")
    result["still"] = int(text.strip().splitlines()[-1]) if status == "ok" and text.strip() else None
    if first:
        result["comm"] = [t for t in iopub.comm_times[comm_before:] if t <= t1]
        result["panel_shown"] = state["panel"]
        _, status, text = _execute(kc, iopub, (
            "from sweep_magic.faces.panel import _PANELS\n"
            "p = _PANELS.get(s.id)\n"
            f"print(json.dumps(None if p is None else {{'sent': p.stats.messages_sent, "
            f"'max_1s': p.stats.max_in_window(1.0, since=time.monotonic() - {t1 - t0 + 1.0}), "
            f"'deferred': p.stats.deferred, 'errors': p.stats.errors}}))"))
        result["panel_stats"] = json.loads(text.strip().splitlines()[-1]) if status == "ok" and text.strip() else None
    # Let the first trials end on their own, so each agent's achieved rate is on file; then stop.
    deadline = time.monotonic() + cfg["seconds"] + 30
    while len(read_times(times_path)) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    _execute(kc, iopub, "s.stop()", timeout=60)
    return result


def run(bench: Bench) -> dict:
    from jupyter_client import KernelManager

    cfg = QUICK if bench.quick else FULL
    n = cfg["agents"]
    out: dict = {"agents": n, "target_rate_per_agent": cfg["rate"], "round_trips": cfg["round_trips"]}

    km = KernelManager(kernel_name="python3")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    km.start_kernel(cwd=bench.root, env=env)
    kc = km.client()
    kc.allow_stdin = True
    kc.start_channels()
    iopub = _Iopub(kc)
    try:
        kc.wait_for_ready(timeout=90)
        iopub.start()
        _, status, text = _execute(kc, iopub, "import os, json, time, sweep_magic; print(os.getpid())")
        if status != "ok":
            raise RuntimeError(f"kernel setup failed: {text}")
        kernel = psutil.Process(int(text.strip().splitlines()[-1]))
        idle = _round_trips(kc, iopub, min(50, cfg["round_trips"]))
        out["idle"] = {"p50_ms": rnd(pct(idle, 50) * 1e3, 1), "p99_ms": rnd(pct(idle, 99) * 1e3, 1)}
        bench.log(f"  kernel idle round trip p50 {out['idle']['p50_ms']} ms, p99 {out['idle']['p99_ms']} ms")

        if not bench.quick:
            out["control_plain_flood"] = _control(bench, kc, iopub, kernel, cfg)
            bench.log(f"  control (same flood from plain agents outside the kernel): {out['control_plain_flood']}")

        # The measured variants, each its own launch of the same flood on a fresh sweep: as
        # launched (no --nice), and `%%sweep_parallel ... --nice 10` (launch(nice=10): every
        # worker and its wandb-core at nice 10, process and session).  The full run does them
        # twice, in ABBA order, so drift (other load on the machine) hits both alike.
        order = [0, 10] if bench.quick else [0, 10, 10, 0]
        per = max(1, cfg["round_trips"] // (len(order) // 2))
        acc = {level: {"samples": [], "cpu": 0.0, "wall": 0.0, "rows": [], "start_s": [], "still": [],
                       "reniced": []} for level in (0, 10)}
        _, status, text = _execute(kc, iopub, "import warnings; warnings.simplefilter('ignore')\n%load_ext sweep_magic\n")
        if status != "ok":
            raise RuntimeError(f"setup failed: {text}")
        for i, level in enumerate(order):
            times_path = os.path.join(bench.root, f"kernel-flood-{i}-nice{level}.jsonl")
            phase = _phase(bench, kc, iopub, kernel, cfg, level, times_path, per, first=(i == 0))
            a = acc[level]
            a["samples"] += phase["samples"]
            a["cpu"] += phase["cpu"]
            a["wall"] += phase["wall"]
            a["rows"] += read_times(times_path)
            a["start_s"].append(phase["all_running_after_s"])
            a["still"].append(phase["still"])
            a["reniced"].append(phase["at_level"])
            if "comm" in phase:
                out.update({k: phase[k] for k in ("panel_shown", "panel_stats")})
                comm, span = phase["comm"], phase["wall"]
                acc[level]["comm"] = (len(comm) / span if span else None, max_in_window(comm) if comm else 0)
            bench.log(f"  phase {i + 1}/{len(order)} ({'launch(nice=10)' if level else 'as launched'}): "
                      f"p50 {rnd(pct(phase['samples'], 50) * 1e3, 1)} ms, p99 {rnd(pct(phase['samples'], 99) * 1e3, 1)} ms, "
                      f"{phase['at_level']} agent processes at nice {level}")
        for level, key in ((0, "flood"), (10, "flood_launch_nice10")):
            a = acc[level]
            values = a["samples"]
            rates = [r["logged"] / (r["worked"] - r["inited"]) for r in a["rows"] if r["worked"] > r["inited"]]
            out[key] = {
                "round_trips": len(values),
                "window_s": rnd(a["wall"], 2),
                "p50_ms": rnd(pct(values, 50) * 1e3, 1),
                "p99_ms": rnd(pct(values, 99) * 1e3, 1),
                "max_ms": rnd(max(values) * 1e3, 1),
                "kernel_cpu_pct": rnd(100 * a["cpu"] / a["wall"], 1),
                "all_running_after_s": a["start_s"],
                "agents_still_running_after": a["still"],
                "processes_at_level": a["reniced"],  # workers + wandb-cores found at this nice, per launch
                "achieved_rate_per_agent": {"agents_reporting": len(rates),
                                            "min": rnd(min(rates), 0) if rates else None,
                                            "median": rnd(sorted(rates)[len(rates) // 2], 0) if rates else None},
            }
            if "comm" in a:
                out[key]["widget_msgs_per_s"] = rnd(a["comm"][0], 1)
                out[key]["widget_msgs_max_1s"] = a["comm"][1]
        out["all_running_after_s"] = out["flood"]["all_running_after_s"][0]
        out["achieved_rate_per_agent"] = out["flood"]["achieved_rate_per_agent"]
        bench.log(f"  under flood, as launched: {out['flood']}")
        bench.log(f"  under flood, launch(nice=10): {out['flood_launch_nice10']}")
    finally:
        try:
            if kc.is_alive():
                _execute(kc, iopub, "sweep_magic.stop_all()", timeout=60)
        except Exception:
            pass
        iopub.stop.set()
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=False)
        km.cleanup_resources()
    out["panel_rate_synthetic"] = _panel_rate(bench, cfg)
    return out
