"""What every benchmark shares: the run's sandbox, the embedded server, the trial function,
plain ``wandb.agent`` processes, statistics and process hygiene.

The sandbox (``Bench``) puts everything of one ``python -m benchmarks`` run in one temp
folder: ``SWEEP_MAGIC_HOME`` (server database, session folders, the sweep_magic agents'
WANDB_DIR), the plain agents' WANDB_DIRs, the trial timestamp files.  Every process the run
starts (agents, workers, wandb-core sidecars, kernels) inherits the ``SWEEP_MAGIC_BENCH`` marker
in its environment, which is how ``leftovers()`` finds anything that outlived its benchmark.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

from sweep_magic._testing import kill_group, sidecars_of  # noqa: F401  (kill_group: re-exported)
from sweep_magic.protocol.env import LOCAL_DEFAULTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VENV_BIN = os.path.dirname(sys.executable)
MARKER = "SWEEP_MAGIC_BENCH"

# The same for every variant: no system sampling, no machine info, no pip freeze per run,
# no telemetry, no console spam (docs/protocol.md §5).
QUIET = {**LOCAL_DEFAULTS, "WANDB_SILENT": "true"}  # what sweep_magic's own local workers get, and quiet
# The kernel's (here: our) wandb state that must not reach an agent (docs/protocol.md §6).
STALE = ("WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_ENTITY",
         "WANDB_PROJECT", "WANDB_RESUME", "WANDB_DIR", "WANDB_RUN_STORAGE_ID")

# One trial function for every variant.  Plain agents run it from agent.py; sweep_magic gets the
# very same source exec'd into a module that is not importable, so cloudpickle ships it by value.
# Every parameter comes from the sweep config; the function appends one JSON line per run to
# config["times"]: pid, run id, function entry, wandb.init return, work end, function exit.
TRIAL_SRC = '''
import json, os, time

def trial():
    import wandb
    enter = time.time()
    with wandb.init() as run:
        inited = time.time()
        cfg = dict(run.config)
        kind = cfg.get("kind", "sleep")
        logged = 0
        if kind == "sleep":
            time.sleep(float(cfg["seconds"]))
        elif kind == "matmul":
            import numpy as np
            rng = np.random.default_rng(int(cfg.get("x", 0)))
            a = rng.random((int(cfg["n"]), int(cfg["n"])))
            for _ in range(int(cfg["reps"])):
                a = a @ a
                a /= np.abs(a).max()
        elif kind == "flood":
            # cfg["rate"] run.log calls a second, paced in 10 ms slices, for cfg["seconds"].
            per_slice = max(1, int(cfg["rate"]) // 100)
            end = time.time() + float(cfg["seconds"])
            next_slice = time.time()
            while time.time() < end:
                for _ in range(per_slice):
                    run.log({"loss": 1.0 / (logged + 1), "acc": logged % 97})
                    logged += 1
                next_slice += 0.01
                pause = next_slice - time.time()
                if pause > 0:
                    time.sleep(pause)
        worked = time.time()
        run.summary["logged"] = logged
    leave = time.time()
    if cfg.get("times"):
        line = json.dumps({"pid": os.getpid(), "run": run.id, "x": cfg.get("x"), "enter": enter,
                           "inited": inited, "worked": worked, "exit": leave, "logged": logged})
        with open(cfg["times"], "a") as f:
            f.write(line + "\\n")
'''

AGENT_SRC = '''
import sys, wandb
from bench_trial import trial
wandb.agent(sys.argv[1], function=trial)
'''


def trial_function():
    """``trial`` from TRIAL_SRC in a fresh module namespace (pickled by value, not by reference)."""
    namespace = {"__name__": "sweep_magic_bench_trial"}
    exec(compile(TRIAL_SRC, "<bench_trial>", "exec"), namespace)
    return namespace["trial"]


class Bench:
    """One run's sandbox: temp folder, env, the embedded server, process bookkeeping."""

    def __init__(self, quick: bool, log=print):
        self.quick = quick
        self.log = log
        self.root = tempfile.mkdtemp(prefix="sweep_magic_bench_")
        self.token = secrets.token_hex(6)
        self._old_env = dict(os.environ)
        for name in STALE:
            os.environ.pop(name, None)
        os.environ.update(QUIET)
        os.environ["SWEEP_MAGIC_HOME"] = os.path.join(self.root, "home")
        os.environ[MARKER] = self.token
        self.scripts = os.path.join(self.root, "scripts")
        os.makedirs(self.scripts)
        with open(os.path.join(self.scripts, "bench_trial.py"), "w") as f:
            f.write(textwrap.dedent(TRIAL_SRC))
        self.agent_script = os.path.join(self.scripts, "agent.py")
        with open(self.agent_script, "w") as f:
            f.write(textwrap.dedent(AGENT_SRC))
        from sweep_magic.server import local_server

        # The process's shared server: `launch` recognises local sweeps through it.
        self.server = local_server()
        self._counter = 0

    # -- sweeps ---------------------------------------------------------------------------
    def sweep(self, name: str, points: int, **constants) -> tuple[str, str]:
        """A fresh grid sweep of ``points`` runs; returns (sweep id, the runs' timestamp file)."""
        self._counter += 1
        times = os.path.join(self.root, f"{self._counter:02d}-{name}.jsonl")
        params = {"x": {"values": list(range(points))}, "times": {"value": times}}
        params.update({k: {"value": v} for k, v in constants.items()})
        sid = self.server.create_sweep({"method": "grid", "parameters": params}, project="bench")
        return sid, times

    def wandb_dir(self, name: str) -> str:
        path = os.path.join(self.root, "wandb", f"{self._counter:02d}-{name}")
        os.makedirs(path, exist_ok=True)
        self.server.add_wandb_dir(path)  # the server reads unreported (plain agent) runs from here
        return path

    def agent_env(self, wandb_dir: str) -> dict:
        """The environment of a plain agent: ours (already quiet and scrubbed) plus the server's."""
        env = {k: v for k, v in os.environ.items() if k not in STALE}
        env.update(QUIET)
        env.update(self.server.env())
        env["WANDB_DIR"] = wandb_dir
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")  # `python` is this interpreter
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.scripts, REPO, env.get("PYTHONPATH")]))
        return env

    # -- processes ------------------------------------------------------------------------
    def start_shell(self, command: str, env: dict, name: str) -> subprocess.Popen:
        """``bash -c command`` in a process group of its own (killable as a whole)."""
        log = open(os.path.join(self.root, f"{self._counter:02d}-{name}.log"), "wb")
        try:
            return subprocess.Popen(["bash", "-c", command], env=env, cwd=self.scripts, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def plain_agents(self, sweep_id: str, n: int, name: str) -> subprocess.Popen:
        """The W&B docs' recipe: N ``python agent.py`` started by a shell loop, then ``wait``."""
        wandb_dir = self.wandb_dir(name)
        command = f'for i in $(seq {n}); do python agent.py {sweep_id} & done; wait'
        proc = self.start_shell(command, self.agent_env(wandb_dir), name)
        proc.wandb_dir = wandb_dir
        return proc

    def log_tail(self, name: str, n: int = 2000) -> str:
        path = os.path.join(self.root, f"{self._counter:02d}-{name}.log")
        try:
            with open(path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> list[dict]:
        """Stop every session, kill what is left of ours, stop the server; returns the leftovers."""
        try:
            import sweep_magic

            sweep_magic.stop_all()
            from sweep_magic.agents import warm

            warm.shut_down()  # the zygote lives as long as its kernel: here, this run
        except Exception as err:  # keep cleaning
            self.log(f"stop_all failed: {err!r}")
        found = leftovers(self.token, grace=10.0)
        try:
            self.server.stop()
        except Exception:
            pass
        os.environ.clear()
        os.environ.update(self._old_env)
        return found


def wait_group(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait for ``proc``; on timeout kill its group and sidecars and return None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return None


def sidecars(pids: set[int]) -> list[psutil.Process]:
    """wandb-core processes started with ``--pid`` one of ``pids`` (their own session, not our group)."""
    return sidecars_of(*pids)


def marked(token: str) -> list[psutil.Process]:
    """Every live process (not us) whose environment carries this run's marker."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def leftovers(token: str, grace: float) -> list[dict]:
    """Processes of this run still alive after ``grace`` seconds (wandb-core exits ~1.5 s after
    its owner); they are killed and returned as ``{pid, cmdline}``."""
    deadline = time.monotonic() + grace
    procs = marked(token)
    while procs and time.monotonic() < deadline:
        time.sleep(0.5)
        procs = marked(token)
    out = []
    for proc in procs:
        try:
            out.append({"pid": proc.pid, "cmdline": " ".join(proc.cmdline())[:200]})
            proc.kill()
        except psutil.Error:
            pass
    return out


def loopback_only(module: str, args: list[str], timeout: float, env: dict | None = None) -> dict:
    """``python -m module args --out FILE`` in a network namespace with only ``lo`` (up): Ray binds
    every address it sees otherwise.  Returns the JSON it wrote to FILE, or ``{"error": ...}``."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from ray_helpers import only_loopback

    prefix = []
    if not only_loopback():  # already inside one (the Ray tests' CI job): no second namespace
        if not shutil.which("unshare"):
            return {"error": "needs `unshare -n` (root) to keep Ray on loopback"}
        prefix = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    folder = tempfile.mkdtemp(prefix="sm-netns-")
    out = os.path.join(folder, "result.json")
    try:
        # On a timeout only the interpreter is killed; Ray's processes carry the run's marker
        # and Bench.close() finds them.
        proc = subprocess.run([*prefix, sys.executable, "-m", module, *args, "--out", out], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        with open(out) as f:
            return json.load(f)
    except subprocess.TimeoutExpired as err:
        return {"error": f"timed out after {timeout:.0f} s: {str(err.stdout or '')[-1500:]}"}
    except (OSError, ValueError):
        return {"error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

def read_times(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def gaps(rows: list[dict], start_key: str = "enter", end_key: str = "exit") -> list[float]:
    """Per process: each run's ``start_key`` minus the previous run's ``end_key`` (same pid)."""
    by_pid: dict[int, list[dict]] = {}
    for row in rows:
        by_pid.setdefault(row["pid"], []).append(row)
    out = []
    for runs in by_pid.values():
        runs.sort(key=lambda r: r["enter"])
        out += [b[start_key] - a[end_key] for a, b in zip(runs, runs[1:])]
    return out


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rnd(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def machine() -> dict:
    import platform

    import wandb

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        import sweeps

        sweeps_version = getattr(sweeps, "__version__", None)
    except Exception:
        sweeps_version = None
    if sweeps_version is None:
        try:
            from importlib.metadata import version

            sweeps_version = version("sweeps")
        except Exception:
            pass
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "wandb": wandb.__version__,
        "sweeps": sweeps_version,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in load] if load else None,
    }
