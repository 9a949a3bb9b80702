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

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)

QUIET = {
    "WANDB__DISABLE_STATS": "true",
    "WANDB__DISABLE_MACHINE_INFO": "true",
    "WANDB__SAVE_REQUIREMENTS": "false",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
}
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


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Kill the process group and its wandb-core sidecars (they live in their own session)."""
    try:
        cores = [p for p in psutil.process_iter(["cmdline"])
                 if (p.info["cmdline"] or [""])[0].endswith("wandb-core")
                 and str(proc.pid) in (p.info["cmdline"] or [])]
    except psutil.Error:
        cores = []
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    for core in cores:
        try:
            core.kill()
        except psutil.Error:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


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
