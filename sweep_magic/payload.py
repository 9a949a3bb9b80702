"""Checks that a function can travel to a worker, and its cloudpickled bytes.

Workers are fresh interpreters, so the function goes by value (cloudpickle),
together with every global and closure variable it refers to.  When that fails,
or the pickle is huge because the function captured a dataset, the user gets one
line naming the culprit instead of a pickling traceback from deep inside
cloudpickle.
"""

from __future__ import annotations

import inspect
import types

from sweep_magic.errors import FunctionError, first_line

# A pickle this big almost always means a captured dataset or model: each worker
# would load a copy, and the spec file sits on disk until the worker reads it.
MAX_PICKLE_BYTES = 50 * 1024 * 1024


def prepare(function) -> bytes:
    """The cloudpickled ``function``; ``FunctionError`` (one line) when it cannot go."""
    if not callable(function):
        raise FunctionError(f"{_name(function)} is not a function (got {type(function).__name__})")
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise FunctionError(f"{_name(function)} is async; wandb.agent calls a plain function: use `def`, not `async def`")
    _check_signature(function)
    import cloudpickle

    try:
        data = cloudpickle.dumps(function)
    except Exception as err:  # cloudpickle raises TypeError, PicklingError, AttributeError, ...
        raise FunctionError(_why_unpicklable(function, err)) from err
    if len(data) > MAX_PICKLE_BYTES:
        raise FunctionError(_why_big(function, len(data)))
    return data


def _name(function) -> str:
    return getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)


def _check_signature(function) -> None:
    try:
        sig = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: let wandb.agent try
    required = [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if required:
        names = ", ".join(required)
        raise FunctionError(
            f"{_name(function)}() has required arguments ({names}); wandb.agent calls it with none: "
            "read hyperparameters from wandb.config (or give the arguments defaults)"
        )


def referenced(function) -> list[tuple[str, object]]:
    """(name, value) of the globals and closure variables ``function`` uses, in first-use order.

    These are what cloudpickle ships with a function defined in a notebook; modules
    are shipped by reference, so they are left out.
    """
    target = getattr(function, "__func__", function)  # bound methods
    code = getattr(target, "__code__", None)
    if code is None:
        return []
    found: dict[str, object] = {}
    for name, cell in zip(code.co_freevars, getattr(target, "__closure__", None) or ()):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # an empty cell (variable not bound yet)
            pass
    globs = getattr(target, "__globals__", {})
    for name in _global_names(code):
        if name in globs and name not in found:
            found[name] = globs[name]
    return [(n, v) for n, v in found.items() if not isinstance(v, types.ModuleType)]


def _global_names(code: types.CodeType) -> list[str]:
    # Nested functions, lambdas and comprehensions keep their own code objects in co_consts.
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return list(dict.fromkeys(names))


def _why_unpicklable(function, err: Exception, _via: tuple[str, ...] = ()) -> str:
    import cloudpickle

    for name, value in referenced(function):
        try:
            cloudpickle.dumps(value)
        except Exception as inner:  # noqa: BLE001 - the helper's own failure only names what it uses
            # A helper function that fails is only the messenger: name what it uses.
            if len(_via) < 3 and isinstance(value, types.FunctionType):
                return _why_unpicklable(value, inner, _via + (_name(function),))
            who = " → ".join(_via + (_name(function),))
            return (
                f"{who} uses `{name}` (a {type(value).__name__}), which cannot be pickled to send "
                f"to a worker ({first_line(inner, with_type=True)}); create it inside the function instead"
            )
    return f"{_name(function)} cannot be pickled to send to a worker: {first_line(err, with_type=True)}"


def _why_big(function, size: int) -> str:
    import cloudpickle

    sizes = []
    for name, value in referenced(function):
        try:
            sizes.append((len(cloudpickle.dumps(value)), name))
        except Exception:  # noqa: BLE001 - an object whose size cannot be measured is skipped, not fatal
            continue
    sizes.sort(reverse=True)
    biggest = ", ".join(f"`{n}` ({_mb(s)})" for s, n in sizes[:3] if s > size / 20) or "its closure"
    return (
        f"{_name(function)} pickles to {_mb(size)} (limit {_mb(MAX_PICKLE_BYTES)}), mostly {biggest}; "
        "load data inside the function (from a file) instead of capturing it"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
