"""The terminal face: a session followed live in a terminal, then its table of runs, best first.

Two forms, chosen by the stream (``live=None``):

* a TTY: one bounded block redrawn in place — the header, one status line per agent, the
  latest ended runs, a footer (the CLI's Ctrl-C hint) — at most every ``REFRESH_SECONDS``,
  with cursor-up / erase-line sequences, never taller than the window (lines past the top of
  the screen cannot be reached with the cursor, and a redraw would then smear), lines cut to
  the window's width (a wrapped line would throw the count off the same way);
* anything else (a pipe, a file, CI logs): plain appended lines, ``text.event_lines`` as the
  text face streams them in plain Python, no escape codes, and the header again after
  ``PROGRESS_SECONDS`` of quiet so a log shows the sweep is alive.

The view draws only when its owner calls ``update(snapshot)`` — the CLI's main thread, which
also handles Ctrl-C — so there is no thread here and no write can interleave with another.
``note()`` writes a message (stderr, most often the same terminal) above the block and redraws
it, so the block's line count stays true.  Everything comes from ``SessionSnapshot``s.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque

from sweep_magic.faces import text
from sweep_magic.faces.fmt import fmt_value
from sweep_magic.snapshot import RUN_ENDED, AgentSnapshot, SessionSnapshot

CSI = "\x1b["
REFRESH_SECONDS = 0.25  # ≤ 4 redraws a second, however fast the snapshots change
PROGRESS_SECONDS = 60.0  # plain output: the header again after this long without a line
MAX_AGENT_LINES = 16  # more agents collapse into "… N more agents"
LATEST_RUNS = 5
LIVE_TABLE_ROWS = 50  # on a terminal; plain output (a log, a file) gets every run


def is_live(stream) -> bool:
    """A stream that shows cursor movement: a TTY whose TERM is not "dumb"."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


def agent_status(snap: SessionSnapshot, agent: AgentSnapshot, runs: dict) -> str:
    """One line for an agent, whatever its state: its run and step, idle, done, failed …"""
    label = text.agent_label(agent)
    run = runs.get(agent.current_run) if agent.current_run else None
    if run is not None and run.state == "running":
        step = f" step {run.step}" if run.step is not None else ""
        value = run.metric(snap.metric_name)
        metric = f"  {snap.metric_name}={fmt_value(value)}" if value is not None else ""
        return f"  {label} running {run.run_id}{step}{metric}  {text.fmt_config(run.config)}".rstrip()
    return "  " + (text.agent_line(agent) or f"{label} {agent.state}")


def block(snap: SessionSnapshot, latest, footer: str = "", rows: int = 24) -> list[str]:
    """The live block, at most ``rows - 1`` lines: the header and footer always, then the agents
    (up to ``MAX_AGENT_LINES``), then as many of the latest runs as the window has room for."""
    runs = {r.run_id: r for r in snap.runs}
    agents = [agent_status(snap, a, runs) for a in snap.agents]
    room = max(3, rows - 1) - 1 - (1 if footer else 0)
    n = min(len(agents), MAX_AGENT_LINES, room)
    if len(agents) > n:
        agents = agents[: n - 1] + [f"  … {len(agents) - n + 1} more agents"]
    left = room - len(agents)  # one line for the "latest:" label, the rest for runs
    shown = list(latest)[-(left - 1):] if latest and left >= 2 else []
    lines = [text.header(snap), *agents]
    if shown:
        lines += ["  latest:", *("    " + line for line in shown)]
    if footer:
        lines.append(footer)
    return lines


