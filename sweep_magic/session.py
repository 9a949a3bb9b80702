"""``SweepSession``: the handle ``launch`` returns and the faces hold.

It reads the supervisor's immutable snapshots, forwards control (stop, drain, kill,
restart) and tells subscribers that something changed.  Showing it goes through the one
display entry, ``faces.show``; the session knows no face beyond that.
"""

from __future__ import annotations

import threading

from sweep_magic.errors import SweepFailed, last_line
from sweep_magic.snapshot import AgentSnapshot, SessionSnapshot


class Subscribers:
    """Callbacks told of every change, from the supervisor's threads.  Made before both
    the supervisor (which fires it) and the session (which lets views subscribe)."""

    def __init__(self):
        self._callbacks: list = []
        self._lock = threading.Lock()

    def add(self, callback):
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def fire(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a broken view must not break supervision
                pass


def failure_line(snapshot: SessionSnapshot) -> str | None:
    """One line for a sweep in which nothing finished and something failed: runs that failed
    or crashed, or, with no run at all, agents that could not run (a bad sweep, a wandb
    this version cannot hook).  None while anything finished, or nothing went wrong."""
    runs = snapshot.runs
    if any(r.state == "finished" for r in runs):
        return None
    bad = [r for r in runs if r.state in ("failed", "crashed")]
    if bad:
        first = bad[0]
        why = last_line(first.error) or first.state
        return f"{len(bad)} of {len(runs)} runs failed and none finished; first ({first.run_id}): {why}"
    failed = [a for a in snapshot.agents if a.state == "failed"]
    if not runs and failed:
        why = last_line(failed[0].reason) or "failed"
        return f"no run started: {len(failed)} of {len(snapshot.agents)} agents failed; first (agent {failed[0].index}): {why}"
    return None


class SweepSession:
    """A running (or finished) group of agents working on one sweep; made by ``launch``."""

    def __init__(self, supervisor, changes: Subscribers, *, id: str, sweep_id: str, dir: str, local: bool):
        self.id = id
        self.sweep_id = sweep_id
        self.dir = dir  # logs/ and the offline runs (WANDB_DIR) of this session
        self.local = local  # the target itself is not kept: its env holds the API key
        self._supervisor = supervisor
        self._changes = changes

    # --- state -------------------------------------------------------------------------
    def snapshot(self) -> SessionSnapshot:
        return self._supervisor.snapshot()

    @property
    def done(self) -> bool:
        return self.snapshot().done

    def results(self) -> list[dict]:
        """One plain dict per run, in start order (see ``RunSnapshot.as_result``)."""
        return [run.as_result() for run in self.snapshot().runs]

    def agents(self) -> list[AgentSnapshot]:
        return list(self.snapshot().agents)

    # --- control -----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until every agent has ended (True) or ``timeout`` passed (False).

        Ctrl-C stops the agents (what ran so far stays in ``results()``) and re-raises.
        """
        try:
            return self._supervisor.wait(timeout)
        except KeyboardInterrupt:
            self.stop()
            raise

    def failures(self) -> str | None:
        """Why the sweep failed as a whole, or None: when no run finished and at least one
        failed or crashed (mixed outcomes are not a failure of the sweep)."""
        return failure_line(self.snapshot())

    def raise_for_failures(self) -> None:
        """Raise ``SweepFailed`` (one line) when no run finished and some failed or crashed.

        For scripts and CI: ``session.wait(); session.raise_for_failures()``."""
        line = self.failures()
        if line is not None:
            raise SweepFailed(line)

    def stop(self, drain: bool = False, timeout: float | None = 15.0) -> None:
        """Stop every agent: now (the runs are killed), or with ``drain=True`` after their current run.

        A drain waits up to ``timeout`` seconds for the runs (None: as long as they take; the
        terminal's first Ctrl-C) before stopping the rest now."""
        self._supervisor.stop(drain=drain, timeout=timeout)

    def drain_agent(self, i: int) -> None:
        self._supervisor.drain_agent(i)

    def kill_agent(self, i: int) -> None:
        self._supervisor.kill_agent(i)

    def restart_agent(self, i: int) -> None:
        self._supervisor.restart_agent(i)

    def subscribe(self, callback):
        """Call ``callback()`` (from a supervisor thread) on every change; returns an unsubscribe function.

        Views must only mark themselves dirty here and redraw from their own refresher.
        """
        return self._changes.add(callback)

    # --- faces -------------------------------------------------------------------------
    def show(self, *, widget: bool | None = None):
        """Show the session live: the panel in a notebook, text elsewhere (also in plain Python)."""
        from sweep_magic.faces import show

        return show.show(self, widget=widget)

    def _ipython_display_(self) -> None:
        self.show()

    def _repr_pretty_(self, p, cycle) -> None:
        from sweep_magic.faces import show

        p.text(show.render(self.snapshot()))

    def __str__(self) -> str:
        from sweep_magic.faces import show

        return show.render(self.snapshot())

    def __repr__(self) -> str:
        snap = self.snapshot()
        done = sum(1 for r in snap.runs if r.state != "running")
        return f"<SweepSession {self.id} sweep={self.sweep_id} {snap.state}: {len(snap.agents)} agents, {done} runs done>"
