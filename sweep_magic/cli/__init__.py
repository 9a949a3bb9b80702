"""``sweep-magic``: the terminal's front door, as ``%%sweep_parallel`` is the notebook's.

    sweep-magic agents SWEEP [--gpus ...] [--cpus N] ...   agents.py  → sweep_magic.launch
    sweep-magic server [--host H] [--port N] [--db PATH]   sweep_magic/server/__main__.py
    sweep-magic demo [--cpus N]                            demo.py    → local_sweep + launch
                                                           _follow.py: terminal face, Ctrl-C, exit code

It parses and calls the public API; the work is ``launch``'s.  A mistake is one line on
stderr and exit 2, before anything starts: argparse's own errors (``_common.Parser``) and
every ``SweepMagicError`` ``launch`` raises.  Modules load per command, so ``--help`` and a
bad option answer without importing wandb.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from sweep_magic.cli._common import Parser, UsageError

PROG = "sweep-magic"

DESCRIPTION = """\
Run W&B sweep agents in parallel from one terminal, on GPUs or CPU cores, against W&B or
against sweep_magic's own sweep server (no account needed)."""

EPILOG = """\
examples:
  sweep-magic demo                                               # see it work: a local 8-run sweep
  sweep-magic agents entity/project/abc123 --gpus all --function train:main
  sweep-magic agents entity/project/abc123 --cpus 4 --count 10 --function train:main
  sweep-magic server --db sweeps.sqlite3                         # then: wandb sweep / wandb agent / sweep-magic agents

`sweep-magic COMMAND --help` tells more."""


def _server_help() -> tuple[str, str, str]:
    return (
        "serve sweeps to the wandb client with no W&B account (python -m sweep_magic.server)",
        "Serve sweeps to the unmodified wandb client: `wandb sweep`, `wandb agent`, wandb.sweep,\n"
        "wandb.Api and `sweep-magic agents` work against it, with no W&B account.  Prints\n"
        "WANDB_BASE_URL=... and WANDB_API_KEY=... first, then serves until Ctrl-C (exit 0).",
        "examples:\n"
        "  sweep-magic server --db sweeps.sqlite3\n"
        "  # in another terminal, with the two printed variables exported:\n"
        "  wandb sweep --project p sweep.yaml        # prints ENTITY/PROJECT/ID\n"
        "  sweep-magic agents ENTITY/PROJECT/ID --cpus 4 --function train:main",
    )


def parser() -> Parser:
    from sweep_magic import __version__
    from sweep_magic.cli import agents, demo
    from sweep_magic.server import __main__ as server_main

    fmt = argparse.RawDescriptionHelpFormatter
    top = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=Parser)
    sub = commands.add_parser("agents", help=agents.HELP, description=agents.DESCRIPTION, epilog=agents.EPILOG,
                              formatter_class=fmt)
    agents.add_arguments(sub)
    sub.set_defaults(run=agents.run)
    short, long, examples = _server_help()
    sub = commands.add_parser("server", help=short, description=long, epilog=examples, formatter_class=fmt)
    server_main.add_arguments(sub)
    sub.set_defaults(run=_serve)
    sub = commands.add_parser("demo", help=demo.HELP, description=demo.DESCRIPTION, epilog=demo.EPILOG,
                              formatter_class=fmt)
    demo.add_arguments(sub)
    sub.set_defaults(run=demo.run)
    return top


def main(argv: list[str] | None = None) -> int:
    """The ``sweep-magic`` console script; returns the exit code."""
    args = parser().parse_args(argv)
    if getattr(args, "run", None) is None:
        return _fail("give a command: agents, server or demo (see sweep-magic --help)")
    warnings.showwarning = _one_line_warning
    try:
        return args.run(args)
    except UsageError as err:
        return _fail(str(err), args.command)
    except KeyboardInterrupt:  # before the session's own Ctrl-C handling took over
        from sweep_magic import api

        api.stop_all()
        sys.stderr.write("sweep-magic: interrupted\n")
        return 130


def _serve(args: argparse.Namespace) -> int:
    from sweep_magic.server import __main__ as server_main

    try:
        return server_main.run(args)
    except OSError as err:  # the address is taken or not ours, the database folder not writable
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {err.strerror or err}") from None


def _fail(message: str, command: str | None = None) -> int:
    sys.stderr.write(f"{PROG}{' ' + command if command else ''}: {message}\n")
    sys.stderr.flush()
    return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A GPU or wandb warning as one line on stderr, not a file:line and source listing."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    (file or sys.stderr).write(f"{PROG}: warning: {first}\n")


__all__ = ["main", "parser"]
