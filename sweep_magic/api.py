"""The public Python API: ``launch(...) -> SweepSession``, ``sessions()``, ``stop_all()``.

Everything the magic does goes through here, and works the same without IPython::

    import sweep_magic
    sweep_id = sweep_magic.local_sweep({"method": "grid", ...}, project="p")
    session = sweep_magic.launch(train, sweep_id, cpus=2)
    session.wait()
    session.results()        # [{"run_id", "agent", "config", "state", "summary", "duration", ...}]

``launch`` checks everything it can before a process starts (the function, the
count, the placement, the sweep and the login), then builds one ``WorkerSpec``
per placement slot and hands them to a ``Supervisor``.  A sweep made by
``local_sweep`` runs against the embedded server (offline runs, no account);
any other id runs against the user's W&B server with the user's login.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time

from sweep_magic import _function, _target
from sweep_magic._target import Target
from sweep_magic.errors import SweepMagicError, SweepNotFound
from sweep_magic.snapshot import AgentSnapshot, SessionSnapshot

_sessions: list[SweepSession] = []
_sessions_lock = threading.Lock()
_numbers = itertools.count(1)


class SweepSession:
    """A running (or finished) group of agents working on one sweep; made by ``launch``."""

    def __init__(self, supervisor, *, id: str, sweep_id: str, dir: str, target: Target):
        self.id = id
        self.sweep_id = sweep_id
        self.dir = dir  # logs/ and the offline runs (WANDB_DIR) of this session
        self.local = target.local  # the target itself is not kept: its env holds the API key
        self._supervisor = supervisor
        self._subscribers: list = []
        self._sub_lock = threading.Lock()

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

    def stop(self, drain: bool = False) -> None:
        """Stop every agent: now (the runs are killed), or with ``drain=True`` after their current run."""
        self._supervisor.stop(drain=drain)

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
        with self._sub_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _changed(self) -> None:
        with self._sub_lock:
            callbacks = list(self._subscribers)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a broken view must not break supervision
                pass

    # --- faces -------------------------------------------------------------------------
    def show(self, *, widget: bool | None = None):
        """Show the session live: the panel in a notebook, text elsewhere (also in plain Python)."""
        from sweep_magic import _display

        return _display.show(self, widget=widget)

    def _ipython_display_(self) -> None:
        self.show()

    def _repr_pretty_(self, p, cycle) -> None:
        from sweep_magic import text

        p.text(text.render(self.snapshot()))

    def __str__(self) -> str:
        from sweep_magic import text

        return text.render(self.snapshot())

    def __repr__(self) -> str:
        snap = self.snapshot()
        done = sum(1 for r in snap.runs if r.state != "running")
        return f"<SweepSession {self.id} sweep={self.sweep_id} {snap.state}: {len(snap.agents)} agents, {done} runs done>"


def launch(
    function,
    sweep_id: str,
    *,
    gpus=None,
    cpus=None,
    agents_per_gpu: int = 1,
    count: int | None = None,
    project: str | None = None,
    entity: str | None = None,
    nice: int | None = None,
) -> SweepSession:
    """Start agents that run ``function`` for the sweep ``sweep_id``; returns at once.

    ``gpus``/``cpus``/``agents_per_gpu`` say where agents go (see ``devices.plan``);
    ``count`` is the number of runs per agent (``wandb.agent(count=...)``), None for
    as many as the sweep hands out.  ``nice`` (0..19, opt-in) lowers the agents' CPU
    priority — each worker, what it starts, its wandb-core, and their sessions'
    autogroup nice on Linux — so the kernel stays responsive while they saturate the
    machine; None or 0 leaves it as it is.  Raises a ``SweepMagicError`` subclass with a
    one-line message, before any process starts, for every input it can check.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise SweepMagicError(f"count must be a whole number ≥ 1 (runs per agent), got {count!r}")
    if nice is not None and (isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19):
        raise SweepMagicError(f"nice must be a whole number from 0 to 19 (19 = lowest priority), got {nice!r}")
    if not isinstance(sweep_id, str) or not sweep_id.strip():
        raise SweepNotFound(f"a sweep id is a non-empty string, got {sweep_id!r}")
    payload = _function.prepare(function)
    from sweep_magic import devices

    slots = devices.plan(gpus=gpus, cpus=cpus, agents_per_gpu=agents_per_gpu)
    target = _target.resolve(sweep_id.strip(), project, entity)

    number = next(_numbers)
    session_id = f"s{number}"
    session_dir = _session_dir(session_id)
    log_dir = os.path.join(session_dir, "logs")
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    if target.local:
        # Runs that cannot report through the side channel are read from their files here.
        from sweep_magic.server import local_server

        add = getattr(local_server(), "add_wandb_dir", None)
        if callable(add):
            add(session_dir)

    from sweep_magic.supervisor import Supervisor
    from sweep_magic.worker import WorkerSpec  # the process layer's; imported only when used

    base_env = dict(target.env, WANDB_DIR=session_dir)
    if target.project:
        base_env["WANDB_PROJECT"] = target.project
    if target.entity:
        base_env["WANDB_ENTITY"] = target.entity
    # Entity/project the target does not set must not be inherited from the kernel either.
    remove = list(target.remove_env) + [k for k in ("WANDB_PROJECT", "WANDB_ENTITY") if k not in base_env]

    def spec_for_slot(slot) -> WorkerSpec:
        return WorkerSpec(
            function_pickle=payload,
            sweep_id=target.sweep_id,
            count=count,
            project=target.project,
            entity=target.entity,
            env={**base_env, **slot.env},
            remove_env=list(remove),
            cpus=list(slot.cpus) if slot.cpus is not None else None,
            metric_name=target.metric_name,
            report_url=target.report_url,
            heartbeat_seconds=target.heartbeat_seconds,
            nice=nice or None,
        )

    holder: dict = {}
    supervisor = Supervisor(
        spec_for_slot,
        slots,
        session_id=session_id,
        sweep_id=target.sweep_id,
        log_dir=log_dir,
        metric_name=target.metric_name,
        metric_goal=target.metric_goal,
        # The session does not exist yet when the supervisor is built; changes before
        # it does have no subscriber to tell anyway.
        on_change=lambda: holder["s"]._changed() if "s" in holder else None,
    )
    session = SweepSession(supervisor, id=session_id, sweep_id=target.sweep_id, dir=session_dir, target=target)
    holder["s"] = session
    with _sessions_lock:
        _sessions.append(session)
    try:
        supervisor.start()
    except BaseException:
        supervisor.stop()
        with _sessions_lock:
            _sessions.remove(session)
        raise
    return session


def sessions() -> list[SweepSession]:
    """The sessions this process launched, newest last."""
    with _sessions_lock:
        return list(_sessions)


def stop_all(drain: bool = False) -> None:
    """Stop every session of this process (called at exit and when the extension unloads)."""
    for session in sessions():
        try:
            if not session.done:
                session.stop(drain=drain)
        except Exception:  # keep stopping the others
            pass


atexit.register(stop_all)


def get_session(ref: str | int | None = None) -> SweepSession:
    """A session by id (``"s2"``), number (``2``), or sweep id; the newest when ``ref`` is None."""
    found = sessions()
    if not found:
        raise SweepMagicError("no sweep sessions in this process yet")
    if ref is None or ref == "":
        return found[-1]
    text = str(ref).strip()
    for session in reversed(found):
        if text in (session.id, session.id.lstrip("s"), session.sweep_id):
            return session
    known = ", ".join(s.id for s in found)
    raise SweepMagicError(f"no session {text!r} (sessions: {known})")


def _session_dir(session_id: str) -> str:
    home = os.environ.get("SWEEP_MAGIC_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "sweep_magic")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(home, "sessions", f"{stamp}-{os.getpid()}-{session_id}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
