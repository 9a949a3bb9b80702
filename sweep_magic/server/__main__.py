"""``python -m sweep_magic.server [--host H] [--port N] [--db PATH]``: the server on its own.

Prints exactly two lines first (flushed at once) so a shell or a parent process can take them::

    WANDB_BASE_URL=http://127.0.0.1:PORT
    WANDB_API_KEY=KEY

then serves until SIGINT or SIGTERM and exits 0.  With those two variables and
``WANDB_MODE=offline``, ``wandb agent SWEEP_ID`` and ``wandb.sweep(...)`` work against it.

``add_arguments`` and ``run`` are shared with ``sweep-magic server`` (sweep_magic.cli), so
both spellings take the same flags and print the same lines.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sweep_magic.server import default_db_path

    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--db", default=None, help=f"SQLite file (default: {default_db_path()})")
    parser.add_argument("--wandb-dir", action="append", default=[], metavar="DIR",
                        help="also look here for run files of agents that cannot report (repeatable)")
    parser.add_argument("--agent-timeout", type=float, default=None, metavar="SECONDS",
                        help="silence after which an agent that never said hello is gone (default: 75)")
    parser.add_argument("--log-level", default="WARNING")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0.  Raises OSError when the address cannot be bound."""
    from sweep_magic.server import serve

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = serve(args.host, args.port, args.db, wandb_dirs=args.wandb_dir, agent_timeout=args.agent_timeout)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sys.stdout.write(f"WANDB_BASE_URL={server.url}\nWANDB_API_KEY={server.api_key}\n")
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_magic.server", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
