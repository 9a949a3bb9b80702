"""sweep_magic: run W&B sweep agents in parallel from one Jupyter cell.

Public API (imported lazily so ``%load_ext sweep_magic`` stays cheap)::

    sweep_magic.local_server()        # the embedded sweep server of this process
    sweep_magic.local_sweep(config, project="p")  -> sweep id
    sweep_magic.launch(function, sweep_id, gpus=..., cpus=..., count=...)  -> SweepSession
    sweep_magic.sessions()            # this process's sessions, newest last
    sweep_magic.ray_nodes()           # a Ray cluster's nodes: what launch(backend="ray", gpus={node: N}) names
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "local_server": ("sweep_magic.server", "local_server"),
    "local_sweep": ("sweep_magic.server", "local_sweep"),
    "launch": ("sweep_magic.api", "launch"),
    "sessions": ("sweep_magic.api", "sessions"),
    "ray_nodes": ("sweep_magic.api", "ray_nodes"),
    "stop_all": ("sweep_magic.api", "stop_all"),
    "SweepSession": ("sweep_magic.api", "SweepSession"),
}

__all__ = sorted(_LAZY) + ["load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sweep_magic' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    from sweep_magic.agents import warm
    from sweep_magic.magic import register

    register(ipython)
    warm.warm_up()  # the zygote imports wandb while the user writes the sweep config


def unload_ipython_extension(ipython) -> None:
    from sweep_magic.magic import unregister

    unregister(ipython)
