"""GPU inventory and placement.

There is no GPU on the development machine: the real NVML path is tested here for what it
must do without a driver (an empty list, no exception), and through nvidia-ml-py against
a fake NVML library in ../gpu/test_fake_nvml.py; placement logic uses an injected inventory.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest

from sweep_magic import devices
from sweep_magic.devices import AgentSlot, GpuInfo, GpuProcess
from sweep_magic.errors import PlacementError


def gpu(index, *, used=1000.0, total=80000.0, procs=(), uuid=None):
    return GpuInfo(
        index=index,
        uuid=uuid or f"GPU-{index:04d}aaaa-1111",
        name="Fake H200",
        memory_total_mib=total,
        memory_used_mib=used,
        utilization_pct=0.0,
        processes=tuple(procs),
        visible_id=str(index),
    )


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    inventory = [gpu(0), gpu(1), gpu(2, procs=[GpuProcess(pid=1, user="someone-else", memory_mib=500.0, name="python")])]
    devices.set_inventory_provider(lambda: inventory)
    yield inventory
    devices.set_inventory_provider(None)


def test_real_inventory_is_empty_without_a_gpu():
    # This machine has no NVIDIA driver: NVML must say "no GPUs", not raise.
    assert devices.gpu_inventory() == []
    assert devices.gpu_inventory() == []  # and again, after the lazy init has been tried


def test_import_does_not_touch_nvml():
    import subprocess
    import sys

    code = "import sys, sweep_magic.devices; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert out.stdout.strip() == "False"


def test_cpu_agents_split_the_cores_evenly():
    cores = devices.available_cores()
    slots = devices.plan(cpus=len(cores))
    assert [s.index for s in slots] == list(range(len(cores)))
    assert sorted(c for s in slots for c in s.cpus) == cores
    for slot in slots:
        assert slot.kind == "cpu" and slot.gpu_ids == () and slot.env["CUDA_VISIBLE_DEVICES"] == ""
        assert slot.env["OMP_NUM_THREADS"] == str(len(slot.cpus)) == slot.env["MKL_NUM_THREADS"]
    one = devices.plan(cpus=1)
    assert one[0].cpus == tuple(cores) and one[0].env["OPENBLAS_NUM_THREADS"] == str(len(cores))


def test_split_sizes_differ_by_at_most_one():
    assert devices._split([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert devices._cpu_label((4, 5, 6, 7)) == "cpu 4-7" and devices._cpu_label((3,)) == "cpu 3"


def test_more_cpu_agents_than_cores_warns_and_does_not_pin():
    n = len(devices.available_cores()) + 2
    with pytest.warns(UserWarning, match="share cores"):
        slots = devices.plan(cpus=n)
    assert len(slots) == n and all(s.cpus is None and s.env["OMP_NUM_THREADS"] == "1" for s in slots)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpus": 0}, "cpus must be"),
        ({"cpus": True}, "cpus must be"),
        ({"agents_per_gpu": 0, "cpus": 1}, "agents_per_gpu"),
        ({"gpus": [0], "cpus": 2}, "not both"),
        ({"gpus": [0]}, "no GPU is visible"),
        ({"gpus": "all"}, "no GPU is visible"),
    ],
)
def test_bad_placement_is_one_line(kwargs, message):
    with pytest.raises(PlacementError, match=message) as info:
        devices.plan(inventory=[], **kwargs)
    assert "\n" not in str(info.value)


def test_default_without_gpus_is_one_cpu_agent():
    (slot,) = devices.plan(inventory=[])
    assert slot.kind == "cpu" and slot.env["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_slots(fake_gpus):
    slots = devices.plan(gpus=[0, 1], agents_per_gpu=2)
    assert [s.label for s in slots] == ["gpu 0", "gpu 0", "gpu 1", "gpu 1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert all(s.kind == "gpu" and s.cpus is None for s in slots)
    assert all(s.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for s in slots)  # NVML's order
    share = max(1, len(devices.available_cores()) // 4)
    assert all(s.env["OMP_NUM_THREADS"] == str(share) for s in slots)
    assert devices.plan(gpus="1,2")[1].gpu_ids == ("2",)
    assert len(devices.plan(gpus="all")) == 3


def test_free_and_default_skip_busy_gpus(fake_gpus):
    assert [s.label for s in devices.plan(gpus="free")] == ["gpu 0", "gpu 1"]
    assert [s.label for s in devices.plan()] == ["gpu 0", "gpu 1"]
    full = [gpu(0, used=79000.0)]
    with pytest.raises(PlacementError, match="busy"):
        devices.plan(inventory=full)


def test_bad_gpu_index(fake_gpus):
    with pytest.raises(PlacementError, match="there is no GPU 5: this machine shows GPUs 0-2"):
        devices.plan(gpus=[0, 5])
    with pytest.raises(PlacementError, match="listed twice"):
        devices.plan(gpus=[1, 1])
    with pytest.raises(PlacementError, match="'all', 'free'"):
        devices.plan(gpus="some")


def test_busy():
    mine = GpuProcess(pid=10, user="me", memory_mib=100.0, name="python")
    assert not gpu(0).busy()
    assert gpu(0, procs=[mine]).busy()
    assert not gpu(0, procs=[mine]).busy(my_user="me")
    assert gpu(0, procs=[mine]).busy(my_user="you")
    assert gpu(0, used=75000.0).busy(min_free_fraction=0.1)


def test_kernel_cuda_visible_devices_is_respected(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    inv = devices.gpu_inventory()
    assert [(g.index, g.uuid, g.visible_id) for g in inv] == [(0, fake_gpus[2].uuid, "2"), (1, fake_gpus[0].uuid, "0")]
    # The index a user types is the position in the kernel's visible list.
    assert devices.plan(gpus=[0])[0].env["CUDA_VISIBLE_DEVICES"] == "2"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0001")  # a UUID prefix, as CUDA accepts
    (only,) = devices.gpu_inventory()
    assert only.uuid == fake_gpus[1].uuid and only.visible_id == fake_gpus[1].uuid and only.index == 0

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,7,1")  # CUDA stops at the first bad entry
    assert [g.uuid for g in devices.gpu_inventory()] == [fake_gpus[0].uuid]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.gpu_inventory() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert devices.gpu_inventory() == []


def test_mig_devices_only_when_named(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    mig = gpu(-1, uuid="MIG-1234-abcd")
    devices.set_inventory_provider(lambda: [gpu(0), mig])
    try:
        assert [g.uuid for g in devices.gpu_inventory()] == [gpu(0).uuid]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234")
        (only,) = devices.gpu_inventory()
        assert only.visible_id == "MIG-1234-abcd" and only.index == 0
    finally:
        devices.set_inventory_provider(None)


def test_slot_is_frozen():
    (slot,) = devices.plan(cpus=1)
    assert isinstance(slot, AgentSlot)
    with pytest.raises(dataclasses.FrozenInstanceError):
        slot.index = 3  # type: ignore[misc]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.plan(cpus=1)  # no warning when cores suffice
