"""The demo notebooks run headless from top to bottom, as `jupyter execute` would run them."""

from __future__ import annotations

import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

DEMOS = pathlib.Path(__file__).resolve().parents[2] / "demo_notebooks"


def test_quickstart_runs_headless_in_under_two_minutes(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))  # the kernel's server DB and runs go here
    # The kernel runs in tmp_path: make this checkout importable there even without `pip install -e`.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(DEMOS.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("SWEEP_MAGIC_WAIT", raising=False)
    nb = nbformat.read(DEMOS / "quickstart.ipynb", as_version=4)
    started = time.monotonic()
    NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.monotonic() - started
    assert elapsed < 150, f"quickstart took {elapsed:.0f}s"

    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert printed.count("finished ") == 8, printed
    assert "best:" in printed
    magic_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%sweep_parallel"))
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in magic_cell.outputs)
    assert "8 runs done" in shown and "[agent 1 · cpu" in shown
