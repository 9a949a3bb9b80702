"""Follow a session to its end in the terminal: the terminal face, Ctrl-C, the exit code.

    main thread                                  supervisor threads
    ───────────                                  ──────────────────
    loop: wake.wait(POLL_SECONDS) ◄──── set ──── session.subscribe(wake.set)
          take the signals counted since ◄────── SIGINT / SIGTERM handler (counts, nothing else)
          view.update(session.snapshot())
          until the snapshot is done
    stopper thread: session.stop(drain=True, timeout=None)   (first Ctrl-C)
    stopper thread: session.stop()                           (second Ctrl-C, or SIGTERM)

The handler only counts: it runs in the main thread between any two bytecodes, maybe while
that thread holds a lock it would need (an Event's, the supervisor's), and ``stop`` blocks
for as long as the runs take.  So the loop acts on the count, and stopping happens in a
thread of its own while the view keeps drawing the drain as it goes.
"""

from __future__ import annotations

import signal
import sys
import threading

from sweep_magic.faces.terminal import TerminalView

POLL_SECONDS = 0.1  # how soon a Ctrl-C is acted on; the view bounds its own redraw rate

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143

HINT = "Ctrl-C: finish the runs in progress and stop · twice: stop now"
DRAINING = "draining: the runs in progress finish, no new ones start · Ctrl-C again: stop now"
STOPPING = "stopping now: the runs in progress are killed"


class _Signals:
    """Counts SIGINT and SIGTERM while installed; the previous handlers come back on ``restore``."""

    def __init__(self):
        self.interrupts = 0
        self.terminated = False
        self._old = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGTERM:
            self.terminated = True
        else:
            self.interrupts += 1


def follow(session, *, live: bool | None = None, out=None, err=None) -> int:
    """Show ``session`` until every agent has ended; the process's exit code.

    0: the agents ended normally; 1: no run finished and some failed (or every agent failed);
    130: stopped by Ctrl-C (drained or not); 143: stopped by SIGTERM.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    view = TerminalView(out, live=live)
    view.footer = HINT if view.live else ""
    wake = threading.Event()
    unsubscribe = session.subscribe(wake.set)
    signals = _Signals()
    signals.install()
    acted, stopping, stoppers = 0, False, []

    def stop_in_thread(**how) -> None:
        thread = threading.Thread(target=session.stop, kwargs=how, name="sweep-magic-cli-stop", daemon=True)
        thread.start()
        stoppers.append(thread)

    try:
        if not view.live and _isatty(err):  # piped output, a person at the keyboard: say it once
            view.note(f"sweep-magic: {HINT}", err)
        while True:
            wake.wait(POLL_SECONDS)
            wake.clear()
            if (signals.interrupts >= 2 or signals.terminated) and not stopping:
                stopping = True
                view.footer = STOPPING
                view.note(f"sweep-magic: {STOPPING}", err)
                stop_in_thread()
            elif signals.interrupts == 1 and acted == 0:
                view.footer = DRAINING
                view.note(f"sweep-magic: {DRAINING}", err)
                stop_in_thread(drain=True, timeout=None)
            elif signals.interrupts > 2 and acted != signals.interrupts:
                view.note("sweep-magic: still stopping (SIGINT, then SIGTERM, then SIGKILL within 15 s)", err)
            acted = signals.interrupts
            snap = session.snapshot()
            view.update(snap)
            if snap.done:
                break
        for thread in stoppers:
            thread.join(timeout=30)
        view.finish(session.snapshot())
        _write(out, f"agent logs and run folders: {session.dir}\n")
    finally:
        unsubscribe()
        signals.restore()
        if not session.done:  # the view itself failed: the agents must not outlive this command
            session.stop()
    if signals.terminated:
        return EXIT_TERMINATED
    if signals.interrupts:
        return EXIT_INTERRUPTED
    why = session.failures() or _agents_failed(session.snapshot())
    if why:
        _write(err, f"sweep-magic: {why}\n")
        return EXIT_FAILED
    return EXIT_OK


def _agents_failed(snap) -> str | None:
    """One line when no run was even handed out and every agent failed (a bad sweep, a missing
    hook): the agents did not end normally, though no run failed."""
    if snap.runs or not snap.agents or any(a.state != "failed" for a in snap.agents):
        return None
    first = snap.agents[0]
    return f"every agent failed and no run started; agent {first.index}: {first.reason or 'failed'}"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _write(stream, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass
