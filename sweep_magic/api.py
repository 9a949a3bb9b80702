"""The public Python API: ``launch(...) -> SweepSession``, ``sessions()``, ``stop_all()``.

Everything the magic does goes through here, and works the same without IPython::

    import sweep_magic
    sweep_id = sweep_magic.local_sweep({"method": "grid", ...}, project="p")
    session = sweep_magic.launch(train, sweep_id, cpus=2)
    session.wait()
    session.results()        # [{"run_id", "agent", "config", "state", "summary", "duration", ...}]

    sweep_magic.launch(train, sweep_id, cpus=2, isolate="run")  # each run in a fresh process
    sweep_magic.launch(None, program_sweep_id, cpus=2)          # the sweep's `program:` per run

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

from sweep_magic import payload
from sweep_magic import target as targets
from sweep_magic.errors import SweepMagicError, SweepNotFound
from sweep_magic.options import valid_count, valid_nice
from sweep_magic.paths import home
from sweep_magic.protocol.spec import ISOLATE_MODES
from sweep_magic.session import Subscribers, SweepSession

_sessions: list[SweepSession] = []
_sessions_lock = threading.Lock()
_numbers = itertools.count(1)


def launch(
    function,
    sweep_id: str,
    *,
    gpus=None,
    cpus=None,
    agents_per_gpu: int = 1,
    cpus_per_agent: int | None = None,
    count: int | None = None,
    project: str | None = None,
    entity: str | None = None,
    nice: int | None = None,
    isolate: str = "agent",
    backend: str | None = None,
    ray_address: str | None = None,
) -> SweepSession:
    """Start agents that run ``function`` for the sweep ``sweep_id``; returns at once.

    ``gpus``/``cpus``/``agents_per_gpu`` say where agents go (see ``devices.plan``);
    ``count`` is the number of runs per agent (``wandb.agent(count=...)``), None for
    as many as the sweep hands out.  ``nice`` (0..19, opt-in) lowers the agents' CPU
    priority — each worker, what it starts, its wandb-core, and their sessions'
    autogroup nice on Linux — so the kernel stays responsive while they saturate the
    machine; None or 0 leaves it as it is.

    ``isolate``: ``"agent"`` (default) runs every run of an agent in the agent's own
    process, as ``wandb.agent`` does; ``"run"`` runs each run's function in a fresh child
    process (forked from a pre-imported fork server), so memory — GPU memory included —
    and globals a run holds on to die with it, and a run killed by the out-of-memory
    killer is just a ``crashed`` run (see docs/isolation.md).

    ``function=None`` runs a *program sweep*: the sweep config's ``program:`` (or
    ``command:``) is executed for each run exactly as the ``wandb agent`` CLI would, one
    fresh process per run, with live metrics when the program is Python.

    Raises a ``SweepMagicError`` subclass with a one-line message, before any process
    starts, for every input it can check.

    ``backend="ray"`` (implied by ``ray_address``) runs the agents on a Ray cluster (see
    ``agents/ray.py`` and docs/ray.md): ``ray_address`` is what ``ray.init(address=...)``
    takes, None for this process's Ray or else ``"auto"``; ``gpus=N`` then counts GPUs
    across the cluster (``"all"``: all of them), ``gpus={node: N, ...}`` asks for N GPUs on
    each named node (see ``ray_nodes()``), ``agents_per_gpu=k`` shares each by k, and
    ``cpus_per_agent=c`` (Ray only; default 1) has each agent reserve c CPUs and cap its
    thread pools to c.
    """
    if not valid_count(count):
        raise SweepMagicError(f"count must be a whole number ≥ 1 (runs per agent), got {count!r}")
    if not valid_nice(nice):
        raise SweepMagicError(f"nice must be a whole number from 0 to 19 (19 = lowest priority), got {nice!r}")
    if isolate not in ISOLATE_MODES:
        raise SweepMagicError(f"isolate must be one of {', '.join(map(repr, ISOLATE_MODES))}, got {isolate!r}")
    if not isinstance(sweep_id, str) or not sweep_id.strip():
        raise SweepNotFound(f"a sweep id is a non-empty string, got {sweep_id!r}")
    backend = backend or ("ray" if ray_address is not None else "local")
    if backend not in ("local", "ray"):
        raise SweepMagicError(f"backend must be 'local' or 'ray', not {backend!r}")
    if backend == "ray":
        return _launch_ray(function, sweep_id, gpus=gpus, cpus=cpus, agents_per_gpu=agents_per_gpu,
                           cpus_per_agent=cpus_per_agent, count=count,
                           project=project, entity=entity, nice=nice, ray_address=ray_address, isolate=isolate)
    function_pickle = payload.prepare(function) if function is not None else b""
    from sweep_magic import devices

    slots = devices.plan(gpus=gpus, cpus=cpus, agents_per_gpu=agents_per_gpu, cpus_per_agent=cpus_per_agent)
    target = targets.resolve(sweep_id.strip(), project, entity)
    _check_program(function, target, sweep_id)
    return _start(function_pickle, slots, target, count=count, nice=nice, isolate=isolate)


def ray_nodes(ray_address: str | None = None) -> list:
    """The Ray cluster's nodes as ``ClusterNode`` records (id, address, hostname, GPUs, free
    GPUs, CPUs, alive), live ones first: what ``launch(backend="ray", gpus={node: N})`` can
    name, and what the panel shows as checkboxes.  Connects as ``launch`` does."""
    from sweep_magic.agents import ray as ray_agents

    ray_agents.connect(ray_address)
    return ray_agents.nodes()


def ray_connected() -> bool:
    """Whether this process already has a Ray cluster connected (never imports Ray)."""
    from sweep_magic.agents import ray as ray_agents

    return ray_agents.connected()


def _check_program(function, target, sweep_id: str) -> None:
    if function is None and not (target.program or target.command):
        raise SweepMagicError(
            f"no function given, and sweep {sweep_id!r} has no `program:` or `command:` in its config "
            "to run instead: pass the function to run"
        )


def _launch_ray(function, sweep_id: str, *, gpus, cpus, agents_per_gpu, cpus_per_agent, count, project, entity, nice,
                ray_address, isolate) -> SweepSession:
    from sweep_magic.agents import ray as ray_agents
    from sweep_magic.agents import ray_ship

    ray_agents.check_request(gpus, cpus, agents_per_gpu, cpus_per_agent)
    function_pickle = ray_ship.pickle_function(function) if function is not None else b""  # local modules by value
    target = targets.resolve(sweep_id.strip(), project, entity)
    _check_program(function, target, sweep_id)
    client = ray_agents.connect(ray_address)
    if client and target.local:
        raise SweepMagicError(
            "a local sweep cannot run through Ray Client (ray://): its server is on this machine's loopback; "
            "run the notebook on a node of the cluster (ray_address='auto' or 'HOST:PORT')"
        )
    placement = ray_agents.place(gpus=gpus, cpus=cpus, agents_per_gpu=agents_per_gpu, cpus_per_agent=cpus_per_agent)
    try:
        backend = ray_agents.RayBackend(placement, server_url=target.report_url)
    except BaseException:
        placement.release()
        raise
    try:
        return _start(function_pickle, placement.slots, target, count=count, nice=nice, isolate=isolate,
                      backend=backend)
    except BaseException:
        backend.close()
        raise


def _start(function_pickle: bytes, slots, target, *, count, nice, isolate, backend=None) -> SweepSession:
    session_id = f"s{next(_numbers)}"
    session_dir = _session_dir(session_id)
    log_dir = os.path.join(session_dir, "logs")
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    if target.local and backend is None:
        # Runs that cannot report through the side channel are read from their files here
        # (remote nodes' files are not on this machine: they report every run).
        from sweep_magic.server import local_server

        local_server().add_wandb_dir(session_dir)

    from sweep_magic.agents.supervisor import Supervisor
    from sweep_magic.protocol.spec import WorkerSpec

    base_env, remove = target.worker_env(session_dir)

    def spec_for_slot(slot) -> WorkerSpec:
        return WorkerSpec(
            function_pickle=function_pickle,
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
            isolate=isolate,
            program=target.program,
            command=list(target.command) if target.command else None,
        )

    changes = Subscribers()
    if backend is not None:
        spec_for_slot = backend.for_slots(spec_for_slot)
    supervisor = Supervisor(
        spec_for_slot,
        slots,
        session_id=session_id,
        sweep_id=target.sweep_id,
        log_dir=log_dir,
        metric_name=target.metric_name,
        metric_goal=target.metric_goal,
        on_change=changes.fire,
        backend=backend,
    )
    if backend is not None and hasattr(backend, "close"):

        def release_when_done() -> None:
            # Once every agent has ended: the placement group and the gateway go.
            if supervisor.snapshot().done:
                backend.close()

        changes.add(release_when_done)
    session = SweepSession(supervisor, changes, id=session_id, sweep_id=target.sweep_id, dir=session_dir,
                           local=target.local)
    with _sessions_lock:
        _sessions.append(session)
    if target.local and _has_an_end(target.sweep_id):
        _release_idle_agents_when_done(session, changes, target.sweep_id)
    try:
        supervisor.start()
    except BaseException:
        supervisor.stop()
        with _sessions_lock:
            _sessions.remove(session)
        raise
    return session


def _has_an_end(sweep_id: str) -> bool:
    """A grid, or a sweep with a run cap: one that can run out of work.  (Asking whether a
    random or bayes sweep has anything left would run its engine for nothing.)"""
    from sweep_magic.server import local_server

    config = local_server().sweep_info(sweep_id).get("config") or {}
    return config.get("method") == "grid" or bool(config.get("run_cap"))


def _release_idle_agents_when_done(session: SweepSession, changes: Subscribers, sweep_id: str) -> None:
    """Let idle agents go the moment the local sweep has nothing left, rather than at their
    next heartbeat: the server is in this process and says so when a run ends.  (A W&B sweep
    gives no such word; its agents leave on their next heartbeat, as with wandb agent.)"""
    from sweep_magic.server import local_server

    changed = threading.Event()
    remove = changes.add(changed.set)

    def watch() -> None:
        pause = 0.5
        try:
            while not session.done:
                changed.wait(pause)
                changed.clear()
                snap = session.snapshot()
                idle = [a.index for a in snap.agents if a.state == "idle"]
                if not idle or all(r.state == "running" for r in snap.runs):
                    pause = 0.5
                    continue
                # A run's end reaches the server's finalizer a moment after its event reaches
                # us: look again soon while agents wait.
                pause = 0.1
                if local_server().nothing_left(sweep_id):
                    for index in idle:
                        session.drain_agent(index)  # idle: it exits at once, as on "exit"
                    return
        except Exception:  # noqa: BLE001 - an optimisation: the heartbeat's exit still comes
            return
        finally:
            remove()

    threading.Thread(target=watch, name=f"sweep-magic-{session.id}-release", daemon=True).start()


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
        except Exception:  # noqa: BLE001 - keep stopping the others
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(home(), "sessions", f"{stamp}-{os.getpid()}-{session_id}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
