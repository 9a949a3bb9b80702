"""One agent slot's mutable state inside the supervisor, and its log tail.

Guarded by the supervisor's lock; ``snapshot()`` turns it into the immutable
``AgentSnapshot`` the views read.
"""

from __future__ import annotations

import collections
import os
import threading

from sweep_magic.agents.backend import AgentProcess
from sweep_magic.devices import AgentSlot
from sweep_magic.snapshot import AgentSnapshot

TAIL_LINES = 50


class AgentRecord:
    """One agent slot's mutable state; guarded by ``Supervisor._lock``."""

    def __init__(self, slot: AgentSlot, log_path: str):
        self.slot = slot
        self.index = slot.index
        self.state = "starting"
        self.proc: AgentProcess | None = None  # from the backend
        self.waiter: threading.Thread | None = None
        self.current_run: str | None = None
        self.runs_done = 0
        self.restarts = 0
        self.crashes = 0  # in a row, without a run finishing in between
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.intent: str | None = None  # "drain" | "stop" | "kill" | "restart": why it will end
        self.exit_error: str | None = None  # AgentExiting.error of the current process
        self.exit_reason: str | None = None
        self.log_path = log_path
        self.log_pos = 0
        self.log_partial = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.due: float | None = None  # a pending (re)spawn time
        self.spec = None  # the current process's WorkerSpec
        self.ready = False  # AgentStarted seen: the worker's signal handlers are in place

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def read_tail(self) -> bool:
        """Take in what the log file gained since last time; True when lines were added."""
        try:
            size = os.path.getsize(self.log_path)
        except OSError:
            return False
        if size <= self.log_pos:
            return False
        with open(self.log_path, "rb") as f:
            # Only the end matters: skip what the tail could never show.
            f.seek(max(self.log_pos, size - 64 * 1024))
            data = self.log_partial + f.read(size - f.tell())
        self.log_pos = size
        *lines, self.log_partial = data.split(b"\n")
        for line in lines:
            self.tail.append(line.decode("utf-8", "replace").rstrip("\r"))
        return bool(lines)

    def snapshot(self) -> AgentSnapshot:
        return AgentSnapshot(
            # A backend that learns the device only once placed (Ray) says it itself.
            index=self.index, device=getattr(self.proc, "device", None) or self.slot.label, state=self.state,
            pid=self.proc.pid if self.proc is not None else None, current_run=self.current_run,
            runs_done=self.runs_done, restarts=self.restarts, exit_code=self.exit_code, reason=self.reason,
            log_path=self.log_path, log_tail=tuple(self.tail),
            node=getattr(self.proc, "node", "") or "",
        )  # fmt: skip
