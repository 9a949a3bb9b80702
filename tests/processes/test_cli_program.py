"""``sweep-magic agents`` on a program sweep (``program: train.py``, no ``--function``): each run
is the sweep's program, started as ``wandb agent`` starts it.

Kept apart from test_cli.py: it needs launch's program mode (``launch(None, sweep_id, ...)``),
which lands separately; until then the command says so in one line and exits 2.
"""

from __future__ import annotations

import textwrap

from cli_helpers import cli_env, read_back, run_cli, start_server, stop_server, table_rows, wandb_sweep

TRAIN = """
import wandb

with wandb.init() as run:
    run.log({"loss": (run.config.x - 2) ** 2})
"""


def test_program_sweep_from_the_terminal(tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent(TRAIN))
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent("""\
        program: train.py
        method: grid
        metric: {name: loss, goal: minimize}
        parameters:
          x: {values: [0, 1, 2, 3, 4, 5]}
        """))
    proc, server = start_server(tmp_path / "sweeps.sqlite3", cli_env(tmp_path), tmp_path)
    try:
        env = cli_env(tmp_path, server)
        path = wandb_sweep(tmp_path / "sweep.yaml", env, tmp_path)
        done = run_cli(["agents", path, "--cpus", "2"], env, tmp_path, timeout=300)
        assert done.returncode == 0, done
        rows = table_rows(done.stdout)
        assert len(rows) == 6 and {r["state"] for r in rows} == {"finished"}, done.stdout
        runs = read_back(path, env, tmp_path)
        assert len({r["id"] for r in runs}) == 6 and {r["state"] for r in runs} == {"finished"}, runs
        assert sorted(r["config"]["x"] for r in runs) == [0, 1, 2, 3, 4, 5]
        assert all(r["summary"]["loss"] == (r["config"]["x"] - 2) ** 2 for r in runs)
    finally:
        assert stop_server(proc) == 0
