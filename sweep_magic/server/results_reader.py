"""Results of runs nobody reported: find the offline run's ``.wandb`` file and read it.

Used for ``wandb agent`` CLI runs and plain ``wandb.agent`` workers, where sweep_magic
cannot hook the run.  Reading goes through wandb's own reader (``wandb-core leet inspect
--json``, the program behind ``wandb leet inspect``): the transaction log format is
wandb's business, not ours.  We call the wandb-core binary directly because the Python
``wandb`` CLI would pay ~0.7 s of imports per run; the binary answers in ~30 ms.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class RunFileResult:
    path: str
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None  # None: no exit record (the process died mid-run)

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "crashed"
        return "finished" if self.exit_code == 0 else "failed"


def find_run_file(run_id: str, dirs: list[str]) -> str | None:
    """The newest ``run-<id>.wandb`` under ``<dir>/wandb/*-<id>/`` (or ``<dir>/*-<id>/``)."""
    found: list[str] = []
    for base in dirs:
        if not base:
            continue
        root = glob.escape(base)  # a user's folder name may contain glob characters
        found += glob.glob(os.path.join(root, "wandb", f"*-{run_id}", f"run-{run_id}.wandb"))
        found += glob.glob(os.path.join(root, f"*-{run_id}", f"run-{run_id}.wandb"))
    if not found:
        return None
    return max(found, key=lambda p: os.stat(p).st_mtime)


def _core_path() -> str:
    from wandb.util import get_core_path  # imported late: importing wandb costs ~0.7 s

    return get_core_path()


def read_run_file(path: str, timeout: float = 30.0) -> RunFileResult:
    """History rows (in order), merged summary and exit code of one ``.wandb`` file."""
    path = os.path.abspath(path)
    wandb_dir = os.path.dirname(os.path.dirname(path))
    cmd = [_core_path(), "leet", "inspect", "--no-observability", "--json", "--run-file", path, wandb_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"wandb-core leet inspect failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    result = RunFileResult(path=path)
    for line in proc.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        kind = rec.get("type")
        if kind == "history":
            result.history.append(rec["history"].get("item", {}))
        elif kind == "summary":
            update = rec["summary"].get("update", {})
            result.summary.update({k: v for k, v in update.items() if not k.startswith("_wandb")})
        elif kind == "exit":
            result.exit_code = int(rec["exit"].get("exit_code", 0))
    return result


def lookup(run_id: str, dirs: list[str], *, live: bool = False) -> RunFileResult | None:
    """Find and read a run's file; ``None`` when there is none (or it cannot be read).

    ``live``: the run is still writing; a file with no complete block yet is normal then."""
    path = find_run_file(run_id, dirs)
    if path is None:
        return None
    try:
        return read_run_file(path)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        log.log(logging.DEBUG if live else logging.WARNING, "cannot read run file %s: %s", path, err)
        return None
