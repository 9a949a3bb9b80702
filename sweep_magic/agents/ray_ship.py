"""A notebook function's own modules, shipped to other nodes with the function.

A ``utils.py`` next to the notebook exists only on the kernel's machine.  cloudpickle
pickles functions of importable modules *by reference* (the worker re-imports them), which
fails on a node without that file.  So every local module the function reaches through its
globals — ``import utils`` at the top of the notebook, ``from utils import helper`` — is
registered with ``cloudpickle.register_pickle_by_value`` while the function is pickled, and
travels inside the pickle.  "Local" means: a module with a file outside the interpreter's
standard library and site-packages (installed packages must be installed on every node,
like sweep_magic and wandb themselves).

What cannot travel this way is an ``import utils`` *inside* the function body: it runs on
the node.  That gets a one-line warning at launch naming the module and its path.
"""

from __future__ import annotations

import dis
import importlib.util
import os
import sys
import sysconfig
import threading
import types
import warnings

from sweep_magic import payload

_LOCK = threading.Lock()  # cloudpickle's by-value registry is process-wide
_MAX_DEPTH = 4


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {p for p in sys.path if p.rstrip(os.sep).endswith(("site-packages", "dist-packages"))}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def is_local_file(path: str | None) -> bool:
    if not path or not os.path.isabs(path) or not os.path.exists(path):
        return False  # built-in, frozen, namespace package
    real = os.path.realpath(path)
    return not real.startswith(_installed_roots())


def _local_top(module: types.ModuleType | None) -> types.ModuleType | None:
    """The top-level package of ``module`` when it is a local one, else None."""
    if module is None:
        return None
    top = sys.modules.get(module.__name__.partition(".")[0])
    if top is None or top.__name__ in ("__main__", "sweep_magic"):
        return None
    return top if is_local_file(getattr(top, "__file__", None)) else None


def local_modules(function) -> list[types.ModuleType]:
    """The local top-level modules ``function`` reaches through globals, helpers and classes."""
    found: dict[str, types.ModuleType] = {}
    seen: set[int] = set()

    def visit(obj, depth: int) -> None:
        if id(obj) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            top = _local_top(obj)
            if top is not None:
                found[top.__name__] = top
            return
        if isinstance(obj, (types.FunctionType, type)):
            top = _local_top(sys.modules.get(getattr(obj, "__module__", "") or ""))
            if top is not None:
                found[top.__name__] = top
        if isinstance(obj, types.FunctionType):
            # Only what the code names: a by-value module drags its helpers along by itself.
            for value in _named_values(obj):
                visit(value, depth + 1)

    visit(function, 0)
    return list(found.values())


def _named_values(function: types.FunctionType) -> list:
    """The closure variables and globals ``function``'s code names, modules included
    (``payload.referenced`` leaves modules out: locally they go by reference)."""
    values = []
    for cell in function.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    names: list[str] = []

    def walk(co: types.CodeType) -> None:
        names.extend(co.co_names)
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    walk(function.__code__)
    globs = function.__globals__
    values += [globs[n] for n in dict.fromkeys(names) if n in globs]
    return values


def imports_in_body(function) -> list[tuple[str, str]]:
    """(module, file) of local modules the function imports when it runs."""
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    names: list[str] = []

    def walk(co: types.CodeType) -> None:
        for ins in dis.get_instructions(co):
            if ins.opname == "IMPORT_NAME":
                names.append(str(ins.argval).partition(".")[0])
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    if code is not None:
        walk(code)
    out = []
    for name in dict.fromkeys(names):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec else None
        if name != "sweep_magic" and is_local_file(origin):
            out.append((name, origin))
    return out


def pickle_function(function) -> bytes:
    """``payload.prepare(function)`` with its local modules pickled by value; warns (one line)
    about local modules it imports inside its body, which must exist on every node."""
    import cloudpickle

    with _LOCK:
        added = []
        for module in local_modules(function):
            try:
                cloudpickle.register_pickle_by_value(module)
                added.append(module)
            except ValueError:
                pass  # already registered (by the user): leave it so
        try:
            data = payload.prepare(function)
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)
    for name, origin in imports_in_body(function):
        warnings.warn(
            f"{getattr(function, '__name__', 'the function')} imports `{name}` inside its body: other nodes "
            f"need {origin} at that path (or import it at the top of the notebook so it travels with the function)",
            stacklevel=3,
        )
    return data
