"""Fixtures shared by every test layer.

The autouse ``no_orphans`` fixture is the product's promise in test form: after
every test, no process started during it may still be alive (workers, their
wandb-core sidecars, kernels, servers, browsers).
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from sweep_magic._testing import sidecars_of


def _descendants() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(pids: set[int]) -> list[psutil.Process]:
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wandb_core_of(pids: set[int]) -> set[int]:
    """wandb-core runs in its own session with ``--pid <owner>``: not our child, but ours."""
    return {proc.pid for proc in sidecars_of(*pids)}


def _own_sidecars() -> set[int]:
    """The test process's own wandb-core (from wandb.Api() in a test) lives as long as pytest."""
    return _wandb_core_of({os.getpid()})


@pytest.fixture(scope="session", autouse=True)
def warm_start_server():
    """This process's zygote (agents/warm.py) lives for the whole test session, as it lives
    for a kernel: started before any test, so no test counts it as its leftover."""
    from sweep_magic.agents import warm

    zygote = warm.warm_up()
    if zygote is not None:
        zygote.wait_ready(60)
    yield zygote
    warm.shut_down()


def _current_zygote() -> set[int]:
    """The zygote lives as long as its kernel (here: the test session), whichever test
    happened to start it; only this one, the current, is not a leftover."""
    from sweep_magic.agents import warm

    zygote = warm.current()
    return {zygote.proc.pid} if zygote is not None else set()


@pytest.fixture(autouse=True)
def no_orphans(request, warm_start_server):
    before = _descendants()
    seen: set[int] = set()
    yield
    # Everything that became our descendant during the test, plus sidecars owned by them.
    seen = _descendants() - before
    seen |= _wandb_core_of(seen)
    seen -= before | _own_sidecars() | _current_zygote()
    deadline = time.monotonic() + 15
    leftovers = _alive(seen)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _alive(seen)
    if leftovers:
        desc = [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in leftovers if p.is_running()]
        for p in leftovers:
            try:
                p.kill()
            except psutil.Error:
                pass
        if desc:
            pytest.fail(f"processes left behind by {request.node.name}: {desc}")


@pytest.fixture(autouse=True)
def fresh_module_state(no_orphans, tmp_path_factory, monkeypatch):
    """Each test gets its own sweep_magic home and starts with no sessions and no shared server.

    Depends on ``no_orphans`` so that it tears down first: sessions and the shared server are
    stopped before the orphan check looks for survivors.
    """
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path_factory.mktemp("sweep-magic-home")))
    yield
    from sweep_magic._testing import reset

    reset()