class TerminalView:
    """Follows snapshots onto ``stream``: redrawn in place on a TTY, appended lines elsewhere."""

    def __init__(self, stream=None, *, live: bool | None = None, size=None):
        self._out = stream if stream is not None else sys.stdout
        self.live = is_live(self._out) if live is None else live
        self._size = size or (lambda: tuple(shutil.get_terminal_size((100, 24))))
        self.footer = ""  # the owner's line under the block (the Ctrl-C hint)
        self._prev: SessionSnapshot | None = None
        self._latest: deque[str] = deque(maxlen=LATEST_RUNS)
        self._drawn = 0  # lines of the block now on the screen, the cursor just below them
        self._shown: list[str] = []
        self._last_draw = float("-inf")
        self._last_write = time.monotonic()
        self._started = False

    # --- the owner's calls ----------------------------------------------------------------
    def update(self, snap: SessionSnapshot, *, force: bool = False) -> None:
        """Take a new snapshot; draw if the rate allows (``force``: now)."""
        prev, self._prev = self._prev, snap
        fresh = prev is None or snap.version != prev.version
        if not self.live:
            lines = text.event_lines(prev, snap) if fresh else []
            if not self._started:
                lines.insert(0, text.header(snap))
                self._started = True
            elif not lines and time.monotonic() - self._last_write >= PROGRESS_SECONDS:
                lines = [text.header(snap)]
            if lines:
                self._write("\n".join(lines) + "\n")
            return
        if fresh:
            self._latest.extend(_ended_lines(prev, snap))
        now = time.monotonic()
        if force or now - self._last_draw >= REFRESH_SECONDS:
            self._last_draw = now
            self._draw(block(snap, self._latest, self.footer, self._rows()))

    def note(self, message: str, stream=None) -> None:
        """A line for the user (on ``stream``, stderr by default) above the live block."""
        stream = stream if stream is not None else sys.stderr
        if self.live and self._drawn:
            shown = self._shown
            self._erase()
            _write_to(stream, message.rstrip("\n") + "\n")
            self._draw(shown)
        else:
            _write_to(stream, message.rstrip("\n") + "\n")

    def finish(self, snap: SessionSnapshot) -> None:
        """The last word: the block (or the last events) gives way to the header and the table."""
        if self.live:
            self._prev = snap
            self._erase()
            table = text.table(snap, limit=LIVE_TABLE_ROWS)
            if len(snap.runs) > LIVE_TABLE_ROWS:  # text.table's own hint names the Python API
                table = "\n".join(table.splitlines()[:-1] + [
                    f"… {len(snap.runs) - LIVE_TABLE_ROWS} more runs (--plain, or a pipe, prints them all)"])
            self._write(f"{text.header(snap)}\n\n{table}\n")
        else:
            self.update(snap)
            self._write(f"\n{text.header(snap)}\n{text.table(snap, limit=None)}\n")

    # --- drawing --------------------------------------------------------------------------
    def _rows(self) -> int:
        return max(4, int(self._size()[1]))

    def _draw(self, lines: list[str]) -> None:
        cols = max(20, int(self._size()[0]))
        lines = [_cut(line, cols - 1) for line in lines]
        out = [f"\r{CSI}{self._drawn}A"] if self._drawn else []
        out += [f"{CSI}2K{line}\n" for line in lines]
        out.append(f"{CSI}J")  # a shorter block than the last leaves nothing behind
        self._write("".join(out))
        self._drawn, self._shown = len(lines), lines

    def _erase(self) -> None:
        if self._drawn:
            self._write(f"\r{CSI}{self._drawn}A{CSI}J")
            self._drawn = 0

    def _write(self, data: str) -> None:
        _write_to(self._out, data)
        self._last_write = time.monotonic()


def _ended_lines(prev: SessionSnapshot | None, cur: SessionSnapshot) -> list[str]:
    before = {r.run_id: r.state for r in prev.runs} if prev else {}
    return [
        text.run_ended_line(cur, run)
        for run in cur.runs
        if run.state in RUN_ENDED and before.get(run.run_id) not in RUN_ENDED
    ]


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def _write_to(stream, data: str) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (OSError, ValueError):  # a closed pipe (`| head`) must not take the agents down with it
        pass
