"""The GPU path end to end through the real nvidia-ml-py, on a machine without a GPU.

A fake ``libnvidia-ml.so.1`` (``tests/fake_nvml``) serves a scripted machine; each
test starts a process with it on the library path (``probe.py``) and drives
``devices.gpu_inventory()``, ``devices.plan()`` and the panel's device picker there.
No inventory is injected: every figure below went C → ctypes → pynvml → devices.

The machine most tests use (``five_gpus``):

    GPU 0  free, 37% busy with one of our own processes  → free (our processes do not count)
    GPU 1  another user's process holding 20 GiB          → busy
    GPU 2  140 of 140.4 GiB used, no process visible      → busy (memory nearly full)
    GPU 3  idle                                            → free
    GPU 4  a process from another container (pid unknown) → busy
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys

import psutil
import pytest
from fake_nvml import (
    DRIVER_NOT_LOADED,
    FOREIGN_PID,
    GPU_IS_LOST,
    NO_PERMISSION,
    NOT_SUPPORTED,
    SONAME,
    UNKNOWN,
    Gpu,
    Mig,
    Proc,
    inventory_text,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-4000-8000-00000000000{i}" for i in range(5)]
MIB = 2**20


def five_gpus(mine: int, others: int) -> list[Gpu]:
    return [
        Gpu(UUIDS[0], used_mib=1_536, util=37, procs=[Proc(mine, 512)]),
        # The same process on the compute and the graphics list: listed once.
        Gpu(UUIDS[1], used_mib=21_504, util=88, procs=[Proc(others, 20_480), Proc(others, -1, graphics=True)]),
        Gpu(UUIDS[2], used_mib=140_000, util=0),
        Gpu(UUIDS[3], used_mib=0, util=0),
        Gpu(UUIDS[4], used_mib=4_096, util=5, procs=[Proc(FOREIGN_PID, -1)]),
    ]


@pytest.fixture
def machine(nvml, sleepers, others_pid):
    mine = sleepers()
    nvml.script(five_gpus(mine, others_pid))
    return {"mine": mine, "others": others_pid, "me": getpass.getuser(), "their_name": psutil.Process(others_pid).username()}


def cuda(result: dict) -> list:
    """Each agent's CUDA_VISIBLE_DEVICES from a plan step (or its error)."""
    return result.get("error") or [slot["cuda"] for slot in result["slots"]]


# ------------------------------------------------------------------ the bindings load the fake


# What sweep_magic's inventory calls, by the symbol names nvidia-ml-py looks up: the
# header maps nvmlDeviceGetCount to _v2 and the process lists to _v3, as the real
# library exports them.  nvmlInit_v2, nvmlShutdown and nvmlErrorString are in the fake
# too but unused here: pynvml's nvmlInit() calls nvmlInitWithFlags(0).
INVENTORY_CALLS = {
    "nvmlInitWithFlags",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMigMode",
}
MIG_CALLS = {"nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex"}


def test_the_bindings_call_the_fake_and_find_every_function(nvml, machine):
    probe = nvml.probe(["inventory"])
    assert len(probe.results[0]) == 5
    assert set(probe.trace) == INVENTORY_CALLS
    # A function the fake lacked would read as "figure unknown", not fail: check none did.
    assert probe.lookups == {name: True for name in INVENTORY_CALLS}
    assert probe.trace.count("nvmlInitWithFlags") == 1  # lazily, once per process
    assert probe.stderr == ""


