"""Where sweep_magic keeps its files: ``SWEEP_MAGIC_HOME``, by default
``~/.local/share/sweep_magic`` (the server's database, each session's logs and runs)."""

from __future__ import annotations

import os


def home() -> str:
    return os.environ.get("SWEEP_MAGIC_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "sweep_magic")
