"""The GPU checks of docs/GPU_CHECK.md, as one script for a machine with a real GPU.

Run it there once (see docs/GPU_CHECK.md for the wheels and the one command); it
prints every figure, writes them as JSON to ``$OUT/gpu_check.json`` when ``OUT``
is set, and exits 1 if any check failed.  It needs torch on that machine; the
development machines have no GPU, so nothing here runs in CI.

    1. inventory: name, memory, utilisation, and a torch process holding memory listed with its user
    2. placement: launch(gpus=[0], agents_per_gpu=2) → each run sees CUDA_VISIBLE_DEVICES, one device,
       allocates; NVML lists both worker pids on the GPU
    3. the kernel's own CUDA_VISIBLE_DEVICES given as the GPU's UUID: inventory and placement follow it
    4. release: after stop(), within 15 s, no worker pid on the GPU and used memory back to the baseline
    5. busy detection: a separate torch process holding memory makes the GPU count as busy
    6. a process per run: three runs each keeping 60% of the GPU in a global — in-process, run 2 and 3 hit
       out-of-memory; with isolate="run" all three finish, each in its own process (NVML shows its pid)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pynvml

import sweep_magic
from sweep_magic import devices

HOLDER = (
    "import time, torch; x = torch.empty(2 * 1024**3, dtype=torch.uint8, device='cuda'); "
    "print('ready', flush=True); time.sleep(600)"
)
results: dict[str, object] = {}
failures: list[str] = []


def check(name: str, ok: bool, **figures) -> None:
    results[name] = {"ok": ok, **figures}
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {json.dumps(figures, default=str)}", flush=True)
    if not ok:
        failures.append(name)


def nvml_state(index: int = 0) -> tuple[set[int], float]:
    """Pids with a context on GPU ``index`` (in NVML's own numbering) and its used memory in MiB."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    return {p.pid for p in procs}, used


def wait_until(predicate, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def check_inventory_and_busy() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        inventory = devices.gpu_inventory()
        gpu = inventory[0] if inventory else None
        listed = {p.pid: p for p in gpu.processes} if gpu else {}
        check(
            "1 inventory",
            bool(gpu) and gpu.memory_total_mib > 0 and holder.pid in listed,
            gpus=len(inventory),
            name=gpu and gpu.name,
            memory_used_mib=gpu and gpu.memory_used_mib,
            memory_total_mib=gpu and gpu.memory_total_mib,
            utilization_pct=gpu and gpu.utilization_pct,
            holder_pid=holder.pid,
            holder_listed=listed.get(holder.pid),
        )
        check(
            "5 busy detection",
            bool(gpu) and gpu.busy() and gpu.busy(my_user="somebody-else"),
            busy_any_process=gpu and gpu.busy(),
            busy_for_another_user=gpu and gpu.busy(my_user="somebody-else"),
            busy_for_the_holders_own_user=gpu and gpu.busy(my_user=listed[holder.pid].user) if holder.pid in listed else None,
        )
    finally:
        holder.kill()
        holder.wait()


def make_train(outdir: str, seconds: float):
    def train():
        import os
        import time

        import torch
        import wandb

        with wandb.init() as run:
            x = torch.ones(64 * 2**20, device="cuda")  # 256 MiB
            seen = {
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device_count": torch.cuda.device_count(),
                "sum": float(x.sum()),
            }
            with open(os.path.join(outdir, f"{run.id}.json"), "w") as f:
                json.dump(seen, f)
            run.log({"loss": 1.0})
            time.sleep(seconds)

    return train


def check_placement_and_release() -> None:
    baseline = wait_until(lambda: nvml_state()[1] if not nvml_state()[0] else None, 20) or nvml_state()[1]
    sweep_id = sweep_magic.local_sweep(
        {"method": "grid", "metric": {"name": "loss", "goal": "minimize"}, "parameters": {"i": {"values": [0, 1, 2, 3]}}},
        project="gpu-check",
    )
    outdir = tempfile.mkdtemp()
    session = sweep_magic.launch(make_train(outdir, 60), sweep_id, gpus=[0], agents_per_gpu=2)
    try:
        both_in_runs = wait_until(lambda: len(os.listdir(outdir)) >= 2, 120)
        worker_pids = {a.pid for a in session.agents() if a.pid}
        on_gpu = wait_until(lambda: worker_pids <= nvml_state()[0], 30)
        seen = [json.load(open(os.path.join(outdir, f))) for f in os.listdir(outdir)]
        visible = devices.gpu_inventory()[0].visible_id
        check(
            "2 placement",
            bool(both_in_runs) and bool(on_gpu) and len(seen) >= 2
            and all(s["cuda_visible_devices"] == visible and s["device_count"] == 1 for s in seen),
            agents=[(a.index, a.device, a.pid) for a in session.agents()],
            runs_seen=seen,
            nvml_pids=sorted(nvml_state()[0]),
        )
    finally:
        t0 = time.monotonic()
        session.stop()
        released = wait_until(
            lambda: not (worker_pids & nvml_state()[0]) and nvml_state()[1] <= baseline + 64, 15
        )
        pids_after, used_after = nvml_state()
        check(
            "4 release",
            bool(released),
            seconds=round(time.monotonic() - t0, 2),
            worker_pids_left=sorted(worker_pids & pids_after),
            used_before_mib=baseline,
            used_after_mib=used_after,
        )


def check_uuid_visible_devices() -> None:
    uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = uuid
    try:
        inventory = devices.gpu_inventory()
        slots = devices.plan(gpus=[0])
        sweep_id = sweep_magic.local_sweep({"method": "grid", "parameters": {"i": {"values": [0]}}}, project="gpu-check")
        outdir = tempfile.mkdtemp()
        session = sweep_magic.launch(make_train(outdir, 0), sweep_id, gpus=[0], count=1)
        session.wait(timeout=120)
        seen = [json.load(open(os.path.join(outdir, f))) for f in os.listdir(outdir)]
        check(
            "3 kernel CUDA_VISIBLE_DEVICES=UUID",
            len(inventory) == 1 and inventory[0].uuid == uuid and slots[0].gpu_ids == (uuid,)
            and len(seen) == 1 and seen[0]["device_count"] == 1,
            uuid=uuid,
            slot_env=slots[0].env.get("CUDA_VISIBLE_DEVICES"),
            run_saw=seen,
        )
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


_HELD: list = []  # a global of this script (__main__): shipped by value, kept across runs in one process


def takes_60_percent():
    import os
    import time

    import torch
    import wandb

    with wandb.init() as run:
        total = torch.cuda.get_device_properties(0).total_memory
        _HELD.append(torch.empty(int(total * 0.6), dtype=torch.uint8, device="cuda"))
        run.summary["pid"] = os.getpid()
        run.log({"loss": float(run.config.i)})
        time.sleep(3)  # long enough for NVML to list the run's pid


def check_process_per_run() -> None:
    outcome = {}
    for isolate in ("agent", "run"):
        sweep_id = sweep_magic.local_sweep({"method": "grid", "parameters": {"i": {"values": [0, 1, 2]}}},
                                           project=f"gpu-isolate-{isolate}")
        session = sweep_magic.launch(takes_60_percent, sweep_id, gpus=[0], isolate=isolate)
        seen_on_gpu: set[int] = set()
        deadline = time.monotonic() + 300
        while not session.done and time.monotonic() < deadline:
            seen_on_gpu |= nvml_state()[0]
            time.sleep(0.25)
        session.stop()
        results = session.results()
        outcome[isolate] = {"states": [r["state"] for r in results], "pids": [r["pid"] for r in results],
                            "errors": [(r["error"] or "").strip().splitlines()[-1:] for r in results],
                            "agent_pid": session.agents()[0].pid, "nvml_pids": sorted(seen_on_gpu)}
    run = outcome["run"]
    check("6 a process per run", outcome["agent"]["states"][:1] == ["finished"]
          and "failed" in outcome["agent"]["states"][1:] and run["states"] == ["finished"] * 3
          and len(set(run["pids"])) == 3 and set(run["pids"]) <= set(run["nvml_pids"]), **outcome)


def main() -> int:
    pynvml.nvmlInit()
    for step in (check_inventory_and_busy, check_placement_and_release, check_uuid_visible_devices,
                 check_process_per_run):
        try:
            step()
        except Exception as err:  # noqa: BLE001 - a broken step must not hide the others' figures
            check(step.__name__, False, error=repr(err))
    sweep_magic.stop_all()
    sweep_magic.local_server().stop()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
    print("failed:" if failures else "all GPU checks passed", ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
