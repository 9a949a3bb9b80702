"""A real ipykernel: notebooks executed by nbclient, and kernels driven by jupyter_client.

(a) the done-when: a notebook with an 8-point local grid and ``%%sweep_parallel
    --cpus 2 --wait`` ends with 8 finished runs of distinct configs;
(b) the kernel SIGKILLed mid-sweep takes every worker and its wandb-core with it;
(c) two sessions in one kernel at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import time

import nbformat
import psutil
import pytest
from kernel_helpers import Kernel
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID = """config = {{"method": "grid", "metric": {{"name": "loss", "goal": "minimize"}},
          "parameters": {{"a": {{"values": {a}}}, "b": {{"values": {b}}}}}}}
{var} = sweep_magic.local_sweep(config, project="{project}")"""

TRAIN = """
import time
import wandb

def train():
    with wandb.init() as run:
        time.sleep({seconds})
        run.log({{"loss": run.config.a * run.config.b}})
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    # The kernel inherits this: its server database and session folders stay in tmp_path.
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    monkeypatch.delenv("SWEEP_MAGIC_WAIT", raising=False)
    # The kernel runs in tmp_path: make this checkout importable there even without `pip install -e`.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    return tmp_path


def test_nbclient_notebook_runs_an_8_point_grid(home):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("%load_ext sweep_magic\nimport json\nimport sweep_magic\nfrom sweep_magic.faces import kernel as _display"),
        code(GRID.format(a=[1, 2, 3, 4], b=[1, 10], var="sid", project="kernel-a")),
        code("%%sweep_parallel {sid} --cpus 2 --wait" + TRAIN.format(seconds=0.05)),
        code("print(json.dumps({'headless': _display.headless(),\n"
             "                  'results': sweep_magic.sessions()[-1].results()}))"),
        # Headless, so the magic waits even without --wait: the next cell finds the session done.
        code(GRID.format(a=[7], b=[1], var="sid2", project="kernel-a2")),
        code("%%sweep_parallel {sid2} --cpus 1" + TRAIN.format(seconds=0.05)),
        code("print(sweep_magic.sessions()[-1].done, len(sweep_magic.sessions()[-1].results()))"),
    ])
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(home)}}).execute()

    assert nb.cells[-1].outputs[0]["text"].strip() == "True 1"
    out = json.loads(nb.cells[3].outputs[0]["text"])
    results = out["results"]
    assert out["headless"] is True  # nbclient sends allow_stdin=False
    assert len(results) == 8 and {r["state"] for r in results} == {"finished"}
    configs = {(r["config"]["a"], r["config"]["b"]) for r in results}
    assert configs == {(a, b) for a in (1, 2, 3, 4) for b in (1, 10)}
    # The text face ended in the launching cell, with the final table (best first).
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[2].outputs)
    assert "8 runs done" in shown and "best loss=1 " in shown
    table = shown.split("\n\n")[-1].splitlines()
    assert table[0].split()[:5] == ["#", "run", "agent", "state", "loss"] and table[2].split()[4] == "1"


def test_headless_notebook_fails_when_every_run_failed(home):
    """nbclient (so papermill and CI) gets a cell error of one line, not a quiet pass."""
    from nbclient.exceptions import CellExecutionError

    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("%load_ext sweep_magic\nimport sweep_magic"),
        code(GRID.format(a=[1, 2], b=[1], var="sid", project="kernel-fail")),
        code("%%sweep_parallel {sid} --cpus 1 --wait\n"
             "def train():\n"
             "    import wandb\n"
             "    with wandb.init():\n"
             "        raise ValueError('the data folder is empty')\n"),
        code("print('never reached')"),
    ])
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(home)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    # IPython shows a UsageError as one stderr line (no traceback); the reply is an error.
    assert info.value.ename == "UsageError"
    lines = [o["text"] for o in nb.cells[2].outputs if o.get("name") == "stderr"]
    assert len(lines) == 1 and lines[0].startswith("UsageError: ") and lines[0].count("\n") == 1
    message = lines[0].removeprefix("UsageError: ").strip()
    assert message.startswith("2 of 2 runs failed and none finished; first (")
    assert message.endswith("ValueError: the data folder is empty")
    assert "never reached" not in str(info.value) and not nb.cells[3].get("outputs")


@pytest.fixture
def kernel(home):
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


def _cores_of(pids: set[int]) -> set[int]:
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and "wandb-core" in os.path.basename(cmd[0]) and "--pid" in cmd:
            if cmd[cmd.index("--pid") + 1].isdigit() and int(cmd[cmd.index("--pid") + 1]) in pids:
                found.add(proc.info["pid"])
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


WAIT_RUNNING = """
s = sweep_magic.sessions()[-1]
deadline = time.time() + 90
while time.time() < deadline and not all(a.current_run for a in s.agents()):
    time.sleep(0.3)
print(json.dumps({"kernel": os.getpid(), "workers": [a.pid for a in s.agents()],
                  "running": [a.current_run for a in s.agents()]}))
"""


