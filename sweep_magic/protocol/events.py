"""Events a worker sends to its supervisor, and their wire form.

The channel is a pipe of its own (never the user's stdout): one JSON object per
line, each carrying ``"v"`` (the wire version) and ``"type"``.  Readers skip
lines they cannot parse and types they do not know, so an older supervisor can
read a newer worker.

    worker ──(events fd, JSON lines)──► supervisor reader thread ──► state machine

Metric events are coalesced in the worker (latest values, a few per second), so
the volume on this channel does not depend on how often the user logs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

WIRE_VERSION = 1


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value``: numpy scalars become numbers, NaN/inf strings,
    anything else unknown its ``repr``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return repr(value)


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    t: float = field(default_factory=time.time, kw_only=True)

    def to_line(self) -> bytes:
        body = {"v": WIRE_VERSION, "type": self.type}
        body.update(jsonable(asdict(self)))
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class AgentStarted(Event):
    """The worker is up and about to call ``wandb.agent``."""

    type: ClassVar[str] = "agent_started"
    pid: int
    sweep_id: str


@dataclass(frozen=True)
class AgentRegistered(Event):
    """``wandb.agent`` registered with the sweep server (CreateAgent answered)."""

    type: ClassVar[str] = "agent_registered"
    agent_id: str


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run_id: str
    name: str
    config: dict
    dir: str | None = None
    url: str | None = None
    pid: int | None = None  # the process the run ran in (its own with isolate="run" and for programs)


@dataclass(frozen=True)
class Metrics(Event):
    """The latest value of each logged key since the last Metrics event of the run."""

    type: ClassVar[str] = "metrics"
    run_id: str
    step: int | None
    values: dict


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    run_id: str
    state: str  # finished | failed | killed | crashed
    exit_code: int | None
    summary: dict
    duration: float | None
    error: str | None = None  # the traceback text when the function raised


@dataclass(frozen=True)
class AgentExiting(Event):
    """``wandb.agent`` returned (or raised); the process is about to exit."""

    type: ClassVar[str] = "agent_exiting"
    reason: str
    error: str | None = None


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should be told once, e.g. a named degradation on this wandb
    ("live detail off ...").  Views show each distinct text once per session."""

    type: ClassVar[str] = "notice"
    text: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (AgentStarted, AgentRegistered, RunStarted, Metrics, RunFinished, AgentExiting, Notice)
}


def parse_line(line: bytes | str) -> Event | None:
    """The event on one wire line, or None for a line that is not one we know."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
        return None
    cls = EVENT_TYPES.get(body.get("type"))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in body.items() if k in names})
    except TypeError:
        return None
