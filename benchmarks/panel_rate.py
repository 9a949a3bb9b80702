"""Widget messages per second under a log flood, and the kernel's responsiveness meanwhile.

    .venv/bin/python benchmarks/panel_rate.py              # synthetic flood + real agents
    .venv/bin/python benchmarks/panel_rate.py --synthetic  # only the synthetic flood

A real ipykernel is started with jupyter_client.  In it, a ``SessionPanel`` watches
8 agents that change as fast as they can:

* synthetic: a thread in the kernel rewrites 8 agents' snapshots (new step, metrics
  and log line) ``--rate`` times a second in total — far more than the supervisor
  ever produces, since workers coalesce metrics to ≤ 4/s per run;
* real: ``launch(..., cpus=8)`` on a local sweep whose ``train`` logs and prints in
  a tight loop — the whole path, workers and supervisor included.

Measured from outside the kernel: widget ``comm_msg``s on iopub per second (the wire,
not the panel's own counter — both are printed), and the round trip of a trivial
``execute_request`` sent every 100 ms (p50/p99), before and during the flood.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

REPO = Path(__file__).resolve().parents[1]

SYNTHETIC = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from panel_fakes import FakeSession
from sweep_magic.faces.panel import SessionPanel
session = FakeSession(agents=8)
runs = [session.start_run(i, name=f"run-{{i}}", config={{"lr": i}}) for i in range(8)]
panel = SessionPanel(session)
display(panel)
for row_ in panel._rows: row_.log_toggle.value = True   # the heaviest view: every log tail open
_stop, _changes = threading.Event(), [0]
def _flood(period={period}):
    step = 0
    next_t = time.monotonic()
    while not _stop.is_set():
        step += 1
        i = step % 8
        session.log_metrics(runs[i], step=step, metrics={{"loss": 1.0 / step, "acc": step % 97}})
        session.update_agent(i, log_tail=tuple(f"step {{s}} loss {{1.0 / s:.5f}}" for s in range(max(1, step - 20), step + 1)))
        _changes[0] += 1
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
_t = threading.Thread(target=_flood, daemon=True)
_t.start()
"""

REAL = """
import sweep_magic, time
from sweep_magic.faces.panel import SessionPanel
cfg = {{"method": "random", "metric": {{"name": "loss", "goal": "minimize"}},
        "parameters": {{"lr": {{"min": 0.0, "max": 1.0}}}}}}
def train():
    import time, wandb
    with wandb.init() as run:
        end = time.monotonic() + {seconds}
        step = 0
        while time.monotonic() < end:
            step += 1
            run.log({{"loss": run.config.lr / step, "step_size": step}})
            print("step", step, "of a chatty run")
session = sweep_magic.launch(train, sweep_magic.local_sweep(cfg, project="bench"), cpus=8)
panel = SessionPanel(session, start={panel})
if {panel}:
    display(panel)
else:
    panel.close()   # the baseline: the same agents, no widget work at all
_changes = [0]
session.subscribe(lambda: _changes.__setitem__(0, _changes[0] + 1))
"""


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Probe:
    """Counts comm_msgs on iopub and times execute round trips, from outside the kernel."""

    def __init__(self, kc):
        self.kc = kc
        self.comm_times: list[float] = []
        self.comm_ids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_iopub, daemon=True)
        self._thread.start()

    def _drain_iopub(self):
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["msg_type"] == "comm_msg":
                self.comm_times.append(time.monotonic())
                self.comm_ids[msg["content"]["comm_id"]] = self.comm_ids.get(msg["content"]["comm_id"], 0) + 1
            elif msg["msg_type"] == "error":
                print("kernel error:", "\n".join(msg["content"]["traceback"])[-2000:], file=sys.stderr)

    def execute(self, code, timeout=60):
        msg_id = self.kc.execute(code, store_history=False)
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def round_trips(self, seconds, every=0.1):
        times = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            self.execute("1")
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(every)
        return times

    def rate(self, since, until):
        sent = [t for t in self.comm_times if since <= t < until]
        worst, lo = 0, 0
        for hi, t in enumerate(sent):
            while t - sent[lo] >= 1.0:
                lo += 1
            worst = max(worst, hi - lo + 1)
        return len(sent) / (until - since), worst

    def stop(self):
        self._stop.set()
        self._thread.join()


