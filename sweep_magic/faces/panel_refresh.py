"""The panel's one refresher thread and its message counter.

Why a single thread with a budget: agents can change state hundreds of times a
second, and every widget trait set is a comm message through the kernel's iopub
socket.  Updating widgets straight from the supervisor's thread per event floods
the frontend and races with the kernel (ipywidgets#4001, #3260).  So:

    supervisor thread ──subscribe cb──► mark_dirty()  (sets a flag, nothing else)
                                             │
    refresher thread  ◄──────────────────────┘  at most one pass per ``interval``
        render() → {widget: {trait: value}}     (desired state, from snapshots)
        send only what differs from the widget, oldest-updated first,
        within a sliding budget of ``max_rate`` messages per second.

Whatever the budget leaves out stays different and goes in a later pass, so
coalescing is automatic: a value that changed ten times in between is sent once.
``PanelStats`` counts every message a panel widget sends (including echoes of
the user's own edits), which is what the budget is checked against.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class PanelStats:
    """Counters the tests and the benchmark read: ``panel.stats.messages_sent``."""

    messages_sent: int = 0
    passes: int = 0  # render passes the refresher made
    deferred: int = 0  # widget updates postponed because the budget was spent
    errors: int = 0
    last_error: str | None = None
    times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self) -> None:
        with self.lock:
            self.messages_sent += 1
            self.times.append(time.monotonic())

    def sent_within(self, seconds: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self.lock:
            return sum(1 for t in self.times if now - t < seconds)

    def max_in_window(self, seconds: float = 1.0, since: float = 0.0) -> int:
        """The most messages sent in any window of ``seconds`` (sliding), counting from ``since``."""
        with self.lock:
            times = [t for t in self.times if t >= since]
        return max_in_window(times, seconds)


def max_in_window(times: list[float], seconds: float = 1.0) -> int:
    """The most of the sorted ``times`` that fall in any sliding window of ``seconds``."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def count_messages(widget, stats: PanelStats) -> None:
    """Count every comm message ``widget`` sends (state updates and echoes).

    ``Widget._send`` is the one place ipywidgets 8 sends an update; wrapping it
    on the instance counts even when there is no frontend (a dummy comm), so
    tests without a kernel see the same figure a live notebook would.
    """
    original = widget._send
    if getattr(original, "counted_by", None) is stats:
        return  # counted already (a form widget the panel also lists): once per message

    def _send(msg, buffers=None):
        stats.record()
        return original(msg, buffers=buffers)

    _send.counted_by = stats
    widget._send = _send


Desired = dict  # {widget: (priority, {trait: value})}


class Refresher:
    """One thread that brings widgets to the state ``render()`` describes, within a budget."""

    def __init__(
        self,
        render: Callable[[], Desired],
        stats: PanelStats,
        *,
        max_rate: float = 10.0,
        interval: float = 0.2,
        poll: float = 1.0,
        keep_running: Callable[[], bool] = lambda: True,
        name: str = "sweep_magic-panel",
    ):
        self._render = render
        self.stats = stats
        self.max_rate = max_rate
        self.interval = interval
        self.poll = poll  # a pass at least this often even without mark_dirty (clocks, GPUs)
        self.age_per_priority = 0.4  # seconds of waiting one priority step is worth
        self._keep_running = keep_running
        self._cond = threading.Condition()
        self._dirty = True
        self._stopped = False
        self._last_sent: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def mark_dirty(self) -> None:
        """Safe from any thread, cheap: the supervisor's callback calls only this."""
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def stop(self, join: bool = True) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if join and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        last_pass = 0.0
        while True:
            with self._cond:
                # Sleep until marked dirty or the poll comes due; never pass twice within
                # ``interval`` — that bound, with the budget, is what caps the rate.
                while not self._stopped:
                    now = time.monotonic()
                    due = last_pass + (self.interval if self._dirty else self.poll)
                    if now >= due:
                        break
                    self._cond.wait(timeout=due - now)
                if self._stopped:
                    return
                self._dirty = False
            last_pass = time.monotonic()
            try:
                pending = self.run_pass()
            except Exception:  # noqa: BLE001 - a refresher that dies silently is a frozen panel: record, go on
                self.stats.errors += 1
                self.stats.last_error = traceback.format_exc()
                pending = False
            if pending:
                self.mark_dirty()
            elif not self._keep_running():
                return

    def run_pass(self) -> bool:
        """One pass: send what differs, within budget. Returns True if some was deferred."""
        self.stats.passes += 1
        desired = self._render()
        changes = []
        for widget, (priority, traits) in desired.items():
            diff = {k: v for k, v in traits.items() if getattr(widget, k) != v}
            if diff:
                # Longest-waiting first, with ``priority`` seconds of handicap: buttons and
                # the header go before tables, yet a table that keeps losing to a busy agent
                # row still gets its turn within a second or two (no starvation).
                rank = self._last_sent.get(id(widget), 0.0) + self.age_per_priority * priority
                changes.append((rank, id(widget), widget, diff))
        if not changes:
            return False
        changes.sort(key=lambda c: c[:2])
        # Counted over 1.1 s rather than 1 s: messages reach the frontend with some
        # jitter, and the bound should hold on the wire too, not only at the sender.
        budget = int(self.max_rate) - self.stats.sent_within(1.1)
        for n, (_, key, widget, diff) in enumerate(changes):
            if budget <= 0:
                self.stats.deferred += len(changes) - n
                return True
            before = self.stats.messages_sent
            with widget.hold_sync():  # all traits of one widget in one message
                for name, value in diff.items():
                    setattr(widget, name, value)
            budget -= max(self.stats.messages_sent - before, 1)
            self._last_sent[key] = time.monotonic()
        return False
