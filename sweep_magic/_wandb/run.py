"""wandb's Run: wrappers that turn a run's start, logs and finish into plain callbacks.

Two shapes, chosen by the surface check:

* ``hook_run`` (live detail): ``Run._on_start``, ``Run._partial_history_callback`` (the one
  path of ``wandb.log``/``run.log`` and integrations such as tensorboard sync and
  ``wandb.watch``) and ``Run._finish`` (also the ``with wandb.init()`` exit and pyagent's
  error path), whose summary is read *before* the original tears the run down: afterwards
  ``run.summary`` is empty (measured on 0.25, 0.28 and 0.31).
* ``hook_run_public`` (live detail off): public ``wandb.init`` and ``Run.log`` only.  No
  finish callback: the caller keeps the last logged values as the run's summary.

Both are installable on their own, in any process (an agent's worker, or a process per run),
and neither needs pyagent.  The wrappers pass every argument through untouched, and read the
ones they report by binding them to the original's signature, so an added parameter in a
later wandb cannot turn into a ``TypeError`` inside the user's run.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from sweep_magic._wandb import surface as _surface
from sweep_magic._wandb.agent import _safely, _wrap


def _run_cls():
    return importlib.import_module(_surface.WANDB_RUN).Run


def _reader(original, names: tuple) -> Callable:
    """(args, kwargs) of a call without self → the values of ``names`` (None when absent)."""
    sig = inspect.signature(original)
    positional = len(names)

    def read(args: tuple, kwargs: dict) -> tuple:
        if not kwargs and len(args) == positional:  # how wandb itself calls them: fast path
            return args
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError:
            return (None,) * positional
        bound.apply_defaults()
        return tuple(bound.arguments.get(name) for name in names)

    return read


def hook_run(
    on_start: Callable[[Any], None],
    on_log: Callable[[Any, dict, Any, Any], None],
    on_finish: Callable[[Any, Any], None],
    found: _surface.Surface,
) -> bool:
    """Live detail: False (nothing installed) unless every Run point fits."""
    if not found.live or not all(found.ok(p) for p in ("run.on_start", "run.history", "run.finish")):
        return False
    run_cls = _run_cls()

    def _on_start(orig):
        def hooked(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            _safely(on_start, self)
            return result

        return hooked

    def _history(orig):
        read = _reader(orig, ("data", "step", "commit"))

        def hooked(self, *args, **kwargs):
            data, step, commit = read(args, kwargs)
            if isinstance(data, dict):
                _safely(on_log, self, data, step, commit)  # never let reporting break wandb.log
            return orig(self, *args, **kwargs)

        return hooked

    def _finish(orig):
        read = _reader(orig, ("exit_code",))

        def hooked(self, *args, **kwargs):
            (exit_code,) = read(args, kwargs)
            _safely(on_finish, self, exit_code)  # before the original: the summary is still there
            return orig(self, *args, **kwargs)

        return hooked

    _wrap(run_cls, "_on_start", _on_start)
    _wrap(run_cls, "_partial_history_callback", _history)
    _wrap(run_cls, "_finish", _finish)
    return True


def hook_run_public(on_start: Callable[[Any], None], on_log: Callable[[Any, dict, Any, Any], None]) -> bool:
    """Live detail off: public ``wandb.init`` (the run's start) and ``wandb.Run.log`` (what the
    user logs).  Logs made by integrations straight through the private path are not seen."""
    import wandb

    run_cls = getattr(wandb, "Run", None)
    if not callable(getattr(wandb, "init", None)) or run_cls is None or not callable(getattr(run_cls, "log", None)):
        return False

    def init(orig):
        def hooked(*args, **kwargs):
            run = orig(*args, **kwargs)
            if run is not None:
                _safely(on_start, run)
            return run

        return hooked

    def log(orig):
        read = _reader(orig, ("data", "step", "commit"))

        def hooked(self, *args, **kwargs):
            data, step, commit = read(args, kwargs)
            if isinstance(data, dict):
                _safely(on_log, self, data, step, commit)
            return orig(self, *args, **kwargs)

        return hooked

    _wrap(wandb, "init", init)
    _wrap(run_cls, "log", log)
    return True


def run_dir(run) -> str | None:
    """The run's own folder (``offline-run-…``, what ``wandb sync`` takes), by public names."""
    for read in (lambda: run.sync_dir, lambda: run.settings.sync_dir):  # 0.28+, then 0.25+
        try:
            value = read()
        except Exception:  # noqa: BLE001 - a value that is not a readable number is skipped
            continue
        if isinstance(value, str) and value:
            return value
    return None


def first_step(run) -> int:
    """The step of the run's first ``log`` (0 unless the run was resumed), by a public name."""
    try:
        return int(run.starting_step or 0)
    except Exception:  # noqa: BLE001 - no readable step: 0
        return 0

