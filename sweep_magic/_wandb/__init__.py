"""The wandb adapter: the one place that knows wandb's private names, behind verbs.

Everything else in sweep_magic uses wandb's public API or these verbs; a test
(tests/unit/test_layers.py) keeps private names from leaking elsewhere.

    surface  the touch points and ``check()`` (required / live / best-effort)
    agent    pyagent: ``hook_agent`` callbacks; ``run_statuses``, ``give_back_queued``,
             ``request_exit``, ``patch_sleep``, ``set_heartbeat``, ``disable_flapping``
    run      Run: ``hook_run`` (live detail) or ``hook_run_public``; ``run_dir``, ``first_step``
    core     wandb-core: ``core_processes_of``, ``on_core_started``; ``AGENT_MODULES`` and
             ``RUN_MODULES``, what to import before forking an agent or a run child
    login    the saved login: ``saved_base_url``, ``saved_api_key``

Importing this package does not import wandb (~0.7 s): the kernel imports it for the core
finder; each verb imports what it needs.
"""

from sweep_magic._wandb.agent import (
    AgentCallbacks,
    disable_flapping,
    give_back_queued,
    hook_agent,
    patch_sleep,
    request_exit,
    run_statuses,
    set_heartbeat,
)
from sweep_magic._wandb.core import CORE_BASENAME, core_processes_of, on_core_started
from sweep_magic._wandb.login import SavedLogin, saved_api_key, saved_base_url
from sweep_magic._wandb.run import first_step, hook_run, hook_run_public, run_dir
from sweep_magic._wandb.surface import (
    AGENT_MODULES,
    BEST_EFFORT,
    LIVE,
    POINTS,
    REQUIRED,
    RUN_MODULES,
    TESTED,
    Surface,
    check,
)

__all__ = [
    "AgentCallbacks", "disable_flapping", "give_back_queued", "hook_agent", "patch_sleep", "request_exit",
    "run_statuses", "set_heartbeat", "CORE_BASENAME", "core_processes_of", "on_core_started", "SavedLogin",
    "saved_api_key", "saved_base_url", "first_step", "hook_run", "hook_run_public", "run_dir", "BEST_EFFORT",
    "LIVE", "POINTS", "REQUIRED", "TESTED", "Surface", "check", "AGENT_MODULES", "RUN_MODULES",
]  # fmt: skip
