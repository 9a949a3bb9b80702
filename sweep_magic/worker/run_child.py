"""Inside a run child: one sweep run in a process of its own, reporting to its agent.

Two kinds of run child use this code (``worker.isolation`` starts them):

* ``isolate="run"``: the user's function, forked from the agent's fork server
  (``worker.forkserver``) or, as a fallback, spawned as ``python -m
  sweep_magic.worker.run_child``; ``run_function`` runs it as pyagent would (then
  ``wandb.finish``), and says how it went.
* program sweeps: the sweep's own command; when it is a Python interpreter, the
  ``sitecustomize`` in ``_inject/`` calls ``activate_from_env`` at interpreter start.

Either way the child's ``wandb.init`` joins the run the agent prepared (pyagent put
WANDB_RUN_ID, WANDB_SWEEP_ID and WANDB_SWEEP_PARAM_PATH in the environment), and the
child hooks ``Run`` (``install_run_hooks``) with the worker's own ``Reporter``:

    run child                                      worker (the agent)
    Run._on_start ─► RunStarted ─┐                 relay thread: RunStarted (+ pid),
    run.log ────────► Metrics ───┼─ run pipe ────► Metrics → events fd; outcome kept
    Run._finish / end ─► outcome ┘  (JSON lines)   child's exit → RunFinished (job_end)
    history rows (sweep metric) ─► side channel    (the worker posts start and finish)

The child never writes the agent's events fd: only the worker does, so lines never
interleave, and a child killed mid-line loses only its own half line.  ``lifeline`` is
a pipe whose write end only the worker holds: its EOF means the agent is gone, and
the child takes its whole process group with it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import ClassVar

from sweep_magic.protocol.events import Event

CHILD_VAR = "SWEEP_MAGIC_CHILD"  # program runs: JSON {fd, lifeline, run_id, metric, report_url, root}
EXIT_LOAD_ERROR = 2  # the function could not be unpickled: no run will fare better


@dataclass(frozen=True)
class ChildOutcome(Event):
    """Child → worker only (never reaches the supervisor): how the run went, as the child saw it."""

    type: ClassVar[str] = "sm_child_outcome"
    run_id: str
    final: list | None = None  # [exit_code, summary, ended] from Run._finish
    error: str | None = None  # the traceback when the function raised
    load_error: str | None = None


@dataclass
class ChildSpec:
    """What ``hooks.Reporter`` reads from a spec, for a reporter living in a run child."""

    metric_name: str | None = None
    report_url: str | None = None
    env: dict = field(default_factory=dict)
    heartbeat_seconds: float = 5.0


# -- the hooks ----------------------------------------------------------------------------
_installed = False


def install_run_hooks(reporter, on_finish=None) -> None:
    """Hook ``Run`` through the wandb adapter, once per process, to feed ``reporter``;
    ``on_finish(run)`` is called after the summary was taken.  This interpreter checks its
    own wandb (a program's Python may not be the agent's): when the live hooks do not fit,
    the public fallback reports start and last logged values (docs/wandb-compat.md)."""
    global _installed
    if _installed:
        return
    _installed = True
    from sweep_magic import _wandb
    from sweep_magic.worker import hooks

    found = _wandb.check(("run",))
    if hooks.install_run_hooks(reporter, found, on_finish=on_finish) is not True:
        print(f"sweep_magic: {found.live_note() or 'live detail off'}", file=sys.stderr, flush=True)


def start_reporter(events_fd: int, run_id: str, config: dict, *, metric: str | None, report_url: str | None):
    from sweep_magic.worker.reporter import Reporter

    spec = ChildSpec(metric_name=metric, report_url=report_url,
                     env={"WANDB_API_KEY": os.environ.get("WANDB_API_KEY", "")})
    reporter = Reporter(events_fd, spec)
    reporter.job_begin(None, run_id, dict(config or {}))
    return reporter


def die_with_agent(lifeline_fd: int) -> None:
    """Watch the agent's lifeline: EOF → SIGKILL this process group (the run and what it started)."""

    def watch():
        while True:
            try:
                if not os.read(lifeline_fd, 64):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="sweep-magic-run-lifeline", daemon=True).start()


