"""A worker forked from the zygote (``worker/zygote.py``) instead of started as a fresh
interpreter.

The kernel side keeps one zygote per kernel (``agents/warm.py``): a fresh interpreter that
imported wandb and the worker once and then forks a child per agent.  A fork of *that*
process is safe where a fork of the kernel is not: it has one thread, no IPython, no CUDA,
no wandb-core.

``run`` turns such a fork into exactly what ``python -m sweep_magic.worker`` would be:
its own session and process group, the agent's log file as stdout/stderr, the kernel's
working directory and the environment the supervisor computed for this agent (the fork
server's own environment is the kernel's at the moment it started, so it is replaced
wholesale, never merged).
"""

from __future__ import annotations

import os
import sys


def run(spec_path: str, events_fd, lifeline_fd, log_fd, env: dict, cwd: str) -> None:
    events, lifeline, log = (_fd(x) for x in (events_fd, lifeline_fd, log_fd))
    os.setsid()  # the group the supervisor signals, as start_new_session=True gives a Popen
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # Python's stdio objects were made for the fork server's descriptors; remake them so the
    # user's prints reach the log file at once (PYTHONUNBUFFERED is read only at start-up).
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError as err:
        print(f"sweep_magic: could not enter {cwd}: {err}", file=sys.stderr)
    from sweep_magic.worker.main import main

    # PR_SET_PDEATHSIG would tie us to the zygote, our parent, whose end must not end the
    # agent; the lifeline ties us to the kernel, as it does a fresh interpreter.
    code = main(["--spec", spec_path, "--events-fd", str(events), "--lifeline-fd", str(lifeline)],
                parent_is_kernel=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as ``python -m sweep_magic.worker``: no interpreter teardown


def _fd(passed) -> int:
    """A descriptor sent by the fork server (``DupFd``), or a plain number."""
    return passed.detach() if hasattr(passed, "detach") else int(passed)
