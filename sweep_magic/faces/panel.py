"""The widget face of a ``SweepSession``: device picker, form, live agents and results.

Layout of a panel (ipywidgets 8)::

    header      sweep id · state · agents · runs · best · elapsed
    error       the last failed action, in red, until the next one succeeds
    form        sweep / project / function / count / GPUs or CPU agents   (show_panel only)
    buttons     [Start] [Stop all]
    agents      one row per agent + [drain] [kill] [restart] [log]  (log tail folds out)
    results     runs ranked by the sweep metric, best starred | SVG chart with best-so-far

The panel only reads ``SessionSnapshot``s and calls the public API (``launch``,
``session.stop``, ``session.drain_agent`` …); GPU figures come from
``devices.gpu_inventory()``.  Every widget update goes through one refresher
thread per panel (``_panel_refresh``) with a budget of ``max_rate`` messages a
second; the supervisor's ``subscribe`` callback only marks the panel dirty.
"""

from __future__ import annotations

import threading
import time
import traceback

from sweep_magic.errors import SweepMagicError
from sweep_magic.faces.kernel import shell as _current_shell
from sweep_magic.faces.kernel import widgets_available
from sweep_magic.faces.panel_html import (
    agent_row_html,
    agents_header_html,
    chart_svg,
    error_html,
    header_html,
    log_html,
    results_html,
)

__all__ = ["SessionPanel", "show_panel", "panel_for", "widgets_available"]

_PANELS: dict = {}  # session id -> SessionPanel: showing a session twice shows one live widget
_PANELS_LOCK = threading.RLock()  # panel_for builds under it and __init__ registers


def panel_for(session, **kwargs) -> SessionPanel:
    """The one panel of ``session`` (built on first use), so every display of it stays live."""
    with _PANELS_LOCK:
        panel = _PANELS.get(session.id)
        if panel is None or panel.closed:
            panel = SessionPanel(session, **kwargs)
        return panel


def show_panel(shell=None, *, launch, local_sweep, cluster=None, ray_address=None, **defaults) -> SessionPanel:
    """``%sweep_parallel`` with nothing said: display a panel whose form asks for the rest.

    ``defaults`` pre-fill the form: ``sweep_id``, ``function`` (a name or the callable),
    ``gpus`` (indices to tick), ``agents_per_gpu``, ``cpus`` (agents), ``count``,
    ``project``.  ``launch`` and ``local_sweep`` are what Start calls (``sweep_magic.launch``
    and ``sweep_magic.local_sweep``): given, so that this face never imports the core.
    ``cluster`` (a callable returning a Ray cluster's ``ClusterNode`` records, such as
    ``lambda: sweep_magic.ray_nodes(address)``) turns the devices part into the cluster's
    nodes with a checkbox per GPU, and Start launches on Ray (at ``ray_address``).
    Displays the panel and returns it: keep the handle, do not display it again.
    """
    from IPython.display import display

    panel = SessionPanel(None, shell=shell, form=True, launch=launch, local_sweep=local_sweep, cluster=cluster,
                         ray_address=ray_address, **defaults)
    display(panel)
    return panel