def parent_death_signal(sig: int) -> None:
    """PR_SET_PDEATHSIG: ``sig`` when the parent (thread) that started us ends (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)
    except Exception:  # noqa: BLE001 - the lifeline still covers it
        pass


# -- isolate="run": the user's function --------------------------------------------------
def run_function(payload: bytes, request: dict, events_fd: int) -> int:
    """Run one sweep run's function here, as pyagent would; returns the exit code
    (0 = returned, 1 = raised, EXIT_LOAD_ERROR = could not be unpickled)."""
    run_id = request["run_id"]
    reporter = start_reporter(events_fd, run_id, request.get("config") or {},
                              metric=request.get("metric"), report_url=request.get("report_url"))
    install_run_hooks(reporter)
    from sweep_magic.protocol.env import SYS_PATH_VAR

    # As in the worker: modules the kernel could import (a function pickled by reference).
    sys.path.extend(p for p in os.environ.get(SYS_PATH_VAR, "").split(os.pathsep) if p and p not in sys.path)

    def outcome(exit_code: int | None = None, **kw) -> None:
        reporter.close()  # the last Metrics go out before the outcome
        reporter.emit(ChildOutcome(run_id=run_id, final=reporter.final_of(run_id, exit_code), **kw))

    try:
        import cloudpickle

        function = cloudpickle.loads(payload)
    except BaseException:  # noqa: BLE001 - whatever unpickling raises fails this run with its traceback
        text = "the function could not be loaded in the run's process:\n" + traceback.format_exc()
        print(f"sweep_magic: {text}", file=sys.stderr, flush=True)
        outcome(load_error=text)
        return EXIT_LOAD_ERROR
    import wandb

    error = None
    try:
        function()
        wandb.finish()  # pyagent finishes a run the function left open
    except SystemExit as err:
        if err.code not in (None, 0):
            error = traceback.format_exc()
        _finish_quietly(wandb, 1 if error else 0)
    except BaseException:  # noqa: BLE001 - KeyboardInterrupt too: the agent's stop arrives as SIGINT
        error = traceback.format_exc()
        print(error, file=sys.stderr, flush=True)
        _finish_quietly(wandb, 1)
    outcome(1 if error else 0, error=error)
    _teardown(wandb)
    return 1 if error else 0


def _finish_quietly(wandb, exit_code: int) -> None:
    try:
        wandb.finish(exit_code=exit_code)
    except BaseException:  # noqa: BLE001 - the child must report and exit whatever happens
        traceback.print_exc()


def _teardown(wandb, timeout: float = 5.0) -> None:
    # Bounded: a wedged wandb must not keep a finished run's process alive.
    closer = threading.Thread(target=wandb.teardown, daemon=True)
    closer.start()
    closer.join(timeout)


def child_setup(lifeline_fd: int, events_fd: int) -> None:
    """First thing in a run child: its own process group, dying with its parent and with
    the agent, default signal handling, and no fd of ours leaking into its subprocesses."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group leader (started with process_group=0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    parent_death_signal(signal.SIGKILL)
    for fd in (lifeline_fd, events_fd):
        os.set_inheritable(fd, False)
    die_with_agent(lifeline_fd)


def main(argv: list[str] | None = None) -> int:
    """``python -m sweep_magic.worker.run_child``: the spawned (no fork server) form."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sweep_magic.worker.run_child")
    parser.add_argument("--payload", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--request", required=True, help="JSON: run_id, config, metric, report_url")
    args = parser.parse_args(argv)
    child_setup(args.lifeline_fd, args.events_fd)
    if os.getppid() != args.parent:
        return 1  # the agent died before we could arm the parent-death signal
    with open(args.payload, "rb") as f:
        payload = f.read()
    return run_function(payload, json.loads(args.request), args.events_fd)


# -- program sweeps: a Python program's interpreter ---------------------------------------
def activate_from_env() -> None:
    """Called by the injected ``sitecustomize``: when this interpreter is a program run's
    (``SWEEP_MAGIC_CHILD`` set), hook ``Run`` as soon as wandb is imported.  The variable
    is removed at once, so only the first Python of the run's process tree reports."""
    raw = os.environ.pop(CHILD_VAR, None)
    if not raw:
        return
    cfg = json.loads(raw)
    events_fd, lifeline_fd = int(cfg["fd"]), int(cfg["lifeline"])
    for fd in (events_fd, lifeline_fd):
        os.set_inheritable(fd, False)
    die_with_agent(lifeline_fd)
    run_id = cfg.get("run_id") or os.environ.get("WANDB_RUN_ID", "")
    state: dict = {}

    def hook(_module) -> None:
        reporter = start_reporter(events_fd, run_id, {}, metric=cfg.get("metric"), report_url=cfg.get("report_url"))
        state["reporter"] = reporter

        def finished(run) -> None:
            if getattr(run, "id", None) == run_id:
                state["told"] = True
                reporter.emit(ChildOutcome(run_id=run_id, final=reporter.final_of(run_id)))

        install_run_hooks(reporter, on_finish=finished)

    def at_exit() -> None:
        reporter = state.get("reporter")
        if reporter is not None:
            reporter.close()
            if not state.get("told"):
                # No Run._finish seen (live detail off): the last logged values are the
                # summary; the exit code is the process's, which the agent reads itself.
                final = reporter.final_of(run_id, 0)
                if final is not None:
                    reporter.emit(ChildOutcome(run_id=run_id, final=final))

    import atexit

    atexit.register(at_exit)
    # After the whole wandb package: its public wandb.init (the fallback's hook) exists then,
    # and no Run can be made before it.
    after_import("wandb", hook)


def after_import(name: str, callback) -> None:
    """Call ``callback(module)`` right after module ``name`` is first imported."""
    import importlib.abc
    import importlib.util

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            loader = getattr(spec, "loader", None)
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            original = loader.exec_module

            def exec_module(module):
                original(module)
                try:
                    callback(module)
                except Exception as err:  # noqa: BLE001 - a broken hook costs live metrics, never the user's program
                    print(f"sweep_magic: could not hook wandb in this program ({err!r})", file=sys.stderr)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
