"""Runs inside a process started with the fake NVML on its library path.

    python tests/gpu/probe.py '[["inventory"], ["plan", {"gpus": "free"}], ...]'

Each step goes through sweep_magic's public entry points, so nvidia-ml-py really
loads and calls the fake; nothing here injects an inventory.  The results go to
stdout as one JSON line after ``PROBE:``; warnings go to stderr exactly as a user
would see them (the default ``showwarning``), for the test to read.

Steps:
    ["inventory"]                    devices.gpu_inventory(), every field
    ["plan", {kwargs}]               devices.plan(**kwargs): slots, or the PlacementError text
    ["env", {"NAME": "value"|null}]  set or unset variables of this process (CUDA_VISIBLE_DEVICES)
    ["write", "text"]                replace the fake's script (a GPU changes under a live process)
    ["panel", {defaults}]            the panel's device picker, then Start with the ticked GPUs
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)  # panel_fakes: a real shell and a session stand-in

import sweep_magic  # noqa: E402
from sweep_magic import devices  # noqa: E402
from sweep_magic.errors import PlacementError  # noqa: E402


def inventory(_args=None) -> list:
    return [dataclasses.asdict(g) for g in devices.gpu_inventory()]


def slot_view(slots) -> list:
    return [{"label": s.label, "gpu_ids": list(s.gpu_ids), "cuda": s.env.get("CUDA_VISIBLE_DEVICES")} for s in slots]


def plan(kwargs) -> dict:
    try:
        return {"slots": slot_view(devices.plan(**kwargs))}
    except PlacementError as err:
        return {"error": str(err)}


def set_env(values) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def write(text) -> None:
    path = os.environ["FAKE_NVML_INVENTORY"]
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def panel(defaults) -> dict:
    """Build the panel as ``%sweep_parallel`` would, read its picker, press Start.

    ``launch=`` stands in for ``api.launch`` only past placement: it runs the same
    ``devices.plan`` on what Start passes, so the ticked boxes are followed down to each
    agent's CUDA_VISIBLE_DEVICES without starting workers."""
    from panel_fakes import FakeSession, real_shell

    from sweep_magic.faces.panel import SessionPanel

    launched = {}

    def launch(**kwargs):
        launched["kwargs"] = {k: v for k, v in kwargs.items() if k in ("gpus", "agents_per_gpu", "cpus")}
        placement = {k: kwargs[k] for k in ("gpus", "agents_per_gpu", "cpus") if k in kwargs}
        launched["slots"] = slot_view(devices.plan(**placement))
        return FakeSession(agents=len(launched["slots"]))

    p = SessionPanel(None, form=True, shell=real_shell(), launch=launch, local_sweep=sweep_magic.local_sweep, **defaults)
    try:
        form = p.form
        picker = {
            "cpu_mode": form.cpu_mode,
            "boxes": [[box.description, box.value] for box in form.gpu_boxes],
            "labels": [label.value for label in form.gpu_labels],
            "error": p._error,
        }
        form.sweep.value = "abc123"  # a sweep id as the user would type it
        p.start()
        return {**picker, **launched}
    finally:
        p.close()


STEPS = {"inventory": inventory, "plan": plan, "env": set_env, "write": write, "panel": panel}


def watch_lookups() -> dict:
    """Which NVML symbols the bindings asked the library for, and whether it had them.

    An observer only (each lookup still goes through): sweep_magic turns a missing
    function into "figure unknown", so without this a call the fake lacks would pass
    unnoticed."""
    import pynvml

    asked: dict[str, bool] = {}
    lookup = pynvml._nvmlGetFunctionPointer

    def watched(name):
        try:
            fn = lookup(name)
        except pynvml.NVMLError:
            asked[name] = False
            raise
        asked[name] = True
        return fn

    pynvml._nvmlGetFunctionPointer = watched
    return asked


def main() -> None:
    asked = watch_lookups()
    results = []
    for name, *args in json.loads(sys.argv[1]):
        results.append(STEPS[name](*args))
    print("PROBE:" + json.dumps({"results": results, "lookups": asked}), flush=True)


if __name__ == "__main__":
    main()
