"""The ``sweep-magic`` command, for real: a ``sweep-magic server`` process, sweeps made on it
with the real ``wandb sweep``, ``sweep-magic agents`` running real agents against it, Ctrl-C
as a real SIGINT, the terminal face under a real pseudo-terminal, and ``sweep-magic demo``.

The autouse ``no_orphans`` fixture (tests/conftest.py) checks after each test that no
process it started — the command, its agents, their wandb-cores — is left.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
import tomllib
from cli_helpers import (
    REPO,
    cli_env,
    create_sweep,
    grid,
    read_back,
    run_cli,
    run_in_pty,
    start_cli,
    start_server,
    stop_server,
    table_rows,
    wait_for_files,
    wandb_sweep,
    write_module,
)

from sweep_magic._testing import kill_group


@pytest.fixture(scope="module")
def sweep_server(tmp_path_factory):
    """One ``sweep-magic server`` for the module (made before each test's orphan check looks)."""
    folder = tmp_path_factory.mktemp("cli-server")
    proc, server = start_server(folder / "sweeps.sqlite3", cli_env(folder), folder)
    try:
        yield server
    finally:
        assert stop_server(proc) == 0


# --- the command line --------------------------------------------------------------------------
def test_console_scripts_are_declared():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["sweep-magic"] == "sweep_magic.cli:main"
    assert scripts["sweep-magic-server"] == "sweep_magic.server.__main__:main"
    from sweep_magic.cli import main
    from sweep_magic.server.__main__ import main as server_main

    assert callable(main) and callable(server_main)


def test_help_has_examples(tmp_path):
    for args in ([], ["agents"], ["server"], ["demo"]):
        done = run_cli([*args, "--help"], cli_env(tmp_path), tmp_path, timeout=60)
        assert done.returncode == 0 and "examples:" in done.stdout, done
    top = run_cli(["--help"], cli_env(tmp_path), tmp_path, timeout=60).stdout
    assert all(command in top for command in ("agents", "server", "demo"))


@pytest.mark.parametrize(
    "args, says",
    [
        (["agents", "local/p/x", "--cpus", "0", "--function", "mod:train"], "--cpus: expected a whole number"),
        (["agents", "local/p/nosuch", "--cpus", "1", "--function", "mod:train"], "not found"),
        (["agents", "local/p/x", "--cpus", "1", "--function", "nosuchmodule:train"], "no module 'nosuchmodule'"),
        (["agents", "local/p/x", "--cpus", "1", "--function", "mod:nosuch"], "mod has no 'nosuch'"),
        (["agents", "local/p/x", "--gpus", "0,1", "--cpus", "1", "--function", "mod:train"], "not both"),
        (["agents", "--cpus", "1"], "give the sweep"),
        (["agents", "local/p/x", "--cpus", "2", "--cpus-per-agent", "2", "--function", "mod:train"],
         "cpus_per_agent (--cpus-per-agent) is for Ray"),
        (["nosuch"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sweep_server, tmp_path, args, says):
    write_module(tmp_path)
    done = run_cli(args, cli_env(tmp_path, sweep_server), tmp_path, timeout=90)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep-magic") and says in lines[0], done.stderr
    assert not os.path.exists(os.path.join(os.environ["SWEEP_MAGIC_HOME"], "sessions"))  # nothing started


# --- agents against a `sweep-magic server`, the sweep made by `wandb sweep` ----------------------
def test_server_wandb_sweep_then_agents(sweep_server, tmp_path):
    write_module(tmp_path)
    env = cli_env(tmp_path, sweep_server)
    (tmp_path / "sweep.yaml").write_text(
        "method: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {values: [0, 1, 2, 3, 4, 5]}\n")
    path = wandb_sweep(tmp_path / "sweep.yaml", env, tmp_path)
    done = run_cli(["agents", path, "--cpus", "2", "--function", "mod:train"], env, tmp_path, timeout=240)
    assert done.returncode == 0, done
    rows = table_rows(done.stdout)
    assert len(rows) == 6 and {r["state"] for r in rows} == {"finished"}, done.stdout
    assert f"best loss=0 ({rows[0]['run']})" in done.stdout  # x=2, first in the table
    assert "\x1b" not in done.stdout  # a pipe gets plain lines
    assert re.search(r"run \w+ started", done.stdout) and re.search(r"run \w+ finished in", done.stdout)

    runs = read_back(path, env, tmp_path)  # the sweep as W&B's own client reads it from the server
    assert len({r["id"] for r in runs}) == 6 and {r["state"] for r in runs} == {"finished"}, runs
    assert sorted(r["config"]["x"] for r in runs) == [0, 1, 2, 3, 4, 5]
    assert {r["id"] for r in runs} == {r["run"] for r in rows}
    assert all(r["summary"]["loss"] == (r["config"]["x"] - 2) ** 2 for r in runs)


# --- Ctrl-C ------------------------------------------------------------------------------------
def test_ctrl_c_drains_then_exits_130(sweep_server, tmp_path):
    write_module(tmp_path)
    path = create_sweep(sweep_server, grid(range(6)))
    proc = start_cli(["agents", path, "--cpus", "2", "--function", "mod:slow"],
                     cli_env(tmp_path, sweep_server, SLOW_SECONDS=8), tmp_path)
    try:
        started = wait_for_files(tmp_path / "markers", 2, timeout=150, proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 130, (out, err)
    assert "draining" in err and "stopping now" not in err
    rows = table_rows(out)  # the two runs in progress finished; no third was taken
    assert [r["state"] for r in rows] == ["finished", "finished"], out
    assert sorted(os.listdir(tmp_path / "markers")) == started


def test_ctrl_c_twice_stops_now(sweep_server, tmp_path):
    write_module(tmp_path)
    path = create_sweep(sweep_server, grid(range(3)))
    proc = start_cli(["agents", path, "--cpus", "1", "--function", "mod:slow"],
                     cli_env(tmp_path, sweep_server, SLOW_SECONDS=300), tmp_path)
    try:
        wait_for_files(tmp_path / "markers", 1, timeout=150, proc=proc)
        proc.send_signal(signal.SIGINT)
        import time

        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # a 300 s run: only a stop-now ends this in time
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 130, (out, err)
    assert "draining" in err and "stopping now" in err
    assert [r["state"] for r in table_rows(out)] == ["killed"], out


# --- exit codes ----------------------------------------------------------------------------------
def test_every_run_fails_exit_1(sweep_server, tmp_path):
    write_module(tmp_path)
    path = create_sweep(sweep_server, grid(range(3)))
    done = run_cli(["agents", path, "--cpus", "1", "--function", "mod:fail"], cli_env(tmp_path, sweep_server),
                   tmp_path, timeout=240)
    assert done.returncode == 1, done
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep-magic: 3 of 3 runs failed and none finished") and "boom at x=" in last, done.stderr
    assert "Traceback" not in done.stderr
    assert {r["state"] for r in table_rows(done.stdout)} == {"failed"}


# --- the terminal face, and the demo ----------------------------------------------------------------
def test_demo_in_a_pipe_prints_plain_lines_and_the_table(tmp_path):
    done = run_cli(["demo"], cli_env(tmp_path), tmp_path, timeout=150)
    assert done.returncode == 0, done
    assert "\x1b" not in done.stdout + done.stderr
    rows = table_rows(done.stdout)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"finished"}, done.stdout
    assert len(re.findall(r"run \w+ finished in", done.stdout)) == 8  # appended, one line per event


def test_demo_in_a_terminal_redraws_in_place(tmp_path):
    rows, cols = 12, 90
    code, text = run_in_pty(["demo"], cli_env(tmp_path), tmp_path, timeout=150, rows=rows, cols=cols)
    assert code == 0, text
    frames = text.split("\x1b[J")
    ups = [int(n) for n in re.findall(r"\x1b\[(\d+)A", text)]
    assert len(frames) > 3 and ups and "\x1b[2K" in text, text[-3000:]
    assert max(ups) <= rows - 1  # the block never outgrows the window
    for frame in frames[:-1]:  # each redraw: at most rows - 1 lines, none wider than the window
        drawn = [line for line in frame.split("\x1b[2K")[1:]]
        assert len(drawn) <= rows - 1
        assert all(len(line.rstrip("\r\n")) < cols for line in drawn)
    final = frames[-1]
    assert "\x1b" not in final and len(table_rows(final.replace("\r\n", "\n"))) == 8, final


def test_only_a_sweep_magic_server_is_taken_for_one():
    """target.is_sweep_magic_server: the realm of our 401, asked without a key."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from sweep_magic.server import serve
    from sweep_magic.target import is_sweep_magic_server

    class Other(BaseHTTPRequestHandler):  # another server that wants a login
        def do_GET(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="other"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    other = HTTPServer(("127.0.0.1", 0), Other)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        with serve(db=os.path.join(os.environ["SWEEP_MAGIC_HOME"], "s.sqlite3")) as ours:
            assert is_sweep_magic_server(ours.url)
        assert not is_sweep_magic_server(ours.url)  # stopped: nothing answers
        assert not is_sweep_magic_server(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
        other.server_close()
