"""``sweep-magic agents SWEEP ...``: the magic's placement, supervision and options, from a shell.

Parses, imports ``--function MODULE:NAME``, calls ``sweep_magic.launch`` and follows the
session with the terminal face.  Options the caller did not give are not passed, so a
``launch`` without ``isolate=`` or the Ray backend still serves every other option; asking
for one it lacks is a one-line error.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

from sweep_magic.cli._common import UsageError, count_type, nice_type

HELP = "run a sweep's agents in parallel here, on GPUs or CPU cores"

DESCRIPTION = """\
Run the agents of one W&B sweep in parallel, each in its own process running the real
wandb.agent, pinned to its GPU (CUDA_VISIBLE_DEVICES) or its share of CPU cores, restarted
if it crashes, all stopped together; progress live in the terminal, then the table of runs,
best first.  The same as %%sweep_parallel in a notebook."""

EPILOG = """\
SWEEP is a sweep id, PROJECT/ID or ENTITY/PROJECT/ID: a sweep of sweep_magic's embedded
server (sweep_magic.local_sweep), of the W&B server WANDB_BASE_URL names (W&B, self-hosted
W&B, or a `sweep-magic server`), looked up with your wandb login.

examples:
  # instead of one terminal per GPU running `CUDA_VISIBLE_DEVICES=i wandb agent ID`:
  sweep-magic agents entity/project/abc123 --gpus all --function train:main
  sweep-magic agents entity/project/abc123 --gpus 0,1 --agents-per-gpu 2 --count 10 --function train:main
  sweep-magic agents project/abc123 --cpus 4 --nice 10 --function mypkg.jobs:train

  # a sweep made with `wandb sweep` against a `sweep-magic server` in another terminal:
  export WANDB_BASE_URL=http://127.0.0.1:PORT WANDB_API_KEY=local-...
  sweep-magic agents local/project/abc123 --cpus 2 --function train:main

Ctrl-C once: the runs in progress finish, no new ones start.  Twice: stop now.
exit codes: 0 the agents ended normally · 1 no run finished and some failed ·
            2 bad input, nothing started · 130 stopped by Ctrl-C"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", nargs="?", metavar="SWEEP", help="ID, PROJECT/ID or ENTITY/PROJECT/ID")
    parser.add_argument("--function", "-f", metavar="MODULE:NAME",
                        help="the function each run calls, imported from MODULE (./MODULE.py or on PYTHONPATH); "
                             "without it, the sweep's program: as `wandb agent` runs it")
    parser.add_argument("--gpus", metavar="LIST|all|free", help="GPUs for agents: 0,1 or all or free (idle ones); with --ray: how many, or NODE=N,NODE=N")
    parser.add_argument("--agents-per-gpu", type=count_type, metavar="N", help="agents sharing each GPU (default 1)")
    parser.add_argument("--cpus-per-agent", type=count_type, metavar="N",
                        help="with --ray: CPUs each agent reserves, and its thread caps (default 1)")
    parser.add_argument("--cpus", type=count_type, metavar="N", help="run N agents on CPU cores (split among them)")
    parser.add_argument("--count", type=count_type, metavar="N", help="runs per agent (default: until the sweep is done)")
    parser.add_argument("--project", metavar="P", help="W&B project of a bare sweep id")
    parser.add_argument("--entity", metavar="E", help="W&B entity")
    parser.add_argument("--nice", type=nice_type, metavar="N", help="lower the agents' CPU priority, 0..19")
    parser.add_argument("--isolate", choices=["run"], help="run: a fresh process for every run (frees GPU memory)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="start the agents on a Ray cluster (ADDRESS as ray.init takes it; "
                             "alone: RAY_ADDRESS or a local cluster); write --ray=ADDRESS before SWEEP")
    parser.add_argument("--plain", action="store_true", help="plain appended lines even on a terminal")


def run(args: argparse.Namespace) -> int:
    if not args.sweep:
        if args.ray:  # `--ray e/p/id` took the sweep for Ray's address
            raise UsageError(f"--ray took {args.ray!r} as Ray's address: give SWEEP first, or --ray=ADDRESS")
        raise UsageError("give the sweep: sweep-magic agents SWEEP (ID, PROJECT/ID or ENTITY/PROJECT/ID)")
    options = launch_options(args)
    function = load_function(args.function) if args.function else None
    from sweep_magic import api
    from sweep_magic.cli._follow import follow
    from sweep_magic.errors import FunctionError, SweepMagicError

    try:
        session = api.launch(function, args.sweep, **options)
    except FunctionError as err:
        if function is None and "is not a function" in str(err):
            # This launch() predates program sweeps (launch(None, ...)).
            raise UsageError("give --function MODULE:NAME: this sweep_magic cannot run a sweep's program: yet") from None
        raise UsageError(str(err)) from None
    except SweepMagicError as err:
        raise UsageError(str(err)) from None
    return follow(session, live=False if args.plain else None)


def launch_options(args: argparse.Namespace) -> dict:
    """``launch`` keywords for the options given, checked against what this ``launch`` takes."""
    options = {
        "gpus": args.gpus,
        "cpus": args.cpus,
        "agents_per_gpu": args.agents_per_gpu,
        "cpus_per_agent": args.cpus_per_agent,
        "count": args.count,
        "project": args.project,
        "entity": args.entity,
        "nice": args.nice,
        "isolate": args.isolate,
    }
    if args.ray is not None:
        options["backend"] = "ray"
        if args.ray:
            options["ray_address"] = args.ray
    options = {k: v for k, v in options.items() if v is not None}
    from sweep_magic import api

    takes = inspect.signature(api.launch).parameters
    flags = {"isolate": "--isolate", "backend": "--ray", "ray_address": "--ray", "cpus_per_agent": "--cpus-per-agent"}
    for name in options:
        if name not in takes:
            raise UsageError(f"{flags.get(name, name)} needs a newer sweep_magic (its launch() has no {name}=)")
    return options


def load_function(ref: str):
    """``MODULE:NAME`` → the function, imported here as ``python -m`` would find MODULE.

    The current directory goes first on ``sys.path`` (as for ``python -m``), and workers get
    this process's ``sys.path`` (protocol/env.py), so the function travels by reference and
    each agent imports MODULE itself: its top level runs here and in every agent."""
    module_name, sep, attr = ref.partition(":")
    if not (sep and module_name and attr):
        raise UsageError(f"--function takes MODULE:NAME (like train:main), not {ref!r}")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise UsageError(f"--function {ref}: no module {module_name!r} in {here} or on PYTHONPATH") from None
        raise UsageError(f"--function {ref}: importing {module_name} failed: {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - the user's module raised at import (SyntaxError included)
        raise UsageError(f"--function {ref}: importing {module_name} failed: {_one_line(err)}") from None
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UsageError(f"--function {ref}: {module_name} has no {attr!r}")
        value = getattr(value, part)
    return value


def _one_line(err: BaseException) -> str:
    from sweep_magic.errors import first_line

    return first_line(err, with_type=True)
