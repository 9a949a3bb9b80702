"""``WorkerSpec``: everything a worker needs, written by the kernel side as a 0600
cloudpickle file that the worker reads and deletes at once (it may hold an API key)."""

from __future__ import annotations

from dataclasses import dataclass, field

ISOLATE_MODES = ("agent", "run")


@dataclass
class WorkerSpec:
    function_pickle: bytes  # b"" for a program sweep (no function: the sweep's command runs)
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
    # "agent": every run in the worker's own interpreter (wandb.agent as shipped);
    # "run": each run's function in a child process of its own (worker.isolation).
    isolate: str = "agent"
    # Program sweeps (no function): the sweep config's `program` and `command`, run per run
    # exactly as the `wandb agent` CLI would (worker.program).
    program: str | None = None
    command: list | None = None

    @property
    def runs_program(self) -> bool:
        return not self.function_pickle
