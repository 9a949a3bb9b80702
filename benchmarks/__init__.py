"""sweep_magic benchmarks: ``python -m benchmarks [--quick] [--out DIR]`` (see the README's Benchmarks section).

One module per benchmark, each with ``run(bench) -> dict``; ``__main__`` runs them in this
order, in one process, against one embedded server, and writes results.json / results.md.
"""

from __future__ import annotations

import importlib


class _Lazy(dict):
    """name → module, imported on first use (``run_gap.py``/``panel_rate.py`` stay importable alone)."""

    def __getitem__(self, name):
        return importlib.import_module(f"benchmarks.{dict.__getitem__(self, name)}")


BENCHMARKS = _Lazy(
    wall_time="wall_time",
    run_gap="gap",
    start_latency="start_latency",
    kernel_flood="kernel_flood",
    memory="memory",
    cpu_bound="cpu_bound",
    server_load="server_load",
    isolate_gap="isolate_gap",
    ray_latency="ray_latency",
)
