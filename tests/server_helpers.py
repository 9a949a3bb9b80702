"""Helpers for the server tests: agent child processes with a clean wandb environment.

Every agent is a real interpreter running the real wandb client, started in its own session
so a test can kill its whole process group (and the agent's wandb-core, which exits ~1.5 s
after its owner).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from sweep_magic._testing import kill_group
from sweep_magic.protocol.env import LOCAL_DEFAULTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)

# What sweep_magic's own local workers get, and quiet.
QUIET = {**LOCAL_DEFAULTS, "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
_STALE = ("WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_ENTITY",
          "WANDB_PROJECT", "WANDB_RESUME", "WANDB_DIR")


def agent_env(server_env: dict, wandb_dir, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _STALE}
    env.update(QUIET)
    env.update(server_env)
    env["WANDB_DIR"] = str(wandb_dir)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")  # `python` is the venv's (CLI agent)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_script(path, body: str) -> str:
    path = str(path)
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return path


def start(cmd: list[str], env: dict, cwd, log_path) -> subprocess.Popen:
    log = open(str(log_path), "wb")
    try:
        return subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def reap(procs) -> None:
    for p in procs:
        if p.poll() is None:
            kill_group(p)
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stray grandchildren of an exited agent
            except (ProcessLookupError, PermissionError):
                pass


def wait_all(procs, timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def tail(path, n: int = 3000) -> str:
    try:
        with open(str(path), "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def offline_run_dirs(wandb_dir) -> list[str]:
    base = os.path.join(str(wandb_dir), "wandb")
    if not os.path.isdir(base):
        return []
    return sorted(d for d in os.listdir(base) if d.startswith("offline-run-"))


PYAGENT = """
import os, sys, time, wandb
sweep_id = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "none" else None

def train():
    with wandb.init() as run:
        cfg = dict(run.config)
        for step in range(int(cfg.get("steps", 1))):
            run.log({"loss": float(cfg.get("x", 0)) ** 2 + step * 0.0})
        time.sleep(float(cfg.get("sleep", 0)))

wandb.agent(sweep_id, function=train, count=count)
"""


# A stand-in for sweep_magic's worker (not ours to test here): the real pyagent with a short
# heartbeat, a hello (prefetch) after registering, and run events on the side channel, all
# hooked through the same wandb adapter as the real worker (no private wandb name here).
# The train function records when it starts and ends, for gap measurements.
WORKER = """
import base64, json, os, sys, time, urllib.request
import wandb
from sweep_magic import _wandb

URL, KEY = os.environ["WANDB_BASE_URL"], os.environ["WANDB_API_KEY"]
AUTH = "Basic " + base64.b64encode(("api:" + KEY).encode()).decode()
HB = float(os.environ.get("SM_HEARTBEAT", "0.5"))
PREFETCH = os.environ.get("SM_PREFETCH", "1") == "1"
TIMES = os.environ.get("SM_TIMES")

def post(path, payload):
    req = urllib.request.Request(URL + path, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Authorization": AUTH, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except Exception as err:
        print("side channel:", path, err, file=sys.stderr)

found = _wandb.check(("agent", "run"))
if found.refused:
    sys.exit(found.refusal())

class PacedTime:  # pyagent's `time` where its heartbeat period is not a class attribute
    def __getattr__(self, name):
        return getattr(time, name)
    def sleep(self, seconds):
        time.sleep(min(seconds, HB))

if not _wandb.set_heartbeat(HB, found):
    _wandb.patch_sleep(PacedTime(), found)

def registered(agent_id):
    if os.environ.get("SM_HELLO", "1") == "1":
        post(f"/sweep_magic/v1/agents/{agent_id}/hello",
             {"prefetch": PREFETCH, "pid": os.getpid(), "heartbeat_seconds": HB})

_wandb.hook_agent(_wandb.AgentCallbacks(registered=registered), found)

def started(run):
    post(f"/sweep_magic/v1/runs/{run.id}/start", {})

def logged(run, data, step, commit):
    post(f"/sweep_magic/v1/runs/{run.id}/history", {"rows": [dict(data, _step=step)]})

def finishing(run, exit_code):
    summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    post(f"/sweep_magic/v1/runs/{run.id}/finish",
         {"exit_code": exit_code or 0, "state": "finished" if not exit_code else "failed", "summary": summary})

assert _wandb.hook_run(started, logged, finishing, found), found.live_note()

def train():
    t0 = time.time()
    with wandb.init() as run:
        t1 = time.time()
        cfg = dict(run.config)
        for step in range(int(cfg.get("steps", 1))):
            run.log({"loss": float(cfg.get("x", 0))})
            time.sleep(float(cfg.get("step_sleep", 0)))
    if TIMES:
        with open(TIMES, "a") as f:
            f.write(json.dumps({"run": run.id, "enter": t0, "inited": t1, "exit": time.time()}) + "\\n")

count = int(sys.argv[2]) if len(sys.argv) > 2 else None
wandb.agent(sys.argv[1], function=train, count=count)
"""


def start_server(db, log_path, *args: str) -> tuple[subprocess.Popen, dict]:
    """``python -m sweep_magic.server --db DB ARGS…`` in its own session; returns the process
    and the environment it printed (WANDB_BASE_URL, WANDB_API_KEY) plus WANDB_MODE=offline."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("WANDB_SERVICE", None)
    with open(str(log_path), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sweep_magic.server", "--db", str(db), *args],
                                stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                                start_new_session=True)
    lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
    return proc, dict(lines, WANDB_MODE="offline")


def graphql(env: dict, query: str, variables: dict | None = None) -> dict:
    """One GraphQL call to the server in ``env``; the ``data`` of the reply."""
    import base64
    import json
    import urllib.request

    token = base64.b64encode(f"api:{env['WANDB_API_KEY']}".encode()).decode()
    req = urllib.request.Request(env["WANDB_BASE_URL"] + "/graphql", method="POST",
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]
