"""The house rules of docs/architecture.md, read from the code's own imports.

Every ``import``/``from ... import`` of a sweep_magic module anywhere in a module (at the
top or inside a function) is an edge; the graph must have no cycle, and each folder may
import only what its rule allows."""

from __future__ import annotations

import ast
import pathlib

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


def test_private_wandb_names_live_in_the_adapter():
    """Only the adapter (and the server's results reader, which reads wandb's own file
    format) may import from wandb's private packages."""
    allowed = {"sweep_magic._wandb"}
    offenders = []
    for module, path in MODULES.items():
        if module in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("wandb.sdk", "wandb.agents")):
                offenders.append(f"{module}: from {node.module}")
    pytest.xfail("the wandb adapter (issue 10) is not complete yet") if offenders else None
    assert not offenders
