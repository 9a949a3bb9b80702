"""``%%sweep_parallel`` in a real IPython ``InteractiveShell``: parsing, help, and every bad input.

Each bad input must give a one-line ``UsageError`` and start nothing: no session,
no child process (the conftest orphan check covers leftovers; ``nothing_started``
checks that nothing was even spawned).
"""

from __future__ import annotations

import os

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from shells import magic_shell
from traitlets.config import Config

from sweep_magic import api, devices, payload
from sweep_magic.magic import SweepMagics


@pytest.fixture(scope="module")
def ip():
    with magic_shell() as shell:
        yield shell


@pytest.fixture
def nothing_started():
    """Asserts, after the test, that no session and no child process came into being."""
    before_sessions = len(api.sessions())
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    assert len(api.sessions()) == before_sessions
    # The sidecar wandb.Api() starts for this process (to ask W&B about the sweep) is not a worker.
    new = [p for p in me.children(recursive=True) if p.pid not in before and not _own_sidecar(p)]
    assert new == []


def _own_sidecar(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return True  # already gone
    return bool(cmd) and "wandb-core" in os.path.basename(cmd[0]) and str(os.getpid()) in cmd


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No W&B credentials anywhere: no env key, an empty netrc."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    import wandb

    wandb.teardown()  # forget a login (and base URL) an earlier test left in this process's wandb
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path / "home"))


def usage_error(ip, cell: str) -> str:
    with pytest.raises(UsageError) as info:
        ip.run_cell(cell)
    message = str(info.value)
    assert "\n" not in message, "a UsageError is one line"
    return message


# --- parsing -----------------------------------------------------------------------------
def parse(line: str):
    return SweepMagics.sweep_parallel.parser.parse_argstring(line)


def test_parse_full_line():
    args = parse("ent/proj/abc --gpus 0,1 --agents-per-gpu 2 --count 10 --project p --entity e --no-widget")
    assert args.sweep_id == "ent/proj/abc"
    assert args.gpus == "0,1" and args.agents_per_gpu == 2 and args.count == 10
    assert (args.project, args.entity, args.no_widget, args.wait) == ("p", "e", True, None)
    assert parse("x --wait").wait is True and parse("x --no-wait").wait is False
    assert parse("--config cfg --cpus 2 -f train").config == "cfg"


def test_gpus_words_pass_through():
    # The magic passes the text on; devices.plan is the one parser of GPU lists.
    assert parse("x --gpus all").gpus == "all" and parse("x --gpus 0,1").gpus == "0,1"