class SessionPanel:
    """Widgets over a session's snapshots; ``display(panel)`` or ``panel.widget``."""

    def __init__(
        self,
        session=None,
        *,
        inventory=None,
        launch=None,
        local_sweep=None,
        shell=None,
        form: bool | None = None,
        max_rate: float = 10.0,
        interval: float = 0.2,
        gpu_poll: float = 3.0,
        start: bool = True,
        cluster=None,
        ray_address: str | None = None,
        **defaults,
    ):
        try:
            import ipywidgets as W
        except ImportError:
            raise SweepMagicError(
                "the panel needs ipywidgets (pip install 'ipywidgets>=8'); the text face works without: print(session)"
            ) from None

        from sweep_magic.faces.panel_refresh import PanelStats, Refresher, count_messages

        self._W = W
        self.stats = PanelStats()
        self._count = lambda w: (count_messages(w, self.stats), w)[1]
        self._inventory = inventory if callable(inventory) or inventory is None else (lambda inv=list(inventory): inv)
        self._launch = launch
        self._local_sweep = local_sweep
        self._cluster = cluster
        self.shell = shell if shell is not None else _current_shell()
        self.max_rate, self.interval, self.gpu_poll = max_rate, interval, gpu_poll
        self.session = None
        self.closed = False
        self._error: str | None = None
        self._note = ""
        self._busy = False  # a Start or Stop in progress: both buttons off meanwhile
        self._last_gpu_poll = 0.0
        self._lock = threading.RLock()
        self._rows: list[_AgentRow] = []
        self._rows_session = None
        self._tables = (None, "", "")  # (snapshot key, results html, chart svg)
        self._gpu_desired: dict = {}

        c = self._count
        self.header = c(W.HTML(header_html(None)))
        self.error = c(W.HTML(""))
        self.start_button = c(W.Button(
            description="Start", button_style="success", icon="play", disabled=True,
            tooltip="start agents with these settings"))
        self.stop_button = c(W.Button(
            description="Stop all", button_style="danger", icon="stop", disabled=True,
            tooltip="stop every agent of this sweep now"))
        self.start_button.on_click(self._guard(self._on_start))
        self.stop_button.on_click(self._guard(self._on_stop))
        self.agents_box = c(W.VBox([_AgentRow.header(W)]))
        # Stable class names: the browser test (and users' CSS) find the parts by them.
        for w, name in ((self.header, "header"), (self.error, "error"), (self.agents_box, "agents")):
            w.add_class(f"sweep-magic-{name}")
        self.results = c(W.HTML(results_html(None), layout=W.Layout(flex="1 1 60%")))
        self.chart = c(W.HTML("", layout=W.Layout(flex="0 0 auto")))
        self.results.add_class("sweep-magic-results")
        self.chart.add_class("sweep-magic-chart")

        self.form = None
        if form or (form is None and session is None):
            from sweep_magic.faces.panel_form import PanelForm

            if cluster is not None:
                self.form = PanelForm([], shell=self.shell, defaults=defaults, cluster=self._read_cluster(),
                                      ray_address=ray_address, count=c)
            else:
                self.form = PanelForm(self._read_inventory(), shell=self.shell, defaults=defaults, count=c)
            for w in [*self.form.input_widgets(), *self.form.gpu_labels]:
                c(w)
            self._last_gpu_poll = time.monotonic()
            self.form.cpu_agents.observe(lambda _change: self._wake(), names="value")
            if self.shell is not None and hasattr(self.shell, "events"):
                self.shell.events.register("post_run_cell", self._after_cell)

        parts = [self.header, self.error]
        if self.form is not None:
            parts.append(self.form.widget())
        parts += [
            # A session's own panel (launched elsewhere) has nothing to start: Stop all only.
            W.HBox([self.start_button, self.stop_button] if self.form is not None else [self.stop_button]),
            W.HTML("<b>agents</b>"),
            self.agents_box,
            W.HTML("<b>results</b>"),
            W.HBox([self.results, self.chart]),
        ]
        self.widget = W.VBox(parts, layout=W.Layout(border="1px solid #ddd", padding="6px"))
        self.widget.add_class("sweep-magic-panel")
        self._refresher = None
        self._make_refresher = lambda: Refresher(
            self._render, self.stats, max_rate=self.max_rate, interval=self.interval,
            poll=1.0, keep_running=self._keep_running,
        )
        if session is not None:
            self._attach(session)
        if start:
            self._wake()

    # ------------------------------------------------------------ display & lifetime

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # Where the widget cannot render (a saved notebook, nbconvert) the text face shows
        # instead of ipywidgets' "VBox(children=...)".
        if isinstance(bundle, dict) and "text/plain" in bundle:
            bundle["text/plain"] = self._text()
        return bundle

    def _text(self) -> str:
        if self.session is None:
            return "sweep_magic panel (needs a notebook with widgets)"
        try:
            from sweep_magic.faces import text

            return text.render(_snapshot(self.session))
        except Exception:  # noqa: BLE001 — a fallback must not fail the display
            return repr(self)

    def __repr__(self) -> str:
        sid = getattr(self.session, "id", None)
        return f"<SessionPanel session={sid!r} messages_sent={self.stats.messages_sent}>"

    def close(self) -> None:
        """Stop refreshing and close the widgets (the session itself keeps running)."""
        self.closed = True
        self._unsubscribe()
        if self._refresher is not None:
            self._refresher.stop()
        if self.form is not None and self.shell is not None and hasattr(self.shell, "events"):
            try:
                self.shell.events.unregister("post_run_cell", self._after_cell)
            except ValueError:
                pass
        with _PANELS_LOCK:
            for key, panel in list(_PANELS.items()):
                if panel is self:
                    del _PANELS[key]
        _close_tree(self.widget)

    def refresh(self) -> None:
        """Ask for a redraw soon (any thread)."""
        self._wake()

    def _wake(self) -> None:
        if self.closed:
            return
        with self._lock:
            if self._refresher is None or not self._refresher.alive:
                self._refresher = self._make_refresher()
                self._refresher.start()
            else:
                self._refresher.mark_dirty()

    def _keep_running(self) -> bool:
        # A form panel keeps its GPU figures fresh; a session-only panel stops once the
        # session has ended and its last state has been sent (a click wakes it again).
        if self.closed:
            return False
        if self.form is not None and self.form.polls:
            return True
        session = self.session
        return session is not None and not _snapshot(session).done

    def _attach(self, session) -> None:
        self.session = session
        with _PANELS_LOCK:
            _PANELS[session.id] = self
        self._unsubscribe()
        subscribe = getattr(session, "subscribe", None)
        if subscribe is not None:
            # Called from a supervisor thread: mark dirty, nothing more (no widget work there).
            self._unsub = subscribe(lambda *_args, s=session: self._wake() if s is self.session else None)
        self._wake()

    def _unsubscribe(self) -> None:
        unsub, self._unsub = getattr(self, "_unsub", None), None
        if callable(unsub):
            unsub()

    # ------------------------------------------------------------ actions

    def _guard(self, action):
        """Button callbacks: a failure is shown in the panel, never swallowed."""

        def run(*args):
            # Cleared before, not after: an action that hands work to a thread (Stop all)
            # may report its failure from there while this returns.
            self._error = None
            try:
                action(*args)
            except SweepMagicError as err:
                self._error = str(err)
            except Exception as err:  # noqa: BLE001 — shown to the user, with its traceback
                tb = traceback.format_exc(limit=6)
                self._error = f"{type(err).__name__}: {err}\n{tb}"
            self._wake()

        return run

    def start(self) -> object:
        """What Start does: launch with the form's settings; returns the new session."""
        if self.form is None:
            raise SweepMagicError("This panel shows one session; use %sweep_parallel to start another.")
        if self.session is not None and not _snapshot(self.session).done:
            raise SweepMagicError("A sweep is already running in this panel: stop it first.")
        self._busy = True
        self._note = "starting…"
        self._wake()
        try:
            if self._launch is None or self._local_sweep is None:
                raise SweepMagicError("this panel was built without launch/local_sweep: use %sweep_parallel")
            session = self._launch(**self.form.launch_kwargs(self._local_sweep))
        finally:
            self._busy = False
            self._note = ""
        self._attach(session)
        return session

    def stop(self, wait: bool = False) -> None:
        """What Stop all does: stop the session's agents (in a thread, so the kernel stays free)."""
        session = self.session
        if session is None:
            return
        self._busy = True
        self._note = "stopping…"

        def stopping():
            try:
                session.stop()
            except Exception as err:  # noqa: BLE001
                self._error = f"stop failed: {type(err).__name__}: {err}"
            finally:
                self._busy = False
                self._note = ""
                self._wake()

        thread = threading.Thread(target=stopping, name="sweep_magic-panel-stop", daemon=True)
        thread.start()
        self._wake()
        if wait:
            thread.join()

    def _on_start(self, _button) -> None:
        self.start()

    def _on_stop(self, _button) -> None:
        self.stop()

    def _after_cell(self, *_args) -> None:
        # Runs on the kernel's main thread between cells: the namespace is stable here.
        if self.form is not None and not self.closed:
            self.form.refresh_functions()
            self._wake()

    def _read_inventory(self) -> list:
        fn = self._inventory if self._inventory is not None else _shared_inventory
        try:
            return list(fn())
        except Exception as err:  # noqa: BLE001 — no GPU figures is not worth a broken panel
            self._error = f"GPU inventory failed: {type(err).__name__}: {err}"
            return []

    def _read_cluster(self) -> list:
        try:
            return list(self._cluster())
        except Exception as err:  # noqa: BLE001 - shown in the panel; the last known nodes stay
            self._error = f"the Ray cluster could not be read: {type(err).__name__}: {err}"
            return [row.node for row in self.form.node_rows] if self.form is not None else []

    # ------------------------------------------------------------ rendering (refresher thread)

    def _render(self) -> dict:
        """The state every widget should be in, with a priority each (0 goes first):
        0 header and Start/Stop, 1 agent rows and results, 2 chart, per-agent buttons
        and logs, 3 GPU figures.  The refresher sends what differs."""
        session = self.session
        snap = _snapshot(session) if session is not None else None
        running = snap is not None and not snap.done
        desired = {
            self.header: (0, {"value": header_html(snap, self._note)}),
            self.error: (0, {"value": error_html(self._error)}),
            self.start_button: (0, {"disabled": self.form is None or running or self._busy}),
            self.stop_button: (0, {"disabled": not running or self._busy}),
        }
        if snap is not None:
            self._sync_rows(session, snap)
            runs = {run.run_id: run for run in snap.runs}
            for row, agent in zip(self._rows, snap.agents):
                desired.update(row.desired(agent, runs.get(agent.current_run), running))
            key = (snap.session_id, snap.version)
            if self._tables[0] != key:  # ranking and the SVG only when the snapshot changed
                self._tables = (key, results_html(snap), chart_svg(snap))
            desired[self.results] = (1, {"value": self._tables[1]})
            desired[self.chart] = (2, {"value": self._tables[2]})
        if self.form is not None and self.form.polls and time.monotonic() - self._last_gpu_poll >= self.gpu_poll:
            self._last_gpu_poll = time.monotonic()
            if self.form.ray:
                self._gpu_desired = self.form.update_nodes(self._read_cluster())
            else:
                self._gpu_desired = self.form.update_gpus(self._read_inventory())
        if self.form is not None:
            # Kept between polls so figures the budget postponed still go out next pass.
            for w, traits in {**self._gpu_desired, **self.form.desired()}.items():
                desired[w] = (3, traits)
        return desired

    def _sync_rows(self, session, snap) -> None:
        """One row per agent; rows are rebuilt when the panel moves to a new session."""
        if self._rows_session is session and len(self._rows) >= len(snap.agents):
            return
        if self._rows_session is not session:
            old, self._rows = self._rows, []
            for row in old:
                _close_tree(row.box)
            self._rows_session = session
        while len(self._rows) < len(snap.agents):
            self._rows.append(_AgentRow(self, len(self._rows)))
        self.agents_box.children = [self.agents_box.children[0], *(row.box for row in self._rows)]


