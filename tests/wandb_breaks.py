"""Move a wandb touch point on purpose, as a later wandb release might, by its id in the
adapter's table (``sweep_magic._wandb.surface.POINTS``): tests never spell a private
wandb name themselves.

Two ways to move a point:

* ``delete``: the attribute is gone (for a per-agent attribute: ``Agent._init`` no longer
  sets it; for wandb-core's argv: its launcher module has no source to read; for the module
  pyagent sleeps through: it keeps its clock but loses ``sleep``);
* ``resign``: a method's first parameter after ``self`` is renamed, as a refactor would.
  The renamed method still works for wandb's own callers (positional calls, and the old
  keyword through ``**kwargs``), so a process with it runs as wandb would; only a wrapper
  that relied on the old signature would be wrong.

Used in-process by ``python -m wandb_breaks`` (every point in turn, restored after each),
and at interpreter start by ``sitecustomize`` (``site_dir``) for a real worker process.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import types

from sweep_magic._wandb import surface

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _owner_and_name(point):
    parts = point.path.split(".")
    owner = importlib.import_module(point.module)
    for name in parts[:-1]:
        owner = getattr(owner, name)
    return owner, parts[-1]


def _renamed(original):
    params = list(inspect.signature(original).parameters)
    old = params[1]

    def moved(self, renamed=None, *args, **kwargs):
        if old in kwargs:
            renamed = kwargs.pop(old)
        return original(self, renamed, *args, **kwargs)

    return moved


def apply(point_id: str, how: str = "delete"):
    """Move ``point_id``; returns a function that puts it back."""
    point = surface.BY_ID[point_id]
    if point.form == "instance":  # Agent._init stops setting the attribute
        owner, name = _owner_and_name(surface.BY_ID["agent.init"])
        original, attr = getattr(owner, name), point.path.rsplit(".", 1)[-1]

        @functools.wraps(original)
        def init_without(self, *args, **kwargs):
            original(self, *args, **kwargs)
            vars(self).pop(attr, None)

        setattr(owner, name, init_without)
        return lambda: setattr(owner, name, original)
    if point.form == "argv":  # the launcher's source no longer says how wandb-core is started
        real = importlib.import_module(point.module)
        sys.modules[point.module] = types.ModuleType(point.module)
        return lambda: sys.modules.__setitem__(point.module, real)
    owner, name = _owner_and_name(point)
    original = getattr(owner, name)
    if point.form == "sleep":  # pyagent would still tell the time, but no longer sleep through it
        setattr(owner, name, types.SimpleNamespace(**{k: getattr(original, k) for k in ("time", "monotonic")}))
    elif how == "resign":
        setattr(owner, name, _renamed(original))
    else:
        delattr(owner, name)
    return lambda: setattr(owner, name, original)


def site_dir(path, point_id: str, how: str = "delete") -> dict:
    """A folder with a ``sitecustomize`` that moves ``point_id`` in every interpreter started
    with the returned environment (PYTHONPATH) -- a real process against a moved surface."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "sitecustomize.py"), "w") as f:
        f.write(f"import sys\nsys.path.insert(0, {TESTS!r})\nimport wandb_breaks\n"
                f"wandb_breaks.apply({point_id!r}, {how!r})\n")  # fmt: skip
    # The test's own path stays after ours: it may carry the wandb under test (tests/compat runs).
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(path), REPO, os.environ.get("PYTHONPATH")]))}


def _classify(found, point) -> dict:
    return {
        "problem": found.problems.get(point.id),
        "refused": found.refused,
        "live": found.live,
        "refusal": found.refusal() if found.refused else None,
        "notes": found.notes(),
        "log_only": found.degradations(shown=False),
    }


def main() -> None:
    """Every point moved in turn (and each method point re-signed too): what check() says."""
    import wandb  # noqa: F401  (imported once, before anything is moved)

    clean = surface.check()
    out = {"version": surface.version(), "clean": clean.problems, "cases": {}}
    for point in surface.POINTS:
        if point.id in clean.problems:
            continue  # already missing on this wandb (0.25's heartbeat points): nothing to move
        hows = ["delete"] + (["resign"] if point.form == "method" and len(point.params) > 1 else [])
        for how in hows:
            restore = apply(point.id, how)
            try:
                out["cases"][f"{point.id}:{how}"] = _classify(surface.check(), point)
            finally:
                restore()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
