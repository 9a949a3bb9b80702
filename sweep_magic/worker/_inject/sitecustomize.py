"""sweep_magic's hook for program sweeps; first on a program run's PYTHONPATH (worker.program).

Inert unless ``SWEEP_MAGIC_CHILD`` is set, i.e. in the first Python interpreter of a
program run started by a sweep_magic agent: there it makes wandb report the run live
(``sweep_magic.worker.run_child.activate_from_env``).  Then it runs the
``sitecustomize`` this one shadows, if there is one further down ``sys.path``.
"""


def _activate():
    import json
    import os
    import sys

    raw = os.environ.get("SWEEP_MAGIC_CHILD")
    if not raw:
        return
    try:
        from sweep_magic.worker import run_child
    except ImportError:
        # The program's Python is not the agent's: borrow sweep_magic from where the agent has
        # it (stdlib-only modules), without leaving that folder on the program's sys.path.
        root = json.loads(raw).get("root")
        if not root:
            return
        sys.path.append(root)
        try:
            from sweep_magic.worker import run_child
        except ImportError:
            return
        finally:
            sys.path.remove(root)
    run_child.activate_from_env()


def _chain():
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _activate()
except Exception as _err:  # noqa: BLE001 - never break the user's program
    import sys as _sys

    print(f"sweep_magic: live metrics are off for this run ({_err!r})", file=_sys.stderr)
_chain()
