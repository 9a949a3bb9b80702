"""pyagent (``wandb.agent``'s in-process agent): wrappers around its methods, and verbs on a
running Agent instead of attribute pokes.

``hook_agent`` wraps what the surface check found in place and calls plain callbacks; the
wrappers never change how pyagent calls the originals (arguments pass through untouched),
so a wrapper cannot break pyagent's own calls.  Threads: ``job_begin``/``job_end`` run on
pyagent's run thread (a new one per run), ``commands`` on its heartbeat thread, the rest
on the main thread.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweep_magic._wandb import surface as _surface

HOOKED = "__sweep_magic_hook__"
FLAPPING_OFF = 10**9  # pyagent stops after 3 failures in 60 s; for us a failing run is just a failed run

# pyagent's RunStatus values, as the plain words the verbs answer with.
_WORDS = {"QUEUED": "queued", "RUNNING": "running", "STOPPED": "stopped", "ERRORED": "errored", "DONE": "done"}


def _pyagent():
    return importlib.import_module(_surface.PYAGENT)


def _wrap(owner, name: str, make: Callable) -> None:
    """Replace ``owner.name`` by ``make(original)``; a second install replaces our first."""
    original = getattr(owner, name)
    original = getattr(original, "__wrapped__", original) if getattr(original, HOOKED, False) else original
    hooked = functools.wraps(original)(make(original))
    setattr(hooked, HOOKED, True)
    setattr(owner, name, hooked)


def _safely(callback, *args) -> Any:
    """A callback's failure is printed, never raised into pyagent's threads."""
    try:
        return callback(*args)
    except Exception:  # noqa: BLE001 - a callback's failure is printed, never taken into pyagent's loop
        import traceback

        traceback.print_exc()
        return None


@dataclass
class AgentCallbacks:
    """What the worker wants to hear from pyagent (every callback optional)."""

    created: Callable[[Any], None] | None = None  # (agent): _init ran, the agent's state exists
    registered: Callable[[str], None] | None = None  # (agent_id): CreateAgent answered
    job_begin: Callable[[Any, str, dict], None] | None = None  # (agent, run_id, {name: value})
    # (run_id, the server's whole run command: args as {name: {"value": v}}, program, ...)
    job_command: Callable[[str, dict], None] | None = None
    job_end: Callable[[Any, str], None] | None = None  # (agent, run_id): the function returned/raised
    commands: Callable[[list], list] | None = None  # heartbeat commands → the ones pyagent may act on
    exited: Callable[[Any], None] | None = None  # (agent): pyagent's _exit ran (exit command, Ctrl-C)


def hook_agent(cb: AgentCallbacks, found: _surface.Surface) -> None:
    """Wrap pyagent's Agent methods that ``found`` says fit; the ones that do not are the
    surface's named degradations (``found.degradations()``).  Required points are the
    caller's to check first (``found.refused``)."""
    agent_cls = _pyagent().Agent

    def _init(orig):
        def hooked(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            if cb.created:
                _safely(cb.created, self)
            return result

        return hooked

    def _register(orig):
        def hooked(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            agent_id = getattr(self, "_agent_id", None)
            if cb.registered and agent_id is not None:
                _safely(cb.registered, str(agent_id))
            return result

        return hooked

    def _run_job(orig):
        def hooked(self, job, *args, **kwargs):
            run_id = job.run_id
            config = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in (job.config or {}).items()}
            if cb.job_command:
                _safely(cb.job_command, run_id, dict(getattr(job, "command", None) or {}))
            if cb.job_begin:
                _safely(cb.job_begin, self, run_id, config)
            try:
                return orig(self, job, *args, **kwargs)
            finally:
                if cb.job_end:
                    _safely(cb.job_end, self, run_id)

        return hooked

    def _heartbeat_commands(orig):
        def hooked(self, *args, **kwargs):
            commands = orig(self, *args, **kwargs)
            if commands and cb.commands:
                kept = _safely(cb.commands, list(commands))
                return commands if kept is None else kept
            return commands

        return hooked

    def _exit(orig):
        def hooked(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            if cb.exited:
                _safely(cb.exited, self)
            return result

        return hooked

    _wrap(agent_cls, "_init", _init)
    _wrap(agent_cls, "_run_job", _run_job)
    if found.ok("agent.register"):
        _wrap(agent_cls, "_register", _register)
    if found.ok("agent.heartbeat_commands") and cb.commands:
        _wrap(agent_cls, "_heartbeat_commands", _heartbeat_commands)
    if found.ok("agent.exit"):
        _wrap(agent_cls, "_exit", _exit)


def disable_flapping(found: _surface.Surface) -> bool:
    """Turn off pyagent's "3 failures in 60 s" stop: a failing run is just a failed run."""
    if not found.ok("agent.flapping"):
        return False
    _pyagent().Agent.FLAPPING_MAX_FAILURES = FLAPPING_OFF
    return True


def set_heartbeat(seconds: float, found: _surface.Surface) -> bool:
    """pyagent's heartbeat period; False where it is not a class attribute (0.25: a literal 5)."""
    if not found.ok("agent.heartbeat_seconds"):
        return False
    _pyagent().Agent.HEARTBEAT_SLEEP_SECONDS = seconds
    return True


def patch_sleep(sleeper, found: _surface.Surface) -> bool:
    """Give pyagent ``sleeper`` as its ``time`` module (its sleeps become interruptible)."""
    if not found.ok("agent.time"):
        return False
    _pyagent().time = sleeper
    return True


def run_statuses(agent) -> dict[str, str]:
    """{run_id: "queued" | "running" | "stopped" | "errored" | "done"} (a copy)."""
    raw = getattr(agent, "_run_status", None) or {}
    return {run_id: _WORDS.get(str(status), str(status).lower()) for run_id, status in list(raw.items())}


def give_back_queued(agent) -> list[str]:
    """Mark the runs pyagent queued but has not started as stopped: they leave the next
    heartbeat's runState (the server hands them out again) and pyagent skips them."""
    statuses = _pyagent().RunStatus
    raw = agent._run_status
    queued = [run_id for run_id, status in list(raw.items()) if status == statuses.QUEUED]
    for run_id in queued:
        raw[run_id] = statuses.STOPPED
    return queued


def request_exit(agent) -> None:
    """Make pyagent's loops end: the flag they poll, and an exit job so a loop blocked on its
    queue wakes up now (5 s later otherwise)."""
    agent._exit_flag = True
    try:
        agent._queue.put(_pyagent().Job({"type": "exit"}))
    except Exception:  # noqa: BLE001 - agent.queue is best effort: the loop sees the flag within 5 s
        pass
