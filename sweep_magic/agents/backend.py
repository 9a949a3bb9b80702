"""The backend seam: how an agent process is started, signalled and watched.

The supervisor's state machine (``supervisor.py``) is the same whatever hosts an agent;
a backend only answers four questions::

    start(spec, log_path, header) -> AgentProcess     start one agent for a slot
    AgentProcess.signal(sig) / .drain()              reach its process group / ask it to drain
    AgentProcess.events()                            its JSON event lines, until it closes them
    AgentProcess.wait() -> exit code; .cleanup()     learn that it ended; leave nothing behind

``local.LocalBackend`` runs ``python -m sweep_magic.worker`` on this machine.  A backend
that hosts workers elsewhere (Ray) implements the same, so drain, stop, restart and crash
handling are decided once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class AgentProcess(Protocol):
    pid: int  # the worker's pid on its node (shown in the views)
    node: str  # where it runs ("" = this machine)
    returncode: int | None  # None until ``wait`` has returned

    def events(self) -> Iterator[bytes]:
        """The worker's event lines, until the worker (and everything it started) closes them."""

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the agent's whole process group; False when it is gone."""

    def drain(self) -> None:
        """Ask the worker (itself, not its group) to finish its current run and exit."""

    def wait(self) -> int | None:
        """Block until the worker exits; its exit status (negative: killed by that signal), or
        None when the host could not learn it (the supervisor then goes by the worker's own
        last word, ``AgentExiting``)."""

    def cleanup(self) -> None:
        """After ``wait``: kill what is left of its group, reap its wandb-core, free files."""

    def report_lost_run(self, run_id: str, state: str, code: int) -> None:
        """Tell the sweep server that a run died with its agent (best effort)."""


class Backend(Protocol):
    def start(self, spec, *, log_path: str, header: str) -> AgentProcess:
        """Start one agent; raises when it cannot (the supervisor marks the agent failed)."""