def test_ctrl_c_while_waiting_then_killed_kernel_takes_its_workers_along(kernel):
    kernel.run("%load_ext sweep_magic\nimport json, os, time\nimport sweep_magic")
    kernel.run(GRID.format(a=[1, 2, 3], b=[1], var="sid", project="kernel-b"))

    # Ctrl-C (a kernel interrupt) while --wait blocks: the agents stop, the cell ends normally
    # and the live text (updated from the refresher thread) ends with the table.
    msg_id = kernel.kc.execute("%%sweep_parallel {sid} --cpus 1 --wait --no-widget" + TRAIN.format(seconds=120))
    shown, printed, interrupted = "", "", False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        msg = kernel.kc.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        content = msg["content"]
        if msg["msg_type"] in ("display_data", "update_display_data"):
            shown = content["data"].get("text/plain", "")
            if " started " in shown and not interrupted:
                kernel.km.interrupt_kernel()
                interrupted = True
        elif msg["msg_type"] == "stream":
            printed += content["text"]
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            break
    reply = kernel.kc.get_shell_msg(timeout=10)
    assert interrupted and reply["content"]["status"] == "ok", (shown, printed)
    assert "interrupted: stopped s1" in printed
    assert "session s1 · stopped" in shown and "#  run" in shown
    state = kernel.run("print(sweep_magic.sessions()[-1].done, [a.state for a in sweep_magic.sessions()[-1].agents()])")
    assert state.startswith("True") and "running" not in state

    started = time.monotonic()
    kernel.run("%%sweep_parallel {sid} --cpus 2 --no-widget" + TRAIN.format(seconds=120))
    assert time.monotonic() - started < 30  # not headless: the cell returned without waiting
    info = json.loads(kernel.run(WAIT_RUNNING).strip().splitlines()[-1])
    workers = set(info["workers"])
    assert len(workers) == 2 and all(info["running"]), info
    deadline = time.monotonic() + 20  # each worker's wandb-core is up once its run started
    while len(_cores_of(workers)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    doomed = workers | _cores_of(workers)
    assert len(doomed) >= 4
    # Everything the kernel started: its zygote (the warm start server) and whatever else.
    doomed |= {p.pid for p in psutil.Process(info["kernel"]).children(recursive=True)}
    zygotes = [p for p in psutil.Process(info["kernel"]).children() if "sweep_magic.worker.zygote" in p.cmdline()]
    assert len(zygotes) == 1, "%load_ext started the warm start server"
    assert {psutil.Process(w).ppid() for w in workers} == {zygotes[0].pid}, "the agents were forked warm"

    os.kill(info["kernel"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(doomed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(doomed), [psutil.Process(p).cmdline()[:3] for p in _alive(doomed)]


def test_two_sessions_at_once_in_one_kernel(kernel):
    kernel.run("%load_ext sweep_magic\nimport json, os, time\nimport sweep_magic\nfrom sweep_magic.faces import kernel as _display")
    kernel.run(GRID.format(a=[1, 2, 3], b=[1], var="sid1", project="kernel-c1"))
    kernel.run(GRID.format(a=[4, 5, 6], b=[2], var="sid2", project="kernel-c2"))
    kernel.run("%%sweep_parallel {sid1} --cpus 1" + TRAIN.format(seconds=0.5))
    kernel.run("%%sweep_parallel $sid2 --cpus 1" + TRAIN.format(seconds=0.5))
    out = kernel.run(
        "s1, s2 = sweep_magic.sessions()[-2:]\n"
        "ok = [s1.wait(180), s2.wait(180)]\n"
        "spans = [(min(r.started_at for r in s.snapshot().runs), max(r.ended_at for r in s.snapshot().runs))\n"
        "         for s in (s1, s2)]\n"
        "print(json.dumps({'ok': ok, 'ids': [s1.id, s2.id], 'spans': spans, 'headless': _display.headless(),\n"
        "                  'results': [s1.results(), s2.results()]}))",
        timeout=240,
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert info["ok"] == [True, True] and info["headless"] is False
    assert info["ids"][0] != info["ids"][1]
    xs = [sorted(r["config"]["a"] for r in results) for results in info["results"]]
    assert xs == [[1, 2, 3], [4, 5, 6]]
    assert all(r["state"] == "finished" for results in info["results"] for r in results)
    (a0, a1), (b0, b1) = info["spans"]
    assert a0 < b1 and b0 < a1, "the two sessions ran at the same time"
    status = kernel.run("%sweep_status")
    assert info["ids"][0] in status and info["ids"][1] in status and status.count("finished") >= 2


def test_a_program_sweep_from_the_magic(home):
    """A sweep with `program:` (as `wandb sweep sweep.yaml` makes) run from a notebook: the line
    magic with no function runs the program for each run, as `wandb agent` would."""
    (home / "train.py").write_text(
        "import argparse, wandb\n"
        "p = argparse.ArgumentParser(); p.add_argument('--lr', type=float); a = p.parse_args()\n"
        "with wandb.init() as run:\n"
        "    run.log({'loss': a.lr * 2})\n"
    )
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("%load_ext sweep_magic\nimport json, sys\nimport sweep_magic"),
        # ${interpreter} is `python` from PATH, as in `wandb agent`: this kernel's, here.
        code("config = {'method': 'grid', 'program': 'train.py', 'metric': {'name': 'loss', 'goal': 'minimize'},\n"
             "          'command': [sys.executable, '${program}', '${args}'],\n"
             "          'parameters': {'lr': {'values': [0.1, 0.2, 0.3]}}}\n"
             "sid = sweep_magic.local_sweep(config, project='kernel-program')"),
        code("%sweep_parallel {sid} --cpus 1 --wait --no-widget"),
        code("print(json.dumps(sweep_magic.sessions()[-1].results()))"),
    ])
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(home)}}).execute()
    results = json.loads(nb.cells[3].outputs[0]["text"])
    assert sorted(r["config"]["lr"] for r in results) == [0.1, 0.2, 0.3]
    assert {r["state"] for r in results} == {"finished"}
    assert sorted(r["summary"]["loss"] for r in results) == pytest.approx([0.2, 0.4, 0.6])
