"""The worker: one sweep agent in a fresh interpreter.

    python -m sweep_magic.worker --spec PATH --events-fd N --lifeline-fd M

Started by the supervisor (never forked from the kernel: a fork would inherit its
threads, CUDA state and IPython).  In order, it

1. arms its own death: a watchdog thread reads the lifeline fd (EOF = the parent
   is gone → kill our process group, exit) and, on Linux, PR_SET_PDEATHSIG;
2. reads and deletes the 0600 spec file (a cloudpickled ``WorkerSpec``);
3. applies the slot: environment (thread caps, CUDA_VISIBLE_DEVICES, the kernel's
   wandb state scrubbed) and CPU affinity, *before* the function is unpickled, so
   libraries it imports size their thread pools to the slot; with ``spec.nice``, its
   priority and its session's, and (``worker.priority``) those of each wandb-core it starts;
4. checks wandb's private surface and hooks it (``worker.hooks``, through the ``_wandb``
   adapter): a required touch point missing ends the agent here, with one line naming the
   wandb version and what it lacks; a degradation is said once; then runs the real
   ``wandb.agent`` -- on the function itself, or, with ``isolate="run"`` and for program
   sweeps, on ``worker.isolation``, which runs each run in a child process of its own
   (forked from a fork server started here, from the main thread, before anything else);
5. sends ``AgentExiting`` and exits.

Events go to the events fd only; the user's stdout/stderr are the log file the
supervisor opened for us.  Signals: SIGUSR1 = drain (finish the current run, then
exit); SIGINT = pyagent's Ctrl-C (stop the run, exit); SIGTERM = SIGKILL our whole
process group at once (also what PR_SET_PDEATHSIG sends when the kernel dies).
Exit codes: 0 = the agent ended (count reached, sweep done, drained, stopped);
3 = the agent could not run (``AgentExiting.error`` says why).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback

from sweep_magic.protocol.events import AgentExiting, AgentStarted
from sweep_magic.protocol.spec import WorkerSpec
from sweep_magic.worker import isolation as _isolation

EXIT_AGENT_ERROR = 3


def _kill_group(*_args) -> None:
    """Take everything we started (the user's children too, and run children's groups) with us."""
    try:
        _isolation.kill_all()
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


def _watch_lifeline(fd: int) -> None:
    def watch():
        while True:
            try:
                if not os.read(fd, 4096):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        _kill_group()  # the parent is gone

    threading.Thread(target=watch, name="sweep-magic-lifeline", daemon=True).start()


def _die_with_parent(parent_is_kernel: bool = True) -> None:
    # SIGTERM, not SIGKILL: a SIGKILLed worker could not kill its group, and the user's own
    # children (data loaders, `subprocess`es) would outlive the kernel.  SIGTERM from the
    # supervisor's stop means the same thing: everything in the group goes, now.
    signal.signal(signal.SIGTERM, _kill_group)
    if not parent_is_kernel or not sys.platform.startswith("linux"):
        return  # forked by the zygote: the lifeline alone ties us to the kernel
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - the lifeline still covers it
        pass


def read_spec(path: str) -> WorkerSpec:
    import cloudpickle

    try:
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    finally:
        # It holds the API key: gone as soon as it is read, whatever happens next.
        try:
            os.unlink(path)
        except OSError:
            pass


def _apply_slot(spec: WorkerSpec) -> None:
    from sweep_magic.protocol import env as _env

    _env.scrub_own_env(spec)
    extra = [p for p in os.environ.get(_env.SYS_PATH_VAR, "").split(os.pathsep) if p and p not in sys.path]
    sys.path.extend(extra)  # appended: the worker's own imports win over the kernel's path
    if spec.cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError as err:
            print(f"sweep_magic: could not pin to cores {spec.cpus}: {err}", file=sys.stderr)


def _apply_priority(spec: WorkerSpec) -> None:
    from sweep_magic.worker import priority as _priority

    _priority.apply_self(getattr(spec, "nice", None))  # specs from before the field have none


def _watch_priority(spec: WorkerSpec) -> None:
    from sweep_magic.worker import priority as _priority

    _priority.watch_sidecars(getattr(spec, "nice", None))  # each wandb-core is a session of its own


def _isolation_for(spec: WorkerSpec, reporter):
    """The per-run process machinery, or None for runs in this interpreter."""
    if spec.runs_program:
        from sweep_magic.worker.program import ProgramRuns

        return ProgramRuns(spec, reporter)
    if getattr(spec, "isolate", "agent") == "run":
        return _isolation.FunctionRuns(spec, reporter)  # starts the fork server now: it imports meanwhile
    return None


def _load_function(spec: WorkerSpec):
    import cloudpickle

    return cloudpickle.loads(spec.function_pickle)


def _teardown_wandb(timeout: float = 5.0) -> None:
    """Close our wandb-core now rather than have it notice our death ~1.5 s later; bounded,
    because a run thread that ignored pyagent's stop may hold wandb's locks."""
    import wandb

    closer = threading.Thread(target=wandb.teardown, daemon=True)
    closer.start()
    closer.join(timeout)


def main(argv: list[str] | None = None, *, parent_is_kernel: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_magic.worker")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()

    # Signals may come while we are still importing: SIGUSR1's default action would kill
    # us, so a drain asked for now is remembered and honoured before wandb.agent starts.
    interrupted, drain_early = threading.Event(), threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt  # pyagent's Ctrl-C path: stop the run, return

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGUSR1, lambda signum, frame: drain_early.set())
    # Neither fd may reach wandb-core or the user's subprocesses: a child holding the
    # events pipe would hide our exit from the supervisor.
    os.set_inheritable(args.events_fd, False)
    os.set_inheritable(args.lifeline_fd, False)
    _watch_lifeline(args.lifeline_fd)
    _die_with_parent(parent_is_kernel)
    faulthandler.enable()  # a segfault leaves a Python traceback in the log

    spec = read_spec(args.spec)
    _apply_slot(spec)
    _apply_priority(spec)

    from sweep_magic.worker import hooks as _hooks

    reporter = _hooks.Reporter(args.events_fd, spec)

    def exiting(reason: str, error: str | None = None) -> None:
        if error:
            print(f"sweep_magic: {error}", file=sys.stderr, flush=True)  # the log tail shows it
        reporter.close()
        reporter.emit(AgentExiting(reason=reason, error=error))

    isolation = None
    try:
        isolation = _isolation_for(spec, reporter)
        reporter.emit(AgentStarted(pid=os.getpid(), sweep_id=spec.sweep_id))
        try:
            # Isolated runs unpickle the function in their own process only.
            function = _load_function(spec) if isolation is None else isolation
        except Exception:  # noqa: BLE001 - whatever unpickling raises is the agent's one error
            exiting("error", "the function could not be loaded in the worker:\n" + traceback.format_exc())
            return EXIT_AGENT_ERROR
        try:
            _hooks.install(reporter, spec, job_command=isolation.remember if isolation is not None else None)
        except _hooks.HookMissing as err:
            exiting("error", str(err))
            return EXIT_AGENT_ERROR
        except Exception as err:  # noqa: BLE001 - the check or a wrapper broke: one line, no restart loop
            exiting("error", f"sweep_magic could not hook wandb: {type(err).__name__}: {err}\n" + traceback.format_exc())
            return EXIT_AGENT_ERROR
        _watch_priority(spec)  # wandb is imported now; its wandb-cores start inside wandb.agent
        signal.signal(signal.SIGUSR1, lambda signum, frame: _hooks.start_drain(reporter))
        if drain_early.is_set():
            exiting("drained")
            return 0

        import wandb

        try:
            wandb.agent(
                spec.sweep_id,
                function=function if isolation is not None else _hooks.wrap_function(function, reporter),
                count=spec.count,
                project=spec.project,
                entity=spec.entity,
            )
        except Exception as err:  # noqa: BLE001 - wandb.agent's own failure is the agent's error line
            exiting("error", f"wandb.agent failed: {type(err).__name__}: {err}\n" + traceback.format_exc())
            return EXIT_AGENT_ERROR
        _teardown_wandb()
        if isolation is not None and isolation.fatal:
            exiting("error", isolation.fatal)
            return EXIT_AGENT_ERROR
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        if isolation is not None:
            isolation.close()
    if interrupted.is_set():
        reason = "stopped"
    elif reporter.draining:
        reason = "drained"
    else:
        reason = f"agent finished after {time.monotonic() - started:.1f}s"
    exiting(reason)
    return 0