def scalar(probe, expr):
    msg_id = probe.kc.execute("", user_expressions={"v": expr}, store_history=False)
    while True:
        reply = probe.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["user_expressions"]["v"]["data"]["text/plain"]


def run(mode, seconds, rate):
    home = tempfile.mkdtemp(prefix="panel-bench-")
    env = {**os.environ, "SWEEP_MAGIC_HOME": home, "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=home)
    probe = Probe(kc)
    try:
        baseline = probe.round_trips(3)
        code = SYNTHETIC.format(tests=str(REPO / "tests"), period=1.0 / rate) if mode == "synthetic" \
            else REAL.format(seconds=seconds + 30, panel=mode == "real")
        reply = probe.execute(code)
        assert reply["content"]["status"] == "ok", reply["content"]
        time.sleep(3 if mode == "synthetic" else 12)  # rows built, agents up
        t0 = time.monotonic()
        changes0 = int(scalar(probe, "_changes[0]"))
        sent0 = int(scalar(probe, "panel.stats.messages_sent"))
        during = probe.round_trips(seconds)
        t1 = time.monotonic()
        changes = int(scalar(probe, "_changes[0]")) - changes0
        sent = int(scalar(probe, "panel.stats.messages_sent")) - sent0
        wire_rate, wire_worst = probe.rate(t0, t1)
        worst_counter = int(scalar(probe, f"panel.stats.max_in_window(1.0, since=__import__('time').monotonic() - {t1 - t0 + 1:.1f})"))
        ours = eval(scalar(probe, "sorted(w.model_id for w in __import__('ipywidgets').Widget.widgets.values())"))
        foreign = {k: v for k, v in probe.comm_ids.items() if k not in ours}
        if foreign:
            print(f"comm_msgs from comms other than widgets: {foreign}")
        teardown = "_stop.set(); panel.close()" if mode == "synthetic" else "session.stop(); panel.close()"
        probe.execute(teardown, timeout=60)
    finally:
        probe.stop()
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    window = t1 - t0
    print(f"\n== {mode} flood, 8 agents, {window:.1f}s window ==")
    print(f"snapshot changes: {changes} ({changes / window:.0f}/s)")
    print(f"widget messages (panel counter): {sent} = {sent / window:.1f}/s, worst 1 s window {worst_counter}")
    print(f"comm_msg on iopub (wire):        {wire_rate:.1f}/s, worst 1 s window {wire_worst}")
    print(f"execute round trip idle:   p50 {pct(baseline, .5):.1f} ms  p99 {pct(baseline, .99):.1f} ms  (n={len(baseline)})")
    print(f"execute round trip flood:  p50 {pct(during, .5):.1f} ms  p99 {pct(during, .99):.1f} ms  (n={len(during)})")
    return {"changes_per_s": changes / window, "messages_per_s": sent / window, "worst_window": max(worst_counter, wire_worst),
            "rtt_idle": (statistics.median(baseline), pct(baseline, .99)), "rtt_flood": (statistics.median(during), pct(during, .99))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="only the synthetic flood (no worker processes)")
    ap.add_argument("--real", action="store_true", help="only the real agents")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="synthetic snapshot changes per second")
    args = ap.parse_args()
    if not args.real:
        run("synthetic", args.seconds, args.rate)
    if not args.synthetic:
        run("real", args.seconds, args.rate)
        run("real-no-panel", args.seconds, args.rate)


if __name__ == "__main__":
    main()
