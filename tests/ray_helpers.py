"""Shared pieces of the Ray tests (``tests/ray/``): the network-namespace check, and what a
test looks for on "every node" — the nodes of a one-host test cluster are processes here."""

from __future__ import annotations

import os
import socket
import time

import psutil


def only_loopback() -> bool:
    """True inside a network namespace of our own (``unshare -n``): Ray then binds 127.0.0.1."""
    try:
        return [name for _i, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def ray_installed() -> bool:
    import importlib.util

    # A bare `tests/ray` folder can pass for a namespace package named ray: ask for a file.
    spec = importlib.util.find_spec("ray")
    return spec is not None and spec.origin is not None


def agent_processes(home: str) -> list[psutil.Process]:
    """Workers and wandb-cores of sessions under ``home`` (SWEEP_MAGIC_HOME), on any node.

    Found by their WANDB_DIR (inside the session's folder), not by parentage: a worker whose
    actor died is re-parented to init, and wandb-core runs in a session of its own."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        is_worker = "sweep_magic.worker" in cmd
        is_core = bool(cmd) and "wandb-core" in os.path.basename(cmd[0])
        if not (is_worker or is_core):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            wandb_dir = proc.environ().get("WANDB_DIR", "")
        except psutil.Error:
            continue
        if wandb_dir.startswith(home):
            found.append(proc)
    return found


def wait_for(predicate, timeout: float, step: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


def live_actors(job_hex: str | None = None) -> list[dict]:
    """sweep_magic's actors (hosts and gateways) not DEAD, from the GCS actor table."""
    from ray._private import state

    out = []
    for info in state.actors().values():
        if info.get("ActorClassName") in ("AgentHost", "Gateway") and info.get("State") != "DEAD":
            if job_hex is None or info.get("JobID") == job_hex:
                out.append(info)
    return out


def live_placement_groups() -> list[dict]:
    import ray

    return [pg for pg in ray.util.placement_group_table().values() if pg.get("state") != "REMOVED"]
