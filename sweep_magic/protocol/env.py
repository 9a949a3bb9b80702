"""The environment a worker process starts with.

Built by the supervisor (so wandb-core and every import in the child see it from
the first instruction) and checked again by the worker.  The kernel's wandb state
must not leak (docs/protocol.md §6): an inherited WANDB_SERVICE makes every worker
share, and die with, the kernel's wandb-core.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# Per-run and per-process wandb state a kernel may hold after touching wandb.
STALE = (
    "WANDB_SERVICE",
    "WANDB_RUN_ID",
    "WANDB_SWEEP_ID",
    "WANDB_SWEEP_PARAM_PATH",
    "WANDB_RUN_STORAGE_ID",
    "WANDB_RESUME",
    "WANDB_NAME",
    "WANDB_NOTES",
    "WANDB_TAGS",
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
    "WANDB_CONFIG_PATHS",
    "WANDB_NOTEBOOK_NAME",
    # pyagent's "disable flapping" switch makes it stop after the *first* failure (docs/protocol.md §2);
    # the worker disables the check by patching the class instead.
    "WANDB_AGENT_DISABLE_FLAPPING",
)

# For runs against the embedded server: offline runs on this machine need no system
# sampling, no telemetry, no pip freeze per run (each costs CPU on a shared machine).
LOCAL_DEFAULTS = {
    "WANDB__DISABLE_STATS": "true",
    "WANDB__DISABLE_MACHINE_INFO": "true",
    "WANDB__SAVE_REQUIREMENTS": "false",
    "WANDB_ERROR_REPORTING": "false",
}

# The kernel's sys.path, so a function pickled by reference (an importable module the
# notebook added to sys.path) can be found by the fresh interpreter too.
SYS_PATH_VAR = "SWEEP_MAGIC_SYS_PATH"


def fresh_process_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the kernel's env) as any process of ours starts with it: the kernel's wandb
    state removed, an inline matplotlib backend replaced, unbuffered output, and this very
    copy of sweep_magic importable."""
    env = {k: v for k, v in base.items() if k not in STALE}
    if env.get("MPLBACKEND", "").startswith("module://matplotlib_inline"):
        # The kernel's inline backend needs IPython, which a worker does not have.
        env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"  # user prints reach the log file (and its tail) at once
    # The worker runs `-m sweep_magic.worker`: when the package is not installed (a source
    # checkout on sys.path), point the fresh interpreter at this very copy.
    if not _installed():
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def child_env(base: Mapping[str, str], spec) -> dict[str, str]:
    """``base`` (the kernel's env) scrubbed and overlaid with the spec's env."""
    env = fresh_process_env(base)
    for name in spec.remove_env:
        env.pop(name, None)
    if spec.report_url:
        for name, value in LOCAL_DEFAULTS.items():
            env.setdefault(name, value)
    env[SYS_PATH_VAR] = os.pathsep.join(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))
    env.update({k: str(v) for k, v in spec.env.items()})
    for name in STALE:  # last: not even a spec that copied the kernel's WANDB_* may bring them back
        env.pop(name, None)
    return env


def _installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("sweep_magic")
        return True
    except metadata.PackageNotFoundError:
        return False


def scrub_own_env(spec) -> None:
    """The worker's second check: the same removals and overrides on ``os.environ``."""
    for name in spec.remove_env:
        os.environ.pop(name, None)
    os.environ.update({k: str(v) for k, v in spec.env.items()})
    for name in STALE:
        os.environ.pop(name, None)
