"""The wiring between the wandb adapter's hooks and the worker's Reporter.

wandb has no public callback API, so the worker wraps pyagent's and Run's private methods
through ``sweep_magic._wandb`` before ``wandb.agent`` starts.  What fits is decided by the
adapter's surface check (docs/wandb-compat.md):

* a required touch point missing → ``HookMissing`` with one line (wandb version + what),
  before any run;
* the Run hooks not fitting → live detail off, said once (a ``Notice``): public
  ``wandb.init``/``Run.log`` wrappers still give each run's start and last logged values;
* a best-effort point missing → its named degradation, said once (in the views when a user
  would notice it, else in the worker's log).

The two halves are separable: ``install_run_hooks`` needs no pyagent, so a process that
runs one run on its own can report it with a Reporter of its own.
"""

from __future__ import annotations

import sys

from sweep_magic import _wandb
from sweep_magic.worker.reporter import Reporter, wrap_function

__all__ = ["HookMissing", "Reporter", "install", "install_agent_hooks", "install_run_hooks", "start_drain",
           "surface_check", "wrap_function"]  # fmt: skip


class HookMissing(RuntimeError):
    """A required wandb touch point is missing: the agent cannot run correctly."""


def surface_check(spec=None) -> _wandb.Surface:
    """The touch points a worker for ``spec`` uses: wandb-core's only matter for ``nice``
    (the priority hook), the quiet settings only for the embedded server's defaults."""
    groups = ["agent", "run", "env"]
    if spec is not None and getattr(spec, "nice", None):
        groups.append("core")
    if spec is not None and spec.report_url:
        groups.append("quiet")
    return _wandb.check(tuple(groups))


def install(reporter: Reporter, spec, found: _wandb.Surface | None = None, *, job_command=None) -> _wandb.Surface:
    """Hook pyagent and Run for ``reporter``; raises ``HookMissing`` (one line) when this
    wandb lacks a required touch point.  Returns the surface it was installed against.
    ``job_command(run_id, command)`` hears each run's whole command (``worker.isolation``).
    Run is hooked here too when runs happen in child processes (harmless: no Run is made
    here), so the views hear once that live detail is off; each child hooks its own."""
    found = found if found is not None else surface_check(spec)
    if found.refused:
        raise HookMissing(found.refusal())
    install_agent_hooks(reporter, spec, found, job_command=job_command)
    live = install_run_hooks(reporter, found)
    for line in found.notes():
        reporter.notice(line)
    for line in found.degradations(shown=False):
        print(f"sweep_magic: {line}", file=sys.stderr, flush=True)
    if live is None:
        reporter.notice(f"wandb {found.version}: neither Run's private methods nor public wandb.init/Run.log "
                        "could be wrapped: runs show start, end and state only")  # fmt: skip
    return found


def install_agent_hooks(reporter: Reporter, spec, found: _wandb.Surface, *, job_command=None) -> None:
    _wandb.disable_flapping(found)
    if spec.report_url:
        # Only against the embedded server: heartbeats to a shared W&B server stay at wandb's pace.
        if not _wandb.set_heartbeat(spec.heartbeat_seconds, found):
            reporter.sleeper.cap = spec.heartbeat_seconds
    _wandb.patch_sleep(reporter.sleeper, found)
    _wandb.hook_agent(
        _wandb.AgentCallbacks(
            created=reporter.agent_created,
            registered=reporter.registered,
            job_begin=reporter.job_begin,
            job_end=reporter.job_end,
            job_command=job_command,
            commands=reporter.filter_commands,
            exited=lambda agent: reporter.wake(),
        ),
        found,
    )


def install_run_hooks(reporter: Reporter, found: _wandb.Surface, on_finish=None) -> bool | None:
    """True: live detail; False: the public fallback; None: neither could be installed.
    ``on_finish(run)`` is called after the reporter took the finishing run's summary."""
    finishing = reporter.run_finishing
    if on_finish is not None:
        def finishing(run, exit_code):
            reporter.run_finishing(run, exit_code)
            on_finish(run)

    if _wandb.hook_run(reporter.run_started, reporter.logged, finishing, found):
        return True
    if _wandb.hook_run_public(reporter.run_started, reporter.logged):
        return False
    return None


def start_drain(reporter: Reporter) -> None:
    """SIGUSR1: finish the run in progress, then exit; at once when idle."""
    reporter.drain()

