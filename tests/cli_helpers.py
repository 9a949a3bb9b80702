"""Helpers for the ``sweep-magic`` command's tests: the command as a real process, a real
``sweep-magic server`` beside it, sweeps made on it, and a pseudo-terminal to watch it in.

The command runs as ``python -m sweep_magic.cli`` (what the ``sweep-magic`` console script
calls), from this checkout, with a clean wandb environment and the test's folder on
PYTHONPATH so ``--function mod:train`` finds ``mod.py`` there.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
import urllib.request

from sweep_magic._testing import kill_group
from sweep_magic.protocol.env import LOCAL_DEFAULTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
CLI = [sys.executable, "-m", "sweep_magic.cli"]
QUIET = {**LOCAL_DEFAULTS, "WANDB_SILENT": "true"}  # what sweep_magic's own local workers get, and quiet
_DROP = ("WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_DIR",
         "WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_MODE", "COLUMNS", "LINES")

# The functions the tests' sweeps run (imported by `--function mod:NAME`).  `slow` marks its
# start in MARKERS, so a test knows a run is under way before it presses Ctrl-C.
MODULE = '''
import os, time, wandb

def train():
    with wandb.init() as run:
        run.log({"loss": (run.config.x - 2) ** 2})

def slow():
    with wandb.init() as run:
        open(os.path.join(os.environ["MARKERS"], "start-" + run.id), "w").close()
        time.sleep(float(os.environ.get("SLOW_SECONDS", "6")))
        run.log({"loss": float(run.config.x)})

def fail():
    with wandb.init() as run:
        raise ValueError(f"boom at x={run.config.x}")
'''


def cli_env(tmp_path, server: dict | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env.update(QUIET)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")  # `wandb`, and `python` for program sweeps
    env["PYTHONPATH"] = os.pathsep.join([REPO, str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    env["MARKERS"] = str(tmp_path / "markers")
    if server:
        env["WANDB_BASE_URL"], env["WANDB_API_KEY"] = server["url"], server["key"]
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_module(tmp_path) -> None:
    (tmp_path / "mod.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "markers").mkdir(exist_ok=True)


def start_cli(args: list[str], env: dict, cwd, **popen) -> subprocess.Popen:
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*CLI, *args], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True, **popen)


def run_cli(args: list[str], env: dict, cwd, timeout: float) -> subprocess.CompletedProcess:
    proc = start_cli(args, env, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"sweep-magic {' '.join(args)} ran past {timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_server(db, env: dict, cwd) -> tuple[subprocess.Popen, dict]:
    """``sweep-magic server --db DB``: the process and {url, key} from its two first lines."""
    proc = start_cli(["server", "--db", str(db)], env, cwd)
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    found = dict(line.split("=", 1) for line in lines if "=" in line)
    if set(found) != {"WANDB_BASE_URL", "WANDB_API_KEY"}:
        kill_group(proc)
        raise AssertionError(f"sweep-magic server printed {lines!r}: {proc.stderr.read()}")
    return proc, {"url": found["WANDB_BASE_URL"], "key": found["WANDB_API_KEY"]}


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None
    return proc.returncode


def wandb_sweep(yaml_path, env: dict, cwd, project: str = "p") -> str:
    """The real ``wandb sweep`` CLI; returns the ENTITY/PROJECT/ID it tells you to run."""
    env = {k: v for k, v in env.items() if k != "WANDB_SILENT"}  # silent, it would not say the path
    done = subprocess.run([os.path.join(VENV_BIN, "wandb"), "sweep", "--project", project, str(yaml_path)],
                          env=env, cwd=str(cwd), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    found = re.search(r"wandb agent (\S+)", done.stdout + done.stderr)
    assert done.returncode == 0 and found, done.stdout + done.stderr
    return found.group(1)


READ_BACK = """
import json, sys, wandb
sweep = wandb.Api().sweep(sys.argv[1])
print(json.dumps([{"id": r.id, "state": r.state, "config": dict(r.config),
                   "summary": {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}}
                  for r in sweep.runs]))
"""


def read_back(path: str, env: dict, cwd) -> list[dict]:
    """The sweep's runs as ``wandb.Api()`` reads them (in a process of its own, so this one's
    wandb keeps no URL or key of the test's server)."""
    done = subprocess.run([sys.executable, "-c", READ_BACK, path], env=env, cwd=str(cwd), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def create_sweep(server: dict, config: dict, project: str = "p", entity: str = "local") -> str:
    """A sweep made straight through the server's GraphQL (what ``wandb sweep`` sends, less
    the client's start-up seconds); returns ENTITY/PROJECT/ID."""
    query = ("mutation($config: String, $projectName: String, $entityName: String) {"
             " upsertSweep(input: {config: $config, projectName: $projectName, entityName: $entityName})"
             " { sweep { name } } }")
    body = {"query": query, "variables": {"config": json.dumps(config), "projectName": project, "entityName": entity}}
    auth = "Basic " + base64.b64encode(f"api:{server['key']}".encode()).decode()
    req = urllib.request.Request(server["url"] + "/graphql", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": auth})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert not answer.get("errors"), answer
    return f"{entity}/{project}/{answer['data']['upsertSweep']['sweep']['name']}"


def grid(values, metric: str = "loss") -> dict:
    return {"method": "grid", "metric": {"name": metric, "goal": "minimize"}, "parameters": {"x": {"values": list(values)}}}


def table_rows(stdout: str) -> list[dict]:
    """The final table's rows (after its ``-  ----`` rule) as {run, agent, state}."""
    lines = stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"^-  -{4,}", line)]
    assert rules, f"no table in:\n{stdout}"
    rows = []
    for line in lines[rules[-1] + 1:]:
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            break
        rows.append({"run": parts[1], "agent": parts[2], "state": parts[3]})
    return rows


def wait_for_files(folder, n: int, timeout: float, proc=None) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(os.listdir(folder))
        if len(found) >= n:
            return found
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{n} runs did not start in {timeout}s: {sorted(os.listdir(folder))}")


def run_in_pty(args: list[str], env: dict, cwd, timeout: float, rows: int = 24, cols: int = 100) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal of ``rows`` × ``cols``;
    returns (exit code, everything it wrote, escape codes included)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([*CLI, *args], env={**env, "TERM": "xterm"}, cwd=str(cwd), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"sweep-magic {' '.join(args)} ran past {timeout}s under a pty") from None
    finally:
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")