_BUTTON_WIDTH = "6.5em"


class _AgentRow:
    """One agent: its figures, its buttons, and its log tail behind a toggle."""

    def __init__(self, panel: SessionPanel, index: int):
        W, c = panel._W, panel._count
        self.panel, self.index = panel, index
        small = W.Layout(width=_BUTTON_WIDTH, height="24px")
        self.html = c(W.HTML(layout=W.Layout(flex="1 1 auto")))
        self.drain = c(W.Button(description="drain", tooltip="finish the current run, then exit", layout=small))
        self.kill = c(W.Button(description="kill", tooltip="stop this agent now", layout=small))
        self.restart = c(W.Button(description="restart", tooltip="kill and start afresh", layout=small))
        self.log_toggle = c(W.ToggleButton(description="log", tooltip="show the log tail", layout=small))
        self.log = c(W.HTML(""))
        self.drain.on_click(panel._guard(lambda _b: panel.session.drain_agent(index)))
        self.kill.on_click(panel._guard(lambda _b: panel.session.kill_agent(index)))
        self.restart.on_click(panel._guard(lambda _b: panel.session.restart_agent(index)))
        self.log_toggle.observe(lambda _change: panel._wake(), names="value")
        self.box = W.VBox([W.HBox([self.html, self.drain, self.kill, self.restart, self.log_toggle]), self.log])

    @staticmethod
    def header(W):
        """The column titles, in the same HBox shape as a row so the CSS grids line up:
        the same flexible HTML cell, and hidden stand-ins as wide as the four buttons."""
        spacers = [W.Button(layout=W.Layout(width=_BUTTON_WIDTH, height="1px", visibility="hidden")) for _ in range(4)]
        return W.HBox([W.HTML(agents_header_html(), layout=W.Layout(flex="1 1 auto")), *spacers])

    def desired(self, agent, run, running: bool) -> dict:
        ended = agent.ended
        return {
            self.html: (1, {"value": agent_row_html(agent, run)}),
            self.drain: (2, {"disabled": ended or agent.state == "draining" or not running}),
            self.kill: (2, {"disabled": ended or not running}),
            self.restart: (2, {"disabled": not running}),
            self.log: (2, {"value": log_html(agent) if self.log_toggle.value else ""}),
        }


_INVENTORY_CACHE: list = [0.0, []]  # [monotonic time read, records]
_INVENTORY_LOCK = threading.Lock()


def _shared_inventory(max_age: float = 2.0) -> list:
    """``devices.gpu_inventory()`` read at most every ``max_age`` s for all panels together:
    panels left behind in old cells keep polling, and should not each ask NVML."""
    with _INVENTORY_LOCK:
        if time.monotonic() - _INVENTORY_CACHE[0] >= max_age:
            from sweep_magic.devices import gpu_inventory

            _INVENTORY_CACHE[:] = [time.monotonic(), list(gpu_inventory())]
        return _INVENTORY_CACHE[1]


def _snapshot(session):
    return session.snapshot()


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()) or ():
        _close_tree(child)
    widget.close()
