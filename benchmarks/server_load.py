"""7. The embedded server under many agents: heartbeat reply latency with A agents at once.

Each agent is what the wandb client is: a keep-alive HTTP connection that registers
(``CreateAgent``), takes a run on its first ``Heartbeat``, then sends the steady-state
``Heartbeat`` (its run listed as running) once per period — the request texts are the
client's own (``heartbeat_rate.py``).  Agents start at random phases, as agents launched over
time do.  The clients are spread over ``CLIENT_PROCS`` processes so that measuring does not
wait on one interpreter's lock, and the load is bounded: A × (seconds / period) heartbeats,
then every connection is closed.  Reported: reply latency p50 / p95 / p99 / max as the
clients saw it, the achieved rate, and errors.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks._common import Bench, rnd
from benchmarks.heartbeat_rate import CREATE_AGENT, HEARTBEAT, UPSERT, Client, start_server

CLIENT_PROCS = 4
FULL = dict(agents=256, seconds=20.0, period=1.0)
QUICK = dict(agents=32, seconds=4.0, period=1.0)


def _client_proc(url: str, key: str, sid: str, agents: int, seconds: float, period: float) -> tuple[list, list]:
    """One client process: ``agents`` threads, each one agent on its own connection."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(agents)

    def agent() -> None:
        mine, failed = [], []
        try:
            client = Client(url, key)
            agent_id = client.call(CREATE_AGENT, {"host": "load", "sweep": sid})["createAgent"]["agent"]["id"]
            commands = json.loads(client.call(HEARTBEAT, {"id": agent_id, "metrics": "{}", "runState": "{}"})
                                  ["agentHeartbeat"]["commands"])
            run_state = json.dumps({commands[0]["run_id"]: True}) if commands else "{}"
        except Exception as err:  # a refused registration is a result to report, not a crash
            failed.append(f"register: {err}")
            start.wait()
            with lock:
                errors.extend(failed)
            return
        start.wait()
        next_at = time.monotonic() + random.uniform(0, period)
        stop_at = time.monotonic() + seconds
        while next_at < stop_at:
            time.sleep(max(0.0, next_at - time.monotonic()))
            t0 = time.perf_counter()
            try:
                client.call(HEARTBEAT, {"id": agent_id, "metrics": "{}", "runState": run_state})
                mine.append(time.perf_counter() - t0)
            except Exception as err:
                failed.append(str(err)[:200])
            next_at += period
        client.conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=agent) for _ in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def run(bench: Bench) -> dict:
    cfg = QUICK if bench.quick else FULL
    folder = tempfile.mkdtemp(prefix="server-load-")
    proc, url, key = start_server(os.path.join(folder, "load.sqlite3"))
    try:
        config = {"method": "random", "parameters": {"lr": {"distribution": "uniform", "min": 0, "max": 1}}}
        sid = Client(url, key).call(UPSERT, {"config": json.dumps(config)})["upsertSweep"]["sweep"]["name"]
        share = [cfg["agents"] // CLIENT_PROCS + (i < cfg["agents"] % CLIENT_PROCS) for i in range(CLIENT_PROCS)]
        args = [url, key, sid, str(cfg["seconds"]), str(cfg["period"])]
        t0 = time.monotonic()
        # Fresh interpreters: the clients share nothing with this process (or its lock).
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.server_load", *args, str(n)],
                                  stdout=subprocess.PIPE, text=True) for n in share if n]
        results = [json.loads(p.communicate(timeout=cfg["seconds"] + 120)[0]) for p in procs]
        elapsed = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = [e for _, err in results for e in err]

    def pct(q: float) -> float | None:
        return rnd(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    summary = {
        **cfg, "heartbeats": len(latencies), "errors": len(errors), "first_errors": errors[:3],
        "rate_per_s": rnd(len(latencies) / max(elapsed, 1e-9), 0),
        "p50_ms": rnd(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": rnd(1000 * latencies[-1], 1) if latencies else None,
    }
    bench.log(f"  server load: {summary}")
    return summary


if __name__ == "__main__":  # one client process of ``run``: URL KEY SWEEP SECONDS PERIOD AGENTS
    url_, key_, sid_, seconds_, period_, agents_ = sys.argv[1:7]
    print(json.dumps(_client_proc(url_, key_, sid_, int(agents_), float(seconds_), float(period_))))
