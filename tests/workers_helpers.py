"""Shared pieces of the process-layer tests: a real embedded server, real workers.

Functions under test are defined in the test modules; ``pickle_by_value`` ships them
the way a notebook's functions travel (by value), since a test module is not
something a worker should import.
"""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import psutil
import pytest

from sweep_magic import devices
from sweep_magic.agents.supervisor import Supervisor
from sweep_magic.protocol.spec import WorkerSpec

QUIET = {  # what the spec builder sets for embedded-server sweeps (cheap workers on a shared machine)
    "WANDB__DISABLE_STATS": "true",
    "WANDB__DISABLE_MACHINE_INFO": "true",
    "WANDB__SAVE_REQUIREMENTS": "false",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_SILENT": "true",
}


@pytest.fixture
def server(tmp_path):
    from sweep_magic.server import serve

    srv = serve(db=str(tmp_path / "server.sqlite3"))
    try:
        yield srv
    finally:
        srv.stop()


def pickle_by_value(function) -> bytes:
    module = sys.modules[function.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(function)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def grid_sweep(server, values, metric="loss") -> str:
    config = {
        "method": "grid",
        "metric": {"name": metric, "goal": "minimize"},
        "parameters": {"x": {"values": list(values)}},
    }
    return server.create_sweep(config, project="p")


def spec_builder(server, function, sweep_id, wandb_dir, *, count=None, metric="loss"):
    payload = pickle_by_value(function)

    def spec_for_slot(slot):
        return WorkerSpec(
            function_pickle=payload,
            sweep_id=sweep_id,
            count=count,
            project="p",
            env={**server.env(), **QUIET, "WANDB_DIR": str(wandb_dir), **slot.env},
            cpus=list(slot.cpus) if slot.cpus is not None else None,
            metric_name=metric,
            report_url=server.url,
            heartbeat_seconds=0.5,
        )

    return spec_for_slot


def start(server, function, tmp_path, values, *, agents=2, count=None, max_restarts=3, slots=None, on_change=None):
    """A started Supervisor running ``function`` over a grid of ``x`` in ``values``."""
    sweep_id = grid_sweep(server, values)
    (tmp_path / "wandb").mkdir(exist_ok=True)
    if slots is None:
        slots = devices.plan(cpus=agents)
    supervisor = Supervisor(
        spec_builder(server, function, sweep_id, tmp_path, count=count),
        slots,
        session_id="s1",
        sweep_id=sweep_id,
        log_dir=str(tmp_path / "logs"),
        metric_name="loss",
        metric_goal="minimize",
        max_restarts=max_restarts,
        on_change=on_change,
    )
    supervisor.start()
    return supervisor


def wait_for(predicate, timeout: float, what: str = "condition", supervisor=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    detail = ""
    if supervisor is not None:
        snap = supervisor.snapshot()
        detail = "\n" + "\n".join(f"{a}" for a in snap.agents) + "\n" + "\n".join(f"{r}" for r in snap.runs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


def our_processes(before: set[int] = frozenset()) -> list[psutil.Process]:
    """Live descendants of this test process (except the pids in ``before``: other tests'
    long-lived fixtures) plus the wandb-core sidecars they own."""
    from sweep_magic._testing import sidecars_of

    kids = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and _alive(p)]
    cores = [c for p in kids for c in sidecars_of(p.pid) if c.pid not in {k.pid for k in kids}]
    return kids + [c for c in cores if _alive(c)]


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def log_text(supervisor, i: int) -> str:
    path = supervisor.snapshot().agents[i].log_path
    return open(path, encoding="utf-8", errors="replace").read() if path and os.path.exists(path) else ""


def stop_decisions(monkeypatch) -> dict:
    """``{run id: time.monotonic()}`` of the moment this process's embedded server decided to
    stop each run (hyperband): the stop command goes out in that very heartbeat reply."""
    from sweep_magic.server import local_server

    store = local_server().controller.store
    decided: dict = {}
    update_run = store.update_run

    def spy(run_id, **fields):
        if fields.get("should_stop"):
            decided.setdefault(run_id, time.monotonic())
        return update_run(run_id, **fields)

    monkeypatch.setattr(store, "update_run", spy)
    return decided
