"""The text face of a sweep session: what terminal IPython, nbconvert and logs show.

Everything here is a pure function of ``SessionSnapshot``s, except ``TextView``,
which follows a live session from ONE refresher thread at a bounded rate and
hands text to a sink: a display handle in a kernel (updated in place, so the
text stays in the cell that launched the sweep even after it returned), or a
stream in terminal IPython and plain Python.  Never ``print`` from a background
thread in a kernel: the text lands in whichever cell ran last (docs/architecture.md).

    [agent 0 · cpu 0] run k3x9 started  lr=0.01 batch=32
    [agent 0 · cpu 0] run k3x9 finished in 4.1s  loss=0.231  lr=0.01 batch=32
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sweep_magic.errors import last_line
from sweep_magic.faces.fmt import fmt_seconds, fmt_value
from sweep_magic.snapshot import AgentSnapshot, RunSnapshot, SessionSnapshot

MAX_LOG_LINES = 200  # what a live display keeps; older lines collapse into "… N earlier lines"
REFRESH_SECONDS = 0.5  # ≤ 2 display updates a second, however fast workers log
MAX_TABLE_ROWS = 50  # a 5,000-run sweep should not print 5,000 lines into a cell


def fmt_config(config: dict, limit: int = 8) -> str:
    items = [f"{k}={fmt_value(v)}" for k, v in sorted(config.items())]
    if len(items) > limit:
        items = items[:limit] + [f"(+{len(items) - limit})"]
    return " ".join(items)


def agent_label(agent: AgentSnapshot | None, index: int | None = None) -> str:
    if agent is None:
        return f"[agent {index}]"
    where = f" @ {agent.node}" if agent.node else ""  # a Ray node; "" = this machine
    return f"[agent {agent.index} · {agent.device}{where}]"


def _metric_part(snap: SessionSnapshot, run: RunSnapshot) -> str:
    value = run.metric(snap.metric_name)
    return f"  {snap.metric_name}={fmt_value(value)}" if value is not None else ""


def run_started_line(snap: SessionSnapshot, run: RunSnapshot) -> str:
    return f"{agent_label(_agent(snap, run.agent), run.agent)} run {run.run_id} started  {fmt_config(run.config)}".rstrip()


def run_ended_line(snap: SessionSnapshot, run: RunSnapshot) -> str:
    head = f"{agent_label(_agent(snap, run.agent), run.agent)} run {run.run_id} {run.state}"
    if run.duration is not None:
        head += f" in {fmt_seconds(run.duration)}"
    line = f"{head}{_metric_part(snap, run)}  {fmt_config(run.config)}".rstrip()
    if run.error and run.state != "finished":
        line += f"  ({last_line(run.error)})"
    return line


def agent_line(agent: AgentSnapshot) -> str | None:
    """A line for an agent that reached a state worth telling, else None."""
    label = agent_label(agent)
    if agent.state == "exited":
        return f"{label} done after {agent.runs_done} run{'s' if agent.runs_done != 1 else ''}"
    if agent.state in ("failed", "killed"):
        why = f": {agent.reason}" if agent.reason else ""
        return f"{label} {agent.state}{why}"
    if agent.state == "restarting":
        why = f" ({agent.reason})" if agent.reason else ""
        return f"{label} restarting{why}"
    return None


def event_lines(prev: SessionSnapshot | None, cur: SessionSnapshot) -> list[str]:
    """One line per run/agent event between two snapshots of the same session."""
    lines: list[str] = [f"note: {text}" for text in cur.notices[len(prev.notices) if prev else 0 :]]
    before = {r.run_id: r for r in prev.runs} if prev else {}
    for run in cur.runs:
        old = before.get(run.run_id)
        if old is None:
            lines.append(run_started_line(cur, run))
        if run.state != "running" and (old is None or old.state == "running"):
            lines.append(run_ended_line(cur, run))
    old_agents = {a.index: a for a in prev.agents} if prev else {}
    for agent in cur.agents:
        old = old_agents.get(agent.index)
        changed = old is None or (old.state, old.restarts) != (agent.state, agent.restarts)
        if changed and (line := agent_line(agent)):
            lines.append(line)
    return lines


def header(snap: SessionSnapshot) -> str:
    done = sum(1 for r in snap.runs if r.state != "running")
    running = len(snap.runs) - done
    failed = sum(1 for r in snap.runs if r.state in ("failed", "crashed"))
    busy = sum(1 for a in snap.agents if not a.ended)
    parts = [
        f"sweep {snap.sweep_id}",
        f"session {snap.session_id}",
        snap.state,
        f"{busy}/{len(snap.agents)} agents active" if not snap.done else f"{len(snap.agents)} agents",
        f"{done} runs done" + (f", {running} running" if running else "") + (f", {failed} failed" if failed else ""),
    ]
    if snap.started_at:
        parts.append(fmt_seconds((snap.ended_at or time.time()) - snap.started_at))
    best = snap.best_run()
    if best is not None:
        parts.append(f"best {snap.metric_name}={fmt_value(best.metric(snap.metric_name))} ({best.run_id})")
    return " · ".join(parts)


def running_lines(snap: SessionSnapshot) -> list[str]:
    """What each busy agent is doing now (live displays only, not the streamed log)."""
    runs = {r.run_id: r for r in snap.runs}
    lines = []
    for agent in snap.agents:
        run = runs.get(agent.current_run) if agent.current_run else None
        if run is not None and run.state == "running":
            step = f" step {run.step}" if run.step is not None else ""
            lines.append(f"  {agent_label(agent)} running {run.run_id}{step}{_metric_part(snap, run)}")
        elif not agent.ended:
            lines.append(f"  {agent_label(agent)} {agent.state}")
    return lines


def table(snap: SessionSnapshot, limit: int | None = MAX_TABLE_ROWS) -> str:
    """The runs, best first by the sweep metric, as a fixed-width table (the best ``limit``)."""
    ranked = snap.ranked_runs()
    if not ranked:
        return "(no runs)"
    more = len(ranked) - limit if limit is not None and len(ranked) > limit else 0
    if more:
        ranked = ranked[:limit]
    keys = sorted({k for r in ranked for k in r.config})
    metric = snap.metric_name
    cols = ["#", "run", "agent", "state"] + ([metric] if metric else []) + ["time"] + keys
    rows = []
    for i, run in enumerate(ranked, 1):
        row = [str(i), run.run_id, str(run.agent), run.state]
        if metric:
            value = run.metric(metric)
            row.append(fmt_value(value) if value is not None else "-")
        row.append(fmt_seconds(run.duration))
        row += [fmt_value(run.config[k]) if k in run.config else "" for k in keys]
        rows.append(row)
    widths = [max(len(c), *(len(r[j]) for r in rows)) for j, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    if more:
        out.append(f"… {more} more runs: session.results() has them all")
    return "\n".join(line.rstrip() for line in out)


def render(snap: SessionSnapshot, log: list[str] | tuple[str, ...] = (), dropped: int = 0) -> str:
    """The whole text block: header, the event log, then live status or, once done, the table."""
    parts = [header(snap)]
    if dropped:
        parts.append(f"… {dropped} earlier lines")
    parts += list(log)
    if snap.done:
        parts += ["", table(snap)]
    else:
        parts += running_lines(snap)
    return "\n".join(parts)


class TextView:
    """Follows a session from one daemon thread and feeds text to a sink.

    ``sink`` gets the whole block (``render``) each refresh when ``whole=True``
    (a display handle that is replaced in place), else only the new lines, and
    the final table once (a terminal stream).  Snapshots are read at most every
    ``REFRESH_SECONDS``; the session's change callback only sets an event.
    """

    def __init__(self, session, sink: Callable[[str], None], *, whole: bool):
        self._session = session
        self._sink = sink
        self._whole = whole
        self._dirty = threading.Event()
        self._log: list[str] = []
        self._dropped = 0
        self._prev: SessionSnapshot | None = None
        self._thread: threading.Thread | None = None
        self._unsubscribe = None

    def start(self) -> TextView:
        self._unsubscribe = self._session.subscribe(self._dirty.set)
        self._refresh()  # the first block at once, from the caller's thread
        if not (self._prev and self._prev.done):
            self._thread = threading.Thread(target=self._loop, name=f"sweep_magic-text-{self._session.id}", daemon=True)
            self._thread.start()
        else:
            self._close()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while True:
                self._dirty.wait(REFRESH_SECONDS * 4)  # also refresh the clock now and then
                self._dirty.clear()
                if self._refresh():
                    break
                time.sleep(REFRESH_SECONDS)  # the rate bound
        finally:
            self._close()

    def _close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _refresh(self) -> bool:
        """Push what changed; True once the session is done and the last text is out."""
        snap = self._session.snapshot()
        if self._prev is not None and snap.version == self._prev.version and not self._whole:
            return snap.done
        new = event_lines(self._prev, snap)
        self._prev = snap
        try:
            if self._whole:
                self._log += new
                if len(self._log) > MAX_LOG_LINES:
                    self._dropped += len(self._log) - MAX_LOG_LINES
                    del self._log[: len(self._log) - MAX_LOG_LINES]
                self._sink(render(snap, self._log, self._dropped))
            else:
                text = "\n".join(new + (["", header(snap), table(snap)] if snap.done else []))
                if text:
                    self._sink(text + "\n")
        except Exception:  # noqa: BLE001 - a closed stream or a gone frontend must not kill the sweep
            return True
        return snap.done


def _agent(snap: SessionSnapshot, index: int) -> AgentSnapshot | None:
    for agent in snap.agents:
        if agent.index == index:
            return agent
    return None