def test_help_has_options_and_examples(ip, capsys):
    ip.run_cell("%sweep_parallel?")
    out = capsys.readouterr().out
    for word in ("--agents-per-gpu", "--gpus", "--wait", "--no-widget", "Examples", "--config"):
        assert word in out


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("%%sweep_parallel abc --cpus 1\nx = 1\n", "defines no function"),
        ("%%sweep_parallel abc --cpus 1\ndef a():\n    pass\ndef b():\n    pass\n", "defines a, b: say which"),
        ("%%sweep_parallel abc --cpus 1\ndef train(lr):\n    pass\n", "required arguments (lr)"),
        ("%%sweep_parallel abc --cpus 0\ndef train():\n    pass\n", "argument --cpus: expected a whole number ≥ 1, got 0"),
        ("%%sweep_parallel abc --count 0\ndef train():\n    pass\n", "argument --count: expected a whole number ≥ 1, got 0"),
        ("%%sweep_parallel abc --count x\ndef train():\n    pass\n", "expected a whole number"),
        ("%%sweep_parallel abc --gpus zero\ndef train():\n    pass\n", "GPU indices like '0,1'"),
        ("%%sweep_parallel --cpus 1\ndef train():\n    pass\n", "give a sweep id"),
        ("%%sweep_parallel abc --config cfg\ndef train():\n    pass\n", "not both"),
        ("%%sweep_parallel --config nowhere.yaml\ndef train():\n    pass\n", "nor YAML file"),
        ("%%sweep_parallel abc --cpus 1 --gpus 0\ndef train():\n    pass\n", "not both"),
        ("%%sweep_parallel abc\ndef train(:\n", "does not parse"),
        ("%%sweep_parallel abc\nasync def train():\n    pass\n", "async"),
        ("%sweep_parallel abc --cpus 1", "'abc'"),  # no function: a program sweep, and abc is no sweep
        ("%sweep_parallel abc --function missing", "no function named 'missing'"),
        ("%sweep_stop s999", "session"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(ip, nothing_started, cell, expected):
    assert expected in usage_error(ip, cell)


def test_unpicklable_global_is_named(ip, nothing_started):
    # The lock hides behind a helper from an earlier cell: the message names the lock itself.
    ip.run_cell("import threading\nlock = threading.Lock()\ndef helper():\n    return lock")
    message = usage_error(ip, "%%sweep_parallel abc --cpus 1\ndef train():\n    helper()\n")
    assert "train → helper uses `lock` (a lock), which cannot be pickled" in message


def test_unpicklable_closure_is_named(ip, nothing_started):
    ip.run_cell("import threading\ndef make():\n    conn = threading.Lock()\n    def run():\n        return conn\n    return run\nfn = make()")
    message = usage_error(ip, "%sweep_parallel abc --function fn --cpus 1")
    assert "`conn`" in message


def test_huge_pickle_names_biggest_globals(ip, nothing_started, monkeypatch):
    monkeypatch.setattr(payload, "MAX_PICKLE_BYTES", 1_000_000)  # the limit is a setting; 50 MB is slow to build
    message = usage_error(
        ip,
        "%%sweep_parallel abc --cpus 1\n"
        "dataset = b'x' * 3_000_000\n"
        "small = list(range(10))\n"
        "def train():\n"
        "    return len(dataset) + len(small)\n",
    )
    assert "`dataset` (3 MB)" in message and "small" not in message and "limit 1 MB" in message


def test_gpus_that_are_not_there(ip, nothing_started):
    missing = len(devices.gpu_inventory()) + 5
    message = usage_error(ip, f"%%sweep_parallel abc --gpus {missing}\ndef train():\n    pass\n")
    assert "gpu" in message.lower()


@pytest.mark.skipif(bool(devices.gpu_inventory()), reason="this machine has GPUs")
def test_gpus_on_a_machine_without_gpus(ip, nothing_started):
    message = usage_error(ip, "%%sweep_parallel abc --gpus all\ndef train():\n    pass\n")
    assert "gpu" in message.lower()


def test_cloud_sweep_without_login(ip, nothing_started, no_login):
    ip.user_ns["sid"] = "ent/proj/cloud123"
    message = usage_error(ip, "%%sweep_parallel {sid} --cpus 1\ndef train():\n    pass\n")
    # {sid} was expanded by IPython before the magic saw the line.
    assert "'ent/proj/cloud123' is not a local sweep and there is no W&B login" in message


def test_dollar_expansion_and_line_magic(ip, nothing_started, no_login):
    ip.user_ns["sid"] = "proj/dollar1"
    ip.run_cell("def train():\n    pass")
    message = usage_error(ip, "%sweep_parallel $sid --function train --cpus 1")
    assert "'proj/dollar1'" in message


def test_unknown_sweep_with_login(ip, nothing_started, no_login, monkeypatch):
    """A login that works (the embedded server posing as a self-hosted W&B), and a sweep it lacks."""
    from sweep_magic.server import local_server

    server = local_server()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", server.api_key)
    message = usage_error(ip, "%%sweep_parallel someone/proj/nope404 --cpus 1\ndef train():\n    pass\n")
    assert "nope404" in message and "not found" in message


def test_status_and_stop(ip, capsys):
    ip.run_cell("%sweep_status")
    ip.run_cell("%sweep_stop")
    out = capsys.readouterr().out
    found = api.sessions()  # other tests in this process may have left finished sessions
    if not found:
        assert "no sweep sessions yet" in out and "no running sessions" in out
    else:
        assert all(f"session {s.id} ·" in out for s in found)
        assert "no running sessions" in out or "stopped " in out


def test_unload_removes_the_magics():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell(config=config)
    shell.run_line_magic("load_ext", "sweep_magic")
    assert "sweep_parallel" in shell.magics_manager.magics["cell"]
    shell.run_line_magic("unload_ext", "sweep_magic")
    assert "sweep_parallel" not in shell.magics_manager.magics["cell"]
    assert "sweep_status" not in shell.magics_manager.magics["line"]


def test_panel_needs_a_notebook(ip, nothing_started):
    assert "the panel needs a notebook" in usage_error(ip, "%sweep_parallel")


def test_config_from_yaml_file(tmp_path):
    from sweep_magic.magic import _load_config

    path = tmp_path / "sweep.yaml"
    path.write_text("method: grid\nparameters:\n  x:\n    values: [1, 2]\n")
    assert _load_config(str(path), {}) == {"method": "grid", "parameters": {"x": {"values": [1, 2]}}}
    path.write_text("- not a mapping\n")
    with pytest.raises(UsageError, match="not a mapping"):
        _load_config(str(path), {})
    with pytest.raises(UsageError, match="expected a dict"):
        _load_config("cfg", {"cfg": [1]})


def test_cell_with_config_runs_a_local_sweep(ip, tmp_path, monkeypatch, capsys):
    """The whole path from a cell: --config makes the local sweep, --wait blocks, text shows it."""
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    ip.user_ns["cfg"] = {"method": "grid", "metric": {"name": "loss", "goal": "maximize"},
                         "parameters": {"x": {"values": [1, 2]}}}
    ip.run_cell(
        "%%sweep_parallel --config cfg --cpus 1 --wait --project magic-e2e\n"
        "import wandb\n"
        "scale = 10\n"
        "def train():\n"
        "    with wandb.init() as run:\n"
        "        run.log({'loss': run.config.x * scale})\n"
    )
    session = api.sessions()[-1]
    assert session.done and session.local
    results = session.results()
    assert sorted(r["summary"]["loss"] for r in results) == [10, 20]
    assert session.snapshot().best_run().summary["loss"] == 20  # goal: maximize
    out = capsys.readouterr().out
    assert "[agent 0 · cpu" in out and "2 runs done" in out
    assert os.path.isdir(results[0]["dir"])


def test_config_with_a_bad_function_makes_no_sweep(ip, nothing_started, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    from sweep_magic.server import local_server

    ip.user_ns["cfg"] = {"method": "grid", "project": "nosweep", "parameters": {"x": {"values": [1]}}}
    store = local_server().controller.store  # internal, read only: no public listing of sweeps
    before = store.sweep_ids()
    message = usage_error(ip, "%%sweep_parallel --config cfg --cpus 1\ndef train(lr):\n    pass\n")
    assert "required arguments" in message
    assert store.sweep_ids() == before
