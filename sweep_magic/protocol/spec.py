"""``WorkerSpec``: everything a worker needs, written by the kernel side as a 0600
cloudpickle file that the worker reads and deletes at once (it may hold an API key)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSpec:
    function_pickle: bytes
    sweep_id: str
    count: int | None = None
    project: str | None = None
    entity: str | None = None
    env: dict = field(default_factory=dict)  # final overrides: WANDB_* and slot vars
    remove_env: list = field(default_factory=list)
    cpus: list[int] | None = None
    metric_name: str | None = None
    report_url: str | None = None  # the embedded server's URL when the side channel exists
    heartbeat_seconds: float = 5.0
    nice: int | None = None  # opt-in: lower this agent and its wandb-core (process and session)
