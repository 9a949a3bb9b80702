"""A fake ``libnvidia-ml.so.1`` for the GPU tests: build it, and script what it serves.

``build(dest)`` compiles ``fake_nvml.c`` against the ``nvml.h`` of PyPI's
``nvidia-nvml-dev`` wheel (the test extra installs it) into ``dest`` under the
soname the real library has, so nvidia-ml-py's ``CDLL("libnvidia-ml.so.1")`` finds it
through ``LD_LIBRARY_PATH``.  The dynamic loader reads that variable once, when a
process starts, so the fake serves processes started with it set (``env()``); the
test process itself keeps "no driver".

``write_inventory(path, gpus, fails=...)`` writes the line script the C code reads
(its format is at the top of ``fake_nvml.c``); ``Gpu``, ``Mig`` and ``Proc`` spell it
in Python.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "fake_nvml.c")
SONAME = "libnvidia-ml.so.1"

# nvmlReturn_t values (nvml.h), for scripted failures.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
UNKNOWN = 999

# A pid above the largest pid_max Linux allows (2**22): what NVML reports for a process
# in another container's pid namespace, which this one cannot look up.
FOREIGN_PID = 2**22 + 4242


class BuildProblem(Exception):
    """What is missing to build the fake, with the fix in the message."""


@dataclass
class Proc:
    pid: int
    used_mib: int = -1  # -1: NVML's "not available"
    graphics: bool = False

    def line(self) -> str:
        return f"{'gproc' if self.graphics else 'proc'} {self.pid} {self.used_mib}"


@dataclass
class Mig:
    slot: int
    uuid: str
    total_mib: int
    used_mib: int = 0
    name: str = "NVIDIA H200 MIG 1g.18gb"
    procs: list[Proc] = field(default_factory=list)
    fails: dict[str, int] = field(default_factory=dict)


@dataclass
class Gpu:
    uuid: str
    total_mib: int = 143_771  # an H200
    used_mib: int = 0
    util: int = 0
    name: str = "NVIDIA H200"
    procs: list[Proc] = field(default_factory=list)
    migs: list[Mig] = field(default_factory=list)
    mig_mode: tuple[int, int] | None = None  # (current, max count) without MIG devices
    fails: dict[str, int] = field(default_factory=dict)  # entry point -> nvmlReturn_t


def _fail_lines(fails: dict[str, int]) -> list[str]:
    return [f"fail {fn} {code}" for fn, code in fails.items()]


def inventory_text(gpus: list[Gpu], fails: dict[str, int] | None = None) -> str:
    """The script for ``gpus``; ``fails`` apply to every call of those entry points."""
    lines = ["# written by tests/fake_nvml", *_fail_lines(fails or {})]
    for gpu in gpus:
        lines.append(f"gpu {gpu.uuid} {gpu.total_mib} {gpu.used_mib} {gpu.util} {gpu.name}")
        lines += [p.line() for p in gpu.procs] + _fail_lines(gpu.fails)
        if gpu.mig_mode is not None:
            lines.append(f"migmode {gpu.mig_mode[0]} {gpu.mig_mode[1]}")
        for mig in gpu.migs:
            lines.append(f"mig {mig.slot} {mig.uuid} {mig.total_mib} {mig.used_mib} {mig.name}")
            lines += [p.line() for p in mig.procs] + _fail_lines(mig.fails)
    return "\n".join(lines) + "\n"


def write_inventory(path: str, gpus: list[Gpu], fails: dict[str, int] | None = None) -> str:
    # Written whole and renamed: the fake re-reads the file on every inventory read.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(inventory_text(gpus, fails))
    os.replace(tmp, path)
    return path


def env(libdir: str, inventory: str, trace: str | None = None, base: dict | None = None) -> dict:
    """An environment in which a new process's nvidia-ml-py loads the fake."""
    out = dict(os.environ if base is None else base)
    out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, out.get("LD_LIBRARY_PATH")) if p)
    out["FAKE_NVML_INVENTORY"] = inventory
    out.pop("FAKE_NVML_TRACE", None)
    if trace:
        out["FAKE_NVML_TRACE"] = trace
    return out


def find_header() -> str:
    """The folder holding ``nvml.h``: $FAKE_NVML_INCLUDE, the nvidia-nvml-dev wheel, or Debian's."""
    candidates = []
    if os.environ.get("FAKE_NVML_INCLUDE"):
        candidates.append(os.environ["FAKE_NVML_INCLUDE"])
    try:
        import nvidia  # the wheel's namespace package: nvidia/cu13/include/nvml.h today

        for root in nvidia.__path__:
            candidates += sorted(os.path.dirname(h) for h in glob.glob(os.path.join(root, "*", "include", "nvml.h")))
    except ImportError:
        pass
    candidates.append("/usr/include")  # Debian's libnvidia-ml-dev
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "nvml.h")):
            return folder
    raise BuildProblem(
        f"nvml.h not found: install the test extra (pip install -e '.[test]', it has nvidia-nvml-dev) "
        f"into {sys.prefix}, or set FAKE_NVML_INCLUDE to a folder holding nvml.h"
    )


def build(dest: str) -> str:
    """Compile the fake into ``dest``; returns the folder to put on LD_LIBRARY_PATH."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise BuildProblem("no C compiler to build the fake NVML: apt-get install gcc (or set CC)")
    os.makedirs(dest, exist_ok=True)
    out = os.path.join(dest, SONAME)
    cmd = [
        compiler, "-shared", "-fPIC", "-O1", "-std=c11", "-Wall", "-Wextra",
        "-I", find_header(),
        # The soname matters for a process that preloads the file by path: glibc then
        # answers a later dlopen("libnvidia-ml.so.1") with the library already loaded.
        f"-Wl,-soname,{SONAME}",
        "-o", out, SOURCE,
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:  # CC names no program
        raise BuildProblem(f"cannot run the C compiler {compiler!r}: {err}; apt-get install gcc (or set CC)") from None
    if done.returncode != 0:
        raise BuildProblem(f"building the fake NVML failed:\n{' '.join(cmd)}\n{done.stderr}")
    return dest
