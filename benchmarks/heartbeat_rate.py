"""Heartbeats per second from 8 concurrent agents, as fast as the server answers (throughput).

Not in ``python -m benchmarks``: a tool for the store's transaction cost (``--direct``) and for
several servers on one file.  ``server_load.py`` measures latency under a realistic load.

    python -m benchmarks.heartbeat_rate [--servers N] [--seconds S] [--direct]

Starts N ``python -m sweep_magic.server`` processes on one fresh database and spreads 8
agents over them; each agent is a thread with its own keep-alive connection that sends the
steady-state Heartbeat (its run listed as running) as fast as the server answers.  Printed:
heartbeats per second in total and the median / 95th percentile latency.

``--direct``: no HTTP and no GraphQL; 8 threads of this process call ``Controller.heartbeat``
on one controller, which isolates the cost of the store's transactions.  Start two with
``--agents 4 --db F`` on one file to see the cost of sharing SQLite's write lock.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HEARTBEAT = ("mutation Heartbeat($id: ID!, $metrics: JSONString, $runState: JSONString) { agentHeartbeat("
             "input: {id: $id, metrics: $metrics, runState: $runState}) { agent { id } commands } }")
CREATE_AGENT = ("mutation CreateAgent($host: String!, $sweep: String!) { createAgent(input: {host: $host, "
                "sweep: $sweep}) { agent { id } } }")
UPSERT = ("mutation UpsertSweep($config: String) { upsertSweep(input: {config: $config}) "
          "{ sweep { name } configValidationWarnings } }")


class Client:
    def __init__(self, url: str, key: str):
        host, port = url.split("//")[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()

    def call(self, query: str, variables: dict) -> dict:
        body = json.dumps({"query": query, "variables": variables})
        self.conn.request("POST", "/graphql", body, {"Authorization": self.auth,
                                                     "Content-Type": "application/json"})
        reply = json.loads(self.conn.getresponse().read())
        if reply.get("errors"):
            raise RuntimeError(reply["errors"])
        return reply["data"]


def start_server(db: str) -> tuple[subprocess.Popen, str, str]:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweep_magic.server", "--db", db], env=env,
                            stdout=subprocess.PIPE, text=True)
    lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
    return proc, lines["WANDB_BASE_URL"], lines["WANDB_API_KEY"]


def direct(agents: int, seconds: float, db: str | None) -> None:
    from sweep_magic.server.controller import Controller
    from sweep_magic.server.store import Store

    ctl = Controller(Store(db or os.path.join(tempfile.mkdtemp(prefix="hb-bench-"), "s.sqlite3")))
    sid, _ = ctl.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(1000))}}})
    work = []
    for _ in range(agents):
        agent = ctl.create_agent(sid, "bench")
        work.append((agent, json.dumps({ctl.heartbeat(agent, "{}")[0]["run_id"]: True})))
    counts = []
    stop_at = time.monotonic() + seconds

    def beat(agent, run_state):
        n = 0
        while time.monotonic() < stop_at:
            ctl.heartbeat(agent, run_state)
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=beat, args=w) for w in work]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"direct agents={agents}: {sum(counts) / (time.monotonic() - t0):.0f} heartbeats/s")
    ctl.store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--db", default=None, help="--direct: this file (run several benches on one file)")
    args = parser.parse_args()
    if args.direct:
        return direct(args.agents, args.seconds, args.db)
    folder = tempfile.mkdtemp(prefix="hb-bench-")
    db = os.path.join(folder, "s.sqlite3")
    servers = [start_server(db) for _ in range(args.servers)]
    try:
        first = Client(servers[0][1], servers[0][2])
        config = json.dumps({"method": "grid", "parameters": {"x": {"values": list(range(1000))}}})
        sid = first.call(UPSERT, {"config": config})["upsertSweep"]["sweep"]["name"]
        agents = []
        for i in range(args.agents):
            _, url, key = servers[i % len(servers)]
            client = Client(url, key)
            agent = client.call(CREATE_AGENT, {"host": "bench", "sweep": sid})["createAgent"]["agent"]["id"]
            commands = json.loads(client.call(HEARTBEAT, {"id": agent, "metrics": "{}", "runState": "{}"})
                                  ["agentHeartbeat"]["commands"])
            agents.append((client, agent, json.dumps({commands[0]["run_id"]: True})))
        latencies: list[float] = []
        stop_at = time.monotonic() + args.seconds
        lock = threading.Lock()

        def beat(client, agent, run_state):
            mine = []
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                client.call(HEARTBEAT, {"id": agent, "metrics": "{}", "runState": run_state})
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=beat, args=a) for a in agents]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        latencies.sort()
        print(f"servers={args.servers} agents={args.agents}: {len(latencies) / elapsed:.0f} heartbeats/s, "
              f"median {1000 * statistics.median(latencies):.1f} ms, "
              f"p95 {1000 * latencies[int(0.95 * len(latencies))]:.1f} ms, max {1000 * latencies[-1]:.0f} ms")
    finally:
        for proc, _, _ in servers:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
