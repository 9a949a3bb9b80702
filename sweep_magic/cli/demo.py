"""``sweep-magic demo``: the README's quick start in the terminal, with no account and no network.

An 8-point grid (lr × width) on this process's embedded sweep server, two CPU agents,
followed live by the terminal face and ended with the table of runs.  ``train`` lives in
this module, so it travels to the agents by reference: each imports ``sweep_magic.cli.demo``
(cheap: nothing heavy at its top level).
"""

from __future__ import annotations

import argparse

from sweep_magic.cli._common import count_type

HELP = "an 8-point local sweep on 2 CPU agents, to see sweep_magic work (no account, no network)"

DESCRIPTION = """\
Run the README's quick start here: an 8-point grid sweep (lr × width) on sweep_magic's
embedded sweep server, with two CPU agents, live in the terminal, then the table of runs,
best first.  No W&B account and no network: the runs are W&B offline runs on disk."""

EPILOG = """\
examples:
  sweep-magic demo
  sweep-magic demo --cpus 4 --plain

The notebook version of the same: demo_notebooks/quickstart.ipynb."""

CONFIG = {
    "method": "grid",
    "metric": {"name": "loss", "goal": "minimize"},
    "parameters": {"lr": {"values": [0.003, 0.01, 0.03, 0.1]}, "width": {"values": [16, 64]}},
}
STEPS = 4
STEP_SECONDS = 0.2  # long enough to watch the steps go by, short enough for a demo


def train() -> None:
    """The quick start's function, in a few steps so there is progress to watch."""
    import time

    import wandb

    with wandb.init() as run:
        lr, width = run.config.lr, run.config.width
        for step in range(STEPS):
            run.log({"loss": lr * width * (STEPS - step)})  # ends at lr × width, the quick start's loss
            time.sleep(STEP_SECONDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpus", type=count_type, default=2, metavar="N", help="CPU agents (default 2)")
    parser.add_argument("--plain", action="store_true", help="plain appended lines even on a terminal")


def run(args: argparse.Namespace) -> int:
    import sys

    from sweep_magic import api
    from sweep_magic.cli._common import UsageError
    from sweep_magic.cli._follow import follow
    from sweep_magic.errors import SweepMagicError
    from sweep_magic.server import local_sweep

    print(f"sweep-magic demo: an 8-point grid (lr × width) on the embedded sweep server, {args.cpus} CPU "
          f"agent{'s' if args.cpus != 1 else ''}, no account, no network", flush=True)
    try:
        sweep_id = local_sweep(CONFIG, project="quickstart")
        session = api.launch(train, sweep_id, cpus=args.cpus)
    except SweepMagicError as err:
        raise UsageError(str(err)) from None
    code = follow(session, live=False if args.plain else None)
    if code == 0:
        sys.stdout.write("\nnext: your own sweep with `sweep-magic agents SWEEP --function MODULE:NAME` "
                         "(sweep-magic agents --help), or `%%sweep_parallel SWEEP --cpus 2` in a notebook\n")
        sys.stdout.flush()
    return code
