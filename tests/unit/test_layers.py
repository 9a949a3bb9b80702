"""The house rules of docs/architecture.md, read from the code's own imports.

Every ``import``/``from ... import`` of a sweep_magic module anywhere in a module (at the
top or inside a function) is an edge; the graph must have no cycle, and each folder may
import only what its rule allows."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "sweep_magic"


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("sweep_magic", *path.relative_to(ROOT).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sweep_magic"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("sweep_magic")]
            edges |= {t for t in map(_resolve, names) if t and t != module}
        graph[module] = edges
    return graph


GRAPH = _graph()

# folder → the sweep_magic modules (prefixes) it must never import
FORBIDDEN = {
    "sweep_magic.protocol": ("sweep_magic.agents", "sweep_magic.worker", "sweep_magic.faces", "sweep_magic.api",
                             "sweep_magic.server", "sweep_magic.magic", "sweep_magic.session"),
    "sweep_magic.worker": ("sweep_magic.agents", "sweep_magic.faces", "sweep_magic.api", "sweep_magic.magic",
                           "sweep_magic.session", "sweep_magic.server"),
    "sweep_magic.agents": ("sweep_magic.worker", "sweep_magic.faces", "sweep_magic.api", "sweep_magic.magic",
                           "sweep_magic.session"),
    "sweep_magic.faces": ("sweep_magic.agents", "sweep_magic.worker", "sweep_magic.api", "sweep_magic.server",
                          "sweep_magic.magic", "sweep_magic.protocol"),
    "sweep_magic.cli": ("sweep_magic.agents", "sweep_magic.worker", "sweep_magic.protocol", "sweep_magic.magic"),
    "sweep_magic.server": ("sweep_magic.agents", "sweep_magic.worker", "sweep_magic.faces", "sweep_magic.api",
                           "sweep_magic.magic", "sweep_magic.session"),
}


def test_there_are_modules_to_check():
    assert len(MODULES) > 30 and sum(map(len, GRAPH.values())) > 50


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert not cycles


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_rules(folder):
    broken = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == folder or module.startswith(folder + ".")
        for target in targets
        if target.startswith(FORBIDDEN[folder])
    ]
    assert not broken


def test_the_core_knows_one_face_entry():
    """api and session reach the faces only through faces.show (for _ipython_display_)."""
    for module in ("sweep_magic.api", "sweep_magic.session"):
        faces = {t for t in GRAPH[module] if t.startswith("sweep_magic.faces")}
        assert faces <= {"sweep_magic.faces.show"}, module


# wandb's packages that are not its public API (wandb.Api, wandb.init, wandb.Run, ...).
PRIVATE_MODULES = ("wandb.sdk", "wandb.agents", "wandb.proto", "wandb.util", "wandb.apis.internal", "wandb.env")
# The adapter, and the server's results reader (it reads wandb's own file format with
# wandb's protobuf; it moves under the adapter later) and the reader's own tests.
ADAPTER_ALLOWED = ("sweep_magic._wandb", "sweep_magic.server.results_reader")
READER_TESTS = ("test_results_reader.py",)
OUR_OWN = {"self", "cls", "os"}  # our classes' own attributes (a panel's _on_start), os._exit


def _docstrings(tree: ast.AST) -> set[int]:
    """Docstrings may name wandb's internals: they explain, they do not touch."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip


def _private_uses(tree: ast.AST, names: set[str]) -> list[str]:
    found = []
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PRIVATE_MODULES):
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.startswith(PRIVATE_MODULES)]
        elif isinstance(node, ast.Attribute) and node.attr in names:
            if not (isinstance(node.value, ast.Name) and node.value.id in OUR_OWN):
                found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text in names or text.startswith(PRIVATE_MODULES):
                found.append(f"{text!r} (line {node.lineno})")
            elif re.search(r"\b(from|import) ({})\b".format("|".join(map(re.escape, PRIVATE_MODULES))), text):
                found.append(f"code in a string imports a private wandb module (line {node.lineno})")
            elif any(re.search(rf"\.{re.escape(n)}\b", text) for n in names if len(n) > 6):
                found.append(f"code in a string touches a private wandb name (line {node.lineno})")
    return found


def test_private_wandb_names_live_in_the_adapter():
    """Only the adapter touches wandb's private modules and names: imports, attribute
    access (``agent._run_status``), ``getattr`` strings, and code carried in strings (the
    stand-in worker's script) -- in the package, its tests and its benchmarks."""
    from sweep_magic._wandb.surface import private_names

    names = private_names()
    assert {"_run_status", "_exit_flag", "_partial_history_callback"} <= names
    here = pathlib.Path(__file__).resolve()
    files = [p for p in MODULES.items() if not p[0].startswith(ADAPTER_ALLOWED)]
    for folder in ("tests", "benchmarks", "scripts"):
        files += [(str(p), p) for p in (ROOT.parent / folder).rglob("*.py") if p != here and p.name not in READER_TESTS]
    offenders = [f"{name}: {use}" for name, path in files for use in _private_uses(ast.parse(path.read_text()), names)]
    assert not offenders