def test_a_process_may_preload_the_fake_by_path_instead(nvml, machine):
    """The other way in, for a process already running: glibc answers pynvml's
    dlopen("libnvidia-ml.so.1") with a loaded library of that soname.  (Setting
    LD_LIBRARY_PATH in os.environ after start does not work: the loader read it already.)"""
    code = (
        "import ctypes, os, sys\n"
        f"ctypes.CDLL(os.path.join(sys.argv[1], {SONAME!r}))\n"
        "os.environ['LD_LIBRARY_PATH'] = ''\n"
        "from sweep_magic import devices\n"
        "print(len(devices.gpu_inventory()))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO, "FAKE_NVML_INVENTORY": nvml.inventory}
    env.pop("LD_LIBRARY_PATH", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", code, nvml.libdir], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "5"


# ------------------------------------------------------------------ inventory


def test_inventory_has_every_field_the_picker_shows(nvml, machine):
    (gpus,) = nvml.probe(["inventory"]).results
    assert [g["uuid"] for g in gpus] == UUIDS
    assert [(g["index"], g["visible_id"]) for g in gpus] == [(i, str(i)) for i in range(5)]
    assert {g["name"] for g in gpus} == {"NVIDIA H200"}
    assert {g["memory_total_mib"] for g in gpus} == {143_771.0}
    assert [g["memory_used_mib"] for g in gpus] == [1_536.0, 21_504.0, 140_000.0, 0.0, 4_096.0]
    assert [g["utilization_pct"] for g in gpus] == [37.0, 88.0, 0.0, 0.0, 5.0]
    assert not any(g["mig_mode"] or g["mig_parent"] for g in gpus)

    procs = [g["processes"] for g in gpus]
    assert procs[0] == [{"pid": machine["mine"], "user": machine["me"], "memory_mib": 512.0, "name": "sleep"}]
    # NVML's "not available" memory (the graphics entry) does not replace the known figure.
    (theirs,) = procs[1]
    assert (theirs["pid"], theirs["user"], theirs["memory_mib"]) == (machine["others"], machine["their_name"], 20_480.0)
    assert procs[2] == procs[3] == []
    # A pid from another pid namespace: no user, no name, no memory figure, and still listed.
    assert procs[4] == [{"pid": FOREIGN_PID, "user": None, "memory_mib": None, "name": None}]


def test_free_placement_skips_busy_gpus(nvml, machine):
    free, default, everything, two_each = nvml.probe(
        ["plan", {"gpus": "free"}],
        ["plan", {}],
        ["plan", {"gpus": "all"}],
        ["plan", {"gpus": "free", "agents_per_gpu": 2}],
    ).results
    # GPU 1: another user's process; GPU 2: memory nearly full; GPU 4: a process of unknown owner.
    assert cuda(free) == cuda(default) == ["0", "3"]
    assert [s["label"] for s in free["slots"]] == ["gpu 0", "gpu 3"]
    assert cuda(everything) == ["0", "1", "2", "3", "4"]
    assert cuda(two_each) == ["0", "0", "3", "3"]


def test_figures_are_read_afresh_each_time(nvml, machine):
    """No stale cache in devices.py: a GPU that fills up meanwhile is no longer free."""
    filled = five_gpus(machine["mine"], machine["others"])
    filled[3].used_mib = 143_000
    before, _, after = nvml.probe(
        ["plan", {"gpus": "free"}], ["write", inventory_text(filled)], ["plan", {"gpus": "free"}]
    ).results
    assert cuda(before) == ["0", "3"] and cuda(after) == ["0"]


def test_all_busy_is_a_one_line_refusal(nvml, machine):
    busy = five_gpus(machine["mine"], machine["others"])
    busy[0].procs.append(Proc(machine["others"], 1_024))
    busy[3].used_mib = 143_000
    nvml.script(busy)
    free, default = nvml.probe(["plan", {"gpus": "free"}], ["plan", {}]).results
    assert free["error"] == "none of the 5 GPUs is free; pass gpus='all' to use them anyway"
    assert default["error"].startswith("all 5 GPUs are busy")


# ------------------------------------------------------------------ the kernel's CUDA_VISIBLE_DEVICES


def test_kernel_cuda_visible_devices_as_indices_and_uuids(nvml, machine):
    def visible(value):
        return ["env", {"CUDA_VISIBLE_DEVICES": value}]

    r = nvml.probe(
        visible("3,0"), ["inventory"], ["plan", {"gpus": [0]}], ["plan", {"gpus": "free"}],
        visible(f"{UUIDS[4]},{UUIDS[3]}"), ["inventory"], ["plan", {"gpus": "all"}],
        visible("GPU-3333"), ["inventory"],  # a unique UUID prefix, as CUDA accepts
        visible("1,9,3"), ["inventory"],  # CUDA stops at the first entry it cannot resolve
        visible(""), ["inventory"], ["plan", {}],
    ).results  # fmt: skip
    by_index, one, free = r[1], r[2], r[3]
    assert [(g["index"], g["uuid"], g["visible_id"]) for g in by_index] == [(0, UUIDS[3], "3"), (1, UUIDS[0], "0")]
    # The number a user types is the position in the kernel's list; the agent gets NVML's.
    assert cuda(one) == ["3"] and cuda(free) == ["3", "0"]

    by_uuid, all_of_them = r[5], r[6]
    assert [(g["index"], g["visible_id"]) for g in by_uuid] == [(0, UUIDS[4]), (1, UUIDS[3])]
    assert cuda(all_of_them) == [UUIDS[4], UUIDS[3]]
    assert [g["uuid"] for g in r[8]] == [UUIDS[3]]
    assert [g["uuid"] for g in r[10]] == [UUIDS[1]]
    assert r[12] == [] and r[13]["slots"][0]["label"].startswith("cpu")


# ------------------------------------------------------------------ MIG


def mig_machine(others: int) -> list[Gpu]:
    return [
        Gpu(UUIDS[0], used_mib=1_024, util=10),
        # MIG mode with two MIG devices, in slots 0 and 2 (slot 1 empty: NOT_FOUND).
        Gpu(UUIDS[1], used_mib=20_000, migs=[
            Mig(0, "MIG-aaaa0000-1111-5000-8000-000000000000", 18_176, 17_000, procs=[Proc(others, 16_000)]),
            Mig(2, "MIG-bbbb2222-1111-5000-8000-000000000002", 35_840, 100, name="NVIDIA H200 MIG 2g.35gb"),
        ]),
        # MIG mode, no MIG device created: nothing CUDA could use.
        Gpu(UUIDS[2], mig_mode=(1, 7)),
    ]  # fmt: skip


def test_mig_gpus_are_offered_as_their_mig_devices(nvml, others_pid):
    nvml.script(mig_machine(others_pid))
    mig_a, mig_b = "MIG-aaaa0000-1111-5000-8000-000000000000", "MIG-bbbb2222-1111-5000-8000-000000000002"
    probe = nvml.probe(
        ["inventory"], ["plan", {"gpus": "free"}], ["plan", {"gpus": "all", "agents_per_gpu": 2}],
        ["env", {"CUDA_VISIBLE_DEVICES": "1"}], ["inventory"],
        ["env", {"CUDA_VISIBLE_DEVICES": UUIDS[1]}], ["inventory"],
        ["env", {"CUDA_VISIBLE_DEVICES": "MIG-bbbb"}], ["inventory"], ["plan", {"gpus": [0]}],
        ["env", {"CUDA_VISIBLE_DEVICES": "2"}], ["inventory"],
    )  # fmt: skip
    r = probe.results
    assert set(probe.trace) == INVENTORY_CALLS | MIG_CALLS and all(probe.lookups.values())

    gpus = r[0]
    assert [(g["index"], g["uuid"], g["visible_id"]) for g in gpus] == [(0, UUIDS[0], "0"), (1, mig_a, mig_a), (2, mig_b, mig_b)]
    a, b = gpus[1], gpus[2]
    assert (a["name"], a["memory_total_mib"], a["memory_used_mib"]) == ("NVIDIA H200 MIG 1g.18gb", 18_176.0, 17_000.0)
    assert (b["name"], b["memory_total_mib"]) == ("NVIDIA H200 MIG 2g.35gb", 35_840.0)
    assert a["mig_parent"] == b["mig_parent"] == UUIDS[1]
    assert a["utilization_pct"] is None  # NVML has no utilisation for MIG devices
    assert [p["pid"] for p in a["processes"]] == [others_pid] and b["processes"] == []

    # A MIG device is placed by its UUID: the only way CUDA reaches it.
    assert cuda(r[1]) == ["0", mig_b]
    assert cuda(r[2]) == ["0", "0", mig_a, mig_a, mig_b, mig_b]
    # The kernel limited to the MIG GPU, by index or UUID, may use both its MIG devices.
    assert [g["uuid"] for g in r[4]] == [g["uuid"] for g in r[6]] == [mig_a, mig_b]
    assert [(g["index"], g["visible_id"]) for g in r[8]] == [(0, mig_b)] and cuda(r[9]) == [mig_b]
    assert r[11] == []  # MIG mode without MIG devices: nothing to offer


# ------------------------------------------------------------------ driver errors


def test_driver_not_loaded_is_one_warning_line(nvml, machine):
    nvml.script(five_gpus(machine["mine"], machine["others"]), fails={"nvmlInitWithFlags": DRIVER_NOT_LOADED})
    probe = nvml.probe(["inventory"], ["inventory"], ["plan", {"gpus": "free"}], ["plan", {}])
    first, again, free, default = probe.results
    assert first == again == []
    (line,) = probe.warning_lines()  # once, however often the inventory is read; no traceback
    assert "GpuWarning: NVML failed to start: Driver Not Loaded; no GPU is offered" in line
    assert free["error"] == "no GPU is visible here (NVML failed to start: Driver Not Loaded); use cpus=N"
    assert default["slots"][0]["label"].startswith("cpu")
    assert probe.trace == ["nvmlInitWithFlags"]  # not retried on every read


def test_no_library_at_all_is_silent(nvml):
    """A machine without the NVIDIA stack: no GPUs, and nothing to warn about."""
    probe = nvml.probe(["inventory"], ["plan", {"gpus": "free"}], loaded=False)
    assert probe.results[0] == [] and probe.stderr == ""
    assert probe.results[1]["error"].startswith("no GPU is visible here (no NVIDIA driver")


def test_failing_figures_and_a_lost_gpu(nvml, machine):
    gpus = five_gpus(machine["mine"], machine["others"])
    gpus[1].fails["nvmlDeviceGetUUID"] = GPU_IS_LOST
    gpus[2].fails["nvmlDeviceGetUtilizationRates"] = UNKNOWN
    gpus[3].fails["nvmlDeviceGetComputeRunningProcesses_v3"] = NO_PERMISSION
    gpus[0].fails["nvmlDeviceGetGraphicsRunningProcesses_v3"] = NOT_SUPPORTED
    nvml.script(gpus)
    probe = nvml.probe(["inventory"], ["inventory"], ["plan", {"gpus": "all"}])
    listed, again, everything = probe.results
    # GPU 1 fell off the bus: the other four stay (before, one failure emptied the list).
    assert [g["uuid"] for g in listed] == [UUIDS[0], UUIDS[2], UUIDS[3], UUIDS[4]] and again == listed
    assert cuda(everything) == ["0", "2", "3", "4"]  # NVML's numbering still reaches the right GPUs
    # One line per problem, once however often the panel re-reads. A shown-only figure
    # (utilisation) just goes blank; one that decides busy-ness (processes) is named.
    assert [line.split("GpuWarning: ")[1] for line in probe.warning_lines()] == [
        "GPU 1 is left out: NVML says GPU is lost",
        f"NVML cannot read the processes on {UUIDS[3]} (Insufficient Permissions): it may look free while in use",
    ]
    assert listed[1]["utilization_pct"] is None and listed[1]["memory_used_mib"] == 140_000.0
    assert listed[0]["processes"][0]["pid"] == machine["mine"]  # NOT_SUPPORTED graphics: no news


def test_device_count_failing_is_one_warning_line(nvml, machine):
    nvml.script(five_gpus(machine["mine"], machine["others"]), fails={"nvmlDeviceGetCount_v2": UNKNOWN})
    probe = nvml.probe(["inventory"], ["inventory"])
    assert probe.results == [[], []]
    (line,) = probe.warning_lines()
    assert line.endswith("GpuWarning: NVML could not list the GPUs: Unknown Error")


# ------------------------------------------------------------------ the panel's device picker


def test_panel_picker_is_built_from_the_real_inventory(nvml, machine):
    pytest.importorskip("ipywidgets")
    (picker,) = nvml.probe(["panel", {"agents_per_gpu": 2}]).results
    assert not picker["cpu_mode"] and picker["error"] is None
    assert picker["boxes"] == [["GPU 0", True], ["GPU 1", False], ["GPU 2", False], ["GPU 3", True], ["GPU 4", False]]
    labels = picker["labels"]
    assert "NVIDIA H200 · 1.5/140.4 GiB · 37% util" in labels[0]
    assert f"{machine['me']} (you) pid {machine['mine']} 0.5 GiB" in labels[0] and "(busy)" not in labels[0]
    assert f"{machine['their_name']} pid {machine['others']} 20.0 GiB" in labels[1] and "(busy)" in labels[1]
    assert "136.7/140.4 GiB" in labels[2] and "(busy)" in labels[2]
    assert f"? pid {FOREIGN_PID}" in labels[4] and "(busy)" in labels[4]
    # Start with the boxes as they were ticked: agents on GPUs 0 and 3 only.
    assert picker["kwargs"] == {"gpus": [0, 3], "agents_per_gpu": 2}
    assert cuda(picker) == ["0", "0", "3", "3"]


def test_panel_with_a_broken_driver_offers_cpu_agents_and_says_why(nvml, machine):
    pytest.importorskip("ipywidgets")
    nvml.script(five_gpus(machine["mine"], machine["others"]), fails={"nvmlInitWithFlags": DRIVER_NOT_LOADED})
    probe = nvml.probe(["panel", {}])
    (picker,) = probe.results
    assert picker["cpu_mode"] and picker["boxes"] == [] and "cpus" in picker["kwargs"]
    (line,) = probe.warning_lines()
    assert "Driver Not Loaded" in line
