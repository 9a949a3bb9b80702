"""GPUs and CPU cores of this machine, and the placement plan: one ``AgentSlot`` per agent.

GPU inventory comes from NVML (nvidia-ml-py, ``import pynvml``), initialised lazily
behind a lock on first use and never at import.  NVML is a driver query library:
unlike CUDA it creates no context, so asking it in the notebook process costs no
GPU memory.  No driver or no GPU means an empty list, never an exception.

The kernel's own ``CUDA_VISIBLE_DEVICES`` is respected: only the devices it names
are listed, in its order, and a GPU's ``index`` is its position there (the number a
user types, the same number torch would use in the kernel).  Each GPU's
``visible_id`` is what a worker's ``CUDA_VISIBLE_DEVICES`` must say to see exactly
that device.  A GPU in MIG mode cannot be used whole (CUDA reaches only its MIG
devices), so it is listed as its MIG devices, each placed by UUID.

NVML that is there but fails (driver not loaded, library/driver mismatch, a GPU
fallen off the bus) is one ``GpuWarning`` line per problem; the GPUs it could
still read are listed.

``plan()`` turns ``gpus=`` / ``cpus=`` / ``agents_per_gpu=`` into slots; every
mistake becomes a one-line ``PlacementError``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from sweep_magic.errors import PlacementError

THREAD_CAP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    user: str | None
    memory_mib: float | None
    name: str | None


@dataclass(frozen=True)
class GpuInfo:
    index: int  # position in the kernel's visible list
    uuid: str
    name: str
    memory_total_mib: float
    memory_used_mib: float
    utilization_pct: float | None
    processes: tuple[GpuProcess, ...]
    visible_id: str  # what to put in CUDA_VISIBLE_DEVICES for this GPU
    mig_mode: bool = False  # a GPU in MIG mode: CUDA reaches only its MIG devices
    mig_parent: str | None = None  # a MIG device: the UUID of its GPU

    def busy(self, *, my_user: str | None = None, min_free_fraction: float = 0.1) -> bool:
        """True when the GPU looks taken: little free memory, or processes on it
        (only other users' processes count when ``my_user`` is given)."""
        if self.memory_total_mib > 0:
            free = self.memory_total_mib - self.memory_used_mib
            if free / self.memory_total_mib < min_free_fraction:
                return True
        if my_user is None:
            return bool(self.processes)
        return any(p.user != my_user for p in self.processes)


@dataclass(frozen=True)
class AgentSlot:
    index: int
    kind: str  # "gpu" | "cpu"
    label: str  # "gpu 1", "cpu 0-3", "cpu"
    gpu_ids: tuple[str, ...]
    cpus: tuple[int, ...] | None  # cores to pin to, None = no pinning
    env: dict[str, str]


class GpuWarning(UserWarning):
    """NVML is installed but answered with an error: some or all GPUs are not offered."""


# ---------------------------------------------------------------------------------------------
# Inventory

_NVML_LOCK = threading.Lock()
_nvml_state: str | None = None  # None: not tried; "ok"; "absent"
_nvml_problem: str | None = None  # why NVML lists nothing, for the "no GPU" message
_warned: set[str] = set()
_provider: Callable[[], list[GpuInfo]] | None = None


def set_inventory_provider(fn: Callable[[], list[GpuInfo]] | None) -> None:
    """Replace NVML (tests, machines without a GPU).  ``fn()`` returns the machine's
    devices as NVML would, index = NVML index (MIG devices: a negative index and
    ``mig_parent``, their GPU ``mig_mode=True``); the kernel's CUDA_VISIBLE_DEVICES is
    still applied on top.  ``None`` restores NVML."""
    global _provider
    _provider = fn


def gpu_inventory() -> list[GpuInfo]:
    """The GPUs this kernel may use, in its CUDA_VISIBLE_DEVICES order; [] when none."""
    devices = _provider() if _provider is not None else _nvml_devices()
    return _apply_visible(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _apply_visible(devices: Sequence[GpuInfo], visible: str | None) -> list[GpuInfo]:
    if visible is None:
        # NVML (PCI bus) order; slots pin CUDA_DEVICE_ORDER=PCI_BUS_ID to match.
        chosen = [d for d in devices if d.index >= 0]
    else:
        chosen = []
        for token in (t.strip() for t in visible.split(",")):
            found = _match_token(devices, token)
            # CUDA stops at the first token it cannot resolve; so do we.
            if found is None or found in chosen:
                break
            chosen.append(found)
    chosen = _expand_mig(devices, chosen)
    return [replace(d, index=i, visible_id=_token_for(d, visible)) for i, d in enumerate(chosen)]


def _expand_mig(devices: Sequence[GpuInfo], chosen: list[GpuInfo]) -> list[GpuInfo]:
    """A GPU in MIG mode stands for its MIG devices.  Placed by its index, a worker would get
    only the first MIG device on it (CUDA enumerates one), and its memory figures would be the
    whole GPU's; a GPU in MIG mode with no MIG device created offers nothing to CUDA at all."""
    out: list[GpuInfo] = []
    for device in chosen:
        parts = [m for m in devices if m.mig_parent == device.uuid] if device.mig_mode else [device]
        out.extend(p for p in parts if p not in out)
    return out


def _match_token(devices: Sequence[GpuInfo], token: str) -> GpuInfo | None:
    if not token:
        return None
    if token.lstrip("-").isdigit():
        n = int(token)
        return next((d for d in devices if d.index == n), None) if n >= 0 else None
    if token.startswith(("GPU-", "MIG-")):
        # CUDA accepts any unambiguous UUID prefix.
        hits = [d for d in devices if d.uuid.startswith(token)]
        return hits[0] if len(hits) == 1 else None
    return None


def _token_for(device: GpuInfo, visible: str | None) -> str:
    # Pass the kernel's own spelling down when it named devices by UUID, else the index;
    # MIG instances have no index CUDA understands.
    if device.index < 0 or (visible is not None and ("GPU-" in visible or "MIG-" in visible)):
        return device.uuid
    return str(device.index)


def _nvml_devices() -> list[GpuInfo]:
    global _nvml_state, _nvml_problem
    with _NVML_LOCK:
        if _nvml_state is None:
            _nvml_state = "absent"
            try:
                import pynvml
            except ImportError:
                return []
            try:
                pynvml.nvmlInit()
                _nvml_state = "ok"
            except Exception as err:  # noqa: BLE001 - pynvml raises NVMLError subclasses and OSError: each is a reason to show
                # No library means no NVIDIA stack at all: a CPU machine, nothing to say.
                # Anything else (driver not loaded, library/driver mismatch after an
                # upgrade, no permission) hides GPUs the user expects: say so once.
                if getattr(err, "value", None) != getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
                    _nvml_problem = f"NVML failed to start: {_reason(err)}"
                    _warn(f"{_nvml_problem}; no GPU is offered (restart the kernel once the driver is fixed)")
        if _nvml_state != "ok":
            return []
        try:
            return _read_nvml()
        except Exception as err:  # noqa: BLE001 - the device count itself failed
            _warn(f"NVML could not list the GPUs: {_reason(err)}")
            return []


def _read_nvml() -> list[GpuInfo]:
    import pynvml

    devices = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        # One GPU that cannot be read (fallen off the bus) must not hide the others.
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu = _device_info(pynvml, handle, i)
        except Exception as err:  # noqa: BLE001 - any NVML failure leaves this one GPU out, with its reason
            _warn(f"GPU {i} is left out: NVML says {_reason(err)}")
            continue
        migs = _mig_devices(pynvml, handle, i, gpu.uuid)
        devices.append(gpu if migs is None else replace(gpu, mig_mode=True))
        devices.extend(migs or [])
    return devices


def _mig_devices(pynvml, handle, parent_index: int, parent_uuid: str) -> list[GpuInfo] | None:
    """The MIG devices of a GPU in MIG mode; None when it is not in MIG mode (or has no MIG)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return None
        count = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:  # noqa: BLE001 - NOT_SUPPORTED: a GPU without MIG
        return None
    out = []
    for j in range(count):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except Exception:  # noqa: BLE001 - NOT_FOUND: an empty slot
            continue
        try:
            # MIG devices have no NVML index of their own: CUDA only reaches them by UUID.
            info = _device_info(pynvml, mig, -1 - parent_index * 100 - j)
        except Exception as err:  # noqa: BLE001 - any NVML failure leaves this one MIG device out, with its reason
            _warn(f"a MIG device of GPU {parent_index} is left out: NVML says {_reason(err)}")
            continue
        out.append(replace(info, mig_parent=parent_uuid))
    return out


def _device_info(pynvml, handle, index: int) -> GpuInfo:
    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
    name = _text(_try(lambda: pynvml.nvmlDeviceGetName(handle), "GPU"))
    # Memory and processes decide whether a GPU counts as busy: when NVML cannot give them
    # the GPU would pass for free, so say so.  Utilisation is only shown: it goes blank.
    mem = _busy_figure(pynvml, lambda: pynvml.nvmlDeviceGetMemoryInfo(handle), f"the memory of {uuid}", None)
    util = _try(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, None)
    procs: dict[int, GpuProcess] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        read = getattr(pynvml, getter)  # bound now: the lambda is called within this iteration anyway
        listed = _busy_figure(pynvml, lambda read=read: read(handle), f"the processes on {uuid}", [])
        for p in listed or []:
            if p.pid not in procs:
                procs[p.pid] = _process(p.pid, getattr(p, "usedGpuMemory", None))
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=name,
        memory_total_mib=(mem.total / 2**20) if mem else 0.0,
        memory_used_mib=(mem.used / 2**20) if mem else 0.0,
        utilization_pct=float(util) if util is not None else None,
        processes=tuple(procs.values()),
        visible_id=str(index),
    )


def _process(pid: int, used_bytes) -> GpuProcess:
    import psutil

    user = name = None
    try:
        proc = psutil.Process(pid)
        user, name = proc.username(), proc.name()
    except (psutil.Error, OSError):
        pass  # another container's pid, or gone already
    # NVML reports "not available" (e.g. without permission) as None or a huge sentinel.
    memory = used_bytes / 2**20 if isinstance(used_bytes, int) and 0 <= used_bytes < 2**60 else None
    return GpuProcess(pid=pid, user=user, memory_mib=memory, name=name)


def _reason(err: BaseException) -> str:
    # pynvml's errors print as NVML's own words ("Driver Not Loaded"); keep them on one line.
    return " ".join(str(err).split()) or type(err).__name__


def _warn(message: str) -> None:
    """One line, once per process: the panel re-reads the inventory every few seconds.

    ``warn_explicit`` with a file name that is no file keeps the usual
    ``file:line: GpuWarning: ...`` form but without a second, source-code line (there
    is no user line to point at from here); ``module`` lets users filter it."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn_explicit(message, GpuWarning, filename="sweep_magic", lineno=0, module="sweep_magic.devices")


def _busy_figure(pynvml, fn, what: str, default):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - any NVML failure of one figure leaves that figure blank
        # NOT_SUPPORTED is how a GPU says it has no such thing (no graphics processes): not news.
        if getattr(err, "value", None) != getattr(pynvml, "NVML_ERROR_NOT_SUPPORTED", 3):
            _warn(f"NVML cannot read {what} ({_reason(err)}): it may look free while in use")
        return default


def _try(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - one unreadable figure is a blank, not a broken inventory
        return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# Placement


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def check_shape(gpus=None, cpus=None, agents_per_gpu=1) -> None:
    """What every placement (this machine's and Ray's) refuses alike, in one line."""
    if isinstance(agents_per_gpu, bool) or not isinstance(agents_per_gpu, int) or agents_per_gpu < 1:
        raise PlacementError(f"agents_per_gpu must be a whole number ≥ 1, not {agents_per_gpu!r}")
    if gpus is not None and cpus is not None:
        raise PlacementError("give either gpus= or cpus=, not both")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise PlacementError(f"cpus must be a whole number ≥ 1 (the number of CPU agents), not {cpus!r}")


def plan(*, gpus=None, cpus=None, agents_per_gpu=1, cpus_per_agent=None,
         inventory: list[GpuInfo] | None = None) -> list[AgentSlot]:
    """The slots to start: ``gpus`` (indices, ``"all"``, ``"free"``, ``"0,1"``) × ``agents_per_gpu``,
    or ``cpus`` CPU-only agents.  Neither: the free GPUs if there are any, else one CPU agent.
    ``cpus_per_agent`` is Ray's (its agents reserve CPUs); here ``cpus=N`` splits the cores."""
    check_shape(gpus, cpus, agents_per_gpu)
    if cpus_per_agent is not None:
        raise PlacementError("cpus_per_agent (--cpus-per-agent) is for Ray; on this machine cpus=N splits "
                             "its cores among N agents")
    cores = available_cores()
    if cpus is not None:
        return _cpu_slots(cpus, cores)
    inv = gpu_inventory() if inventory is None else list(inventory)
    if gpus is None:
        if not inv:
            return _cpu_slots(1, cores)
        chosen = _free(inv)
        if not chosen:
            raise PlacementError(f"all {len(inv)} GPUs are busy; pass gpus='all' or gpus=[...] to use them anyway")
    else:
        # When NVML itself failed, the refusal says why rather than guessing "no driver".
        chosen = _choose(gpus, inv, _nvml_problem if inventory is None and _provider is None else None)
    return _gpu_slots(chosen, agents_per_gpu, cores)


def current_user() -> str | None:
    """This process's user, named as NVML's process owners are (psutil reads the real uid),
    so our own processes on a GPU never make it look busy; ``$USER`` is not trusted."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry (some containers)
        return None


def _free(inv: list[GpuInfo]) -> list[GpuInfo]:
    me = current_user()
    return [g for g in inv if not g.busy(my_user=me)]


def _choose(gpus, inv: list[GpuInfo], why: str | None = None) -> list[GpuInfo]:
    word = gpus.strip().lower() if isinstance(gpus, str) else None
    if word is not None and word not in ("all", "free"):
        try:  # a malformed list is the first thing to say, GPUs or not
            gpus = [int(t) for t in word.split(",") if t.strip()]
        except ValueError:
            raise PlacementError(f"gpus must be 'all', 'free' or GPU indices like '0,1', not {gpus!r}") from None
    if not inv:
        why = why or "no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them"
        raise PlacementError(f"no GPU is visible here ({why}); use cpus=N")
    if word in ("all", "free"):
        if word == "all":
            return inv
        if word == "free":
            free = _free(inv)
            if not free:
                raise PlacementError(f"none of the {len(inv)} GPUs is free; pass gpus='all' to use them anyway")
            return free
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        gpus = [gpus]
    if not isinstance(gpus, Iterable) or not gpus:
        raise PlacementError(f"gpus must be 'all', 'free' or a list of GPU indices, not {gpus!r}")
    gpus = list(gpus)
    by_index = {g.index: g for g in inv}
    chosen = []
    for n in gpus:
        if isinstance(n, bool) or not isinstance(n, int):
            raise PlacementError(f"GPU indices must be whole numbers, not {n!r}")
        if n not in by_index:
            raise PlacementError(f"there is no GPU {n}: this machine shows {_indices(inv)}")
        if by_index[n] in chosen:
            raise PlacementError(f"GPU {n} is listed twice; use agents_per_gpu=2 to run two agents on one GPU")
        chosen.append(by_index[n])
    return chosen


def _indices(inv: list[GpuInfo]) -> str:
    return f"GPU {inv[0].index}" if len(inv) == 1 else f"GPUs {inv[0].index}-{inv[-1].index}"


def _thread_env(n: int) -> dict[str, str]:
    return {var: str(max(1, n)) for var in THREAD_CAP_VARS}


def _split(cores: list[int], n: int) -> list[list[int]]:
    """``cores`` in ``n`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(cores), n)
    out, at = [], 0
    for i in range(n):
        take = size + (1 if i < extra else 0)
        out.append(cores[at : at + take])
        at += take
    return out


def _cpu_label(chunk: Sequence[int] | None) -> str:
    if not chunk:
        return "cpu"
    if len(chunk) == 1:
        return f"cpu {chunk[0]}"
    if list(chunk) == list(range(chunk[0], chunk[-1] + 1)):
        return f"cpu {chunk[0]}-{chunk[-1]}"
    return "cpu " + ",".join(map(str, chunk))


def _cpu_slots(n: int, cores: list[int]) -> list[AgentSlot]:
    base = {"CUDA_VISIBLE_DEVICES": ""}  # CPU agents must not grab a GPU by accident
    if n > len(cores):
        warnings.warn(
            f"{n} CPU agents on {len(cores)} cores: they will share cores (no pinning)", stacklevel=3
        )
        return [
            AgentSlot(index=i, kind="cpu", label="cpu", gpu_ids=(), cpus=None, env={**base, **_thread_env(1)})
            for i in range(n)
        ]
    return [
        AgentSlot(
            index=i,
            kind="cpu",
            label=_cpu_label(chunk),
            gpu_ids=(),
            cpus=tuple(chunk),
            env={**base, **_thread_env(len(chunk))},
        )
        for i, chunk in enumerate(_split(cores, n))
    ]


def _gpu_slots(chosen: list[GpuInfo], per_gpu: int, cores: list[int]) -> list[AgentSlot]:
    total = len(chosen) * per_gpu
    share = max(1, len(cores) // total)
    order = {} if "CUDA_DEVICE_ORDER" in os.environ else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    slots = []
    for gpu in chosen:
        for _ in range(per_gpu):
            slots.append(
                AgentSlot(
                    index=len(slots),
                    kind="gpu",
                    label=f"gpu {gpu.index}",
                    gpu_ids=(gpu.visible_id,),
                    # GPU agents are not pinned (their data loaders may want more cores now
                    # and then); the thread caps keep BLAS/OpenMP pools from oversubscribing.
                    cpus=None,
                    env={"CUDA_VISIBLE_DEVICES": gpu.visible_id, **order, **_thread_env(share)},
                )
            )
    return slots
