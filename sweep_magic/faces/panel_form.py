"""The panel's form: what to run (sweep, function) and where (GPUs or CPU cores).

The form only collects values and turns them into ``launch(...)`` keyword
arguments; it never launches anything itself, and it reads GPU figures from the
records ``devices.gpu_inventory()`` returns (it never calls NVML).
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import ipywidgets as W

from sweep_magic.devices import available_cores, current_user
from sweep_magic.errors import SweepMagicError
from sweep_magic.faces.panel_html import cluster_html, gpu_html, node_html

# Names IPython puts in the user namespace that are not the user's functions.
_IPYTHON_NAMES = frozenset({"exit", "quit", "get_ipython", "open", "display", "In", "Out"})


def user_functions(namespace: dict, hidden: dict | None = None) -> list[str]:
    """Names of the callables the user defined: no modules, classes, builtins or IPython's own."""
    hidden = hidden or {}
    names = []
    for name, value in list(namespace.items()):  # a copy: cells may define names meanwhile
        if name.startswith("_") or name in _IPYTHON_NAMES or (name in hidden and hidden[name] is value):
            continue
        if isinstance(value, (types.ModuleType, type, types.BuiltinFunctionType)):
            continue
        if _from_tooling(value):
            continue
        if inspect.isfunction(value) or isinstance(value, types.MethodType) or _is_partial(value):
            names.append(name)
    return sorted(names)


# Functions imported from these are tools, not something to train (``from sweep_magic.faces.panel import show_panel``).
_TOOL_PACKAGES = ("sweep_magic", "IPython", "ipykernel", "ipywidgets", "wandb", "jupyter_client")


def _from_tooling(value) -> bool:
    module = getattr(getattr(value, "func", value), "__module__", None) or ""
    return module.split(".")[0] in _TOOL_PACKAGES


def _is_partial(value) -> bool:
    import functools

    return isinstance(value, functools.partial)


def _int_box(description: str, value: int, minimum: int, maximum: int = 10_000, width: str = "11em") -> W.BoundedIntText:
    return W.BoundedIntText(
        value=value, min=minimum, max=maximum, description=description,
        style={"description_width": "initial"}, layout=W.Layout(width=width),
    )


PROGRAM = "(the sweep's program)"  # no function: each run executes the sweep's program:, as `wandb agent`


class PanelForm:
    """Widgets for the launch settings; ``launch_kwargs()`` reads them back.

    With ``cluster`` (a Ray cluster's ``ClusterNode`` records) the devices part shows each
    node with one checkbox per GPU, and Start launches on Ray; else this machine's GPUs
    (``inventory``, NVML records) or its CPU cores.  ``count`` wraps every widget made
    (the panel counts their messages)."""

    def __init__(self, inventory: list, shell=None, defaults: dict | None = None, *, cluster: list | None = None,
                 ray_address: str | None = None, count=lambda w: w):
        d = dict(defaults or {})
        self.shell = shell
        self._made = count
        self.ray = cluster is not None
        self.ray_address = ray_address
        self.gpus = [] if self.ray else list(inventory)
        self.me = current_user()  # my own processes on a GPU do not make it busy
        self.sweep = W.Text(
            value=str(d.get("sweep_id") or d.get("sweep") or ""),
            description="sweep",
            placeholder="sweep id, or a config: dict variable name or YAML path",
            style={"description_width": "initial"},
            layout=W.Layout(width="34em"),
        )
        self.project = W.Text(
            value=str(d.get("project") or ""), description="project", placeholder="(default)",
            style={"description_width": "initial"}, layout=W.Layout(width="16em"),
        )
        self.function = W.Dropdown(
            options=[], description="function", style={"description_width": "initial"}, layout=W.Layout(width="20em")
        )
        self._wanted_function = d.get("function")
        if callable(self._wanted_function):
            self._wanted_function = getattr(self._wanted_function, "__name__", None)
        self.count = _int_box("runs per agent (0: no limit)", int(d.get("count") or 0), 0, width="20em")
        self.fresh_process = W.Checkbox(
            value=d.get("isolate") == "run", description="fresh process per run", indent=False,
            tooltip="each run's function in a process of its own: memory and globals a run keeps die with it",
            layout=W.Layout(width="14em"),
        )
        # One checkbox per GPU; busy ones (another user's process, little free memory) start unticked.
        wanted = d.get("gpus")
        self.gpu_boxes: list[W.Checkbox] = []
        self.gpu_labels: list[W.HTML] = []
        for gpu in self.gpus:
            tick = (gpu.index in wanted) if wanted is not None else not gpu.busy(my_user=self.me)
            box = W.Checkbox(value=bool(tick), description=f"GPU {gpu.index}", indent=False, layout=W.Layout(width="6em"))
            self.gpu_boxes.append(box)
            self.gpu_labels.append(W.HTML(gpu_html(gpu, self.me)))
        self.agents_per_gpu = _int_box("agents per GPU", int(d.get("agents_per_gpu") or 1), 1, 64)
        # Ray: one row per node, a checkbox per GPU; the ticks on a node say how many of its GPUs.
        self.node_rows: list[_NodeRow] = []
        self.nodes_box = W.VBox([])
        self.cluster_note = W.HTML("")
        if self.ray:
            for widget, traits in self.update_nodes(cluster, wanted=wanted if isinstance(wanted, dict) else None).items():
                for name, value in traits.items():
                    setattr(widget, name, value)
        cpus = d.get("cpus")
        self.n_cores = len(available_cores())
        self.cpu_agents = _int_box("CPU agents", int(cpus) if isinstance(cpus, int) else min(2, self.n_cores), 1, 256, "10em")
        # devices.plan(cpus=N) splits the kernel's cores evenly among the N agents, so
        # "cores each" is a consequence shown beside the count, not a second input.
        self.cores_each = W.HTML(cores_each_html(self.cpu_agents.value, self.n_cores))
        self.refresh_functions()

    @property
    def cpu_mode(self) -> bool:
        if self.ray:
            return not any(row.node.gpus for row in self.node_rows)
        return not self.gpus

    @property
    def polls(self) -> bool:
        """Whether the devices part has figures to keep fresh (GPUs, or a Ray cluster's nodes)."""
        return self.ray or bool(self.gpus)

    def update_nodes(self, cluster: list, wanted: dict | None = None) -> dict:
        """Take a fresh read of the Ray cluster: new nodes get rows (ticked as their free GPUs),
        a node that is gone keeps its row, unticked and disabled.  Returns the desired traits
        for the refresher."""
        rows = {row.node.node_id: row for row in self.node_rows}
        desired: dict = {}
        for node in cluster:
            row = rows.get(node.node_id)
            if row is None:
                if not node.alive:
                    continue  # a node that died before the panel saw it is no choice
                row = _NodeRow(node, self._made, _wanted_count(node, wanted))
                self.node_rows.append(row)
                rows[node.node_id] = row
            desired.update(row.update(node))
        for node_id in set(rows) - {node.node_id for node in cluster}:  # no longer listed at all
            gone = rows[node_id]
            desired.update(gone.update(dataclasses.replace(gone.node, alive=False, gpus_free=0)))
        desired[self.nodes_box] = {"children": tuple(row.box for row in self.node_rows)}
        desired[self.cluster_note] = {"value": cluster_html([row.node for row in self.node_rows])}
        return desired

    def refresh_functions(self) -> None:
        """Re-read the user's namespace (after each cell) so new functions appear."""
        ns = getattr(self.shell, "user_ns", None) or {}
        hidden = getattr(self.shell, "user_ns_hidden", None) or {}
        names = [*user_functions(ns, hidden), PROGRAM]
        if tuple(names) == tuple(self.function.options):
            return
        keep = self.function.value
        self.function.options = names
        for choice in (self._wanted_function, keep, "train"):
            if choice in names:
                self.function.value = choice
                break

    def input_widgets(self) -> list:
        node_widgets = [w for row in self.node_rows for w in (row.label, *row.boxes)]
        return [self.sweep, self.project, self.function, self.count, self.fresh_process, self.agents_per_gpu,
                self.cpu_agents, self.cores_each, *self.gpu_boxes, self.nodes_box, self.cluster_note, *node_widgets]

    def desired(self) -> dict:
        """Display-only parts of the form that follow its inputs (the refresher sends them)."""
        return {self.cores_each: {"value": cores_each_html(self.cpu_agents.value, self.n_cores)}}

    def widget(self) -> W.Widget:
        what = W.HBox([self.sweep, self.project])
        how = W.HBox([self.function, self.count, self.fresh_process])
        if self.ray:
            where = W.VBox([self.cluster_note, self.nodes_box,
                            W.HBox([self.cpu_agents]) if self.cpu_mode else self.agents_per_gpu])
        elif self.cpu_mode:
            where = W.VBox([
                W.HTML("<b>devices</b> — no GPU visible: agents on CPU cores"),
                W.HBox([self.cpu_agents, self.cores_each]),
            ])
        else:
            rows = [W.HBox([box, label]) for box, label in zip(self.gpu_boxes, self.gpu_labels)]
            where = W.VBox([W.HTML("<b>devices</b>"), *rows, self.agents_per_gpu])
        return W.VBox([what, how, where])

    def update_gpus(self, inventory: list) -> dict:
        """Desired label values for fresh GPU figures (the refresher sends them)."""
        by_index = {g.index: g for g in inventory}
        out = {}
        for gpu, label in zip(self.gpus, self.gpu_labels):
            fresh = by_index.get(gpu.index)
            if fresh is not None:
                out[label] = {"value": gpu_html(fresh, self.me)}
        return out

    # ------------------------------------------------------------ reading back

    def resolve_function(self):
        name = self.function.value
        if name == PROGRAM:
            return None  # launch runs the sweep's program:, or says in one line that it has none
        ns = getattr(self.shell, "user_ns", None) or {}
        if not name or name not in ns:
            raise SweepMagicError("Pick the function to run: define it in a cell (def train(): ...) and choose it.")
        return ns[name]

    def resolve_sweep(self, local_sweep) -> str:
        """The sweep id: typed directly, or made from a dict variable / YAML file via local_sweep."""
        text = self.sweep.value.strip()
        if not text:
            raise SweepMagicError("Give a sweep id, or the name of a config dict, or a YAML path.")
        from sweep_magic.configs import config_from

        config = config_from(text, getattr(self.shell, "user_ns", None) or {})
        if config is None:
            return text
        kwargs = {"project": self.project.value.strip()} if self.project.value.strip() else {}
        return local_sweep(config, **kwargs)

    def placement(self) -> dict:
        if self.ray:
            return self._ray_placement()
        if self.cpu_mode:
            return {"cpus": self.cpu_agents.value}
        gpus = [gpu.index for gpu, box in zip(self.gpus, self.gpu_boxes) if box.value]
        if not gpus:
            raise SweepMagicError("Tick at least one GPU.")
        return {"gpus": gpus, "agents_per_gpu": self.agents_per_gpu.value}

    def _ray_placement(self) -> dict:
        where = {"backend": "ray", **({"ray_address": self.ray_address} if self.ray_address else {})}
        if self.cpu_mode:
            return {"cpus": self.cpu_agents.value, **where}
        per_node = {row.node.node_id: row.ticked() for row in self.node_rows if row.node.alive and row.ticked()}
        if not per_node:
            raise SweepMagicError("Tick at least one GPU of a live node.")
        return {"gpus": per_node, "agents_per_gpu": self.agents_per_gpu.value, **where}

    def launch_kwargs(self, local_sweep) -> dict:
        """Everything Start passes to ``launch`` — function first so its error shows first."""
        function = self.resolve_function()
        placement = self.placement()
        sweep_id = self.resolve_sweep(local_sweep)
        kwargs = {"function": function, "sweep_id": sweep_id, "count": self.count.value or None, **placement}
        if self.fresh_process.value:
            kwargs["isolate"] = "run"
        if self.project.value.strip():
            kwargs["project"] = self.project.value.strip()
        return kwargs


class _NodeRow:
    """One Ray node: its figures and a checkbox per GPU.  Ray picks which of the node's GPUs an
    agent gets (its accounting sets ``CUDA_VISIBLE_DEVICES``), so the ticks count: two ticked
    boxes on a node are two GPUs there."""

    def __init__(self, node, made, ticked: int):
        self.node = node
        self.label = made(W.HTML(node_html(node)))
        self.boxes = [made(W.Checkbox(value=i < ticked, description=f"GPU {i}", indent=False,
                                      tooltip="one of this node's GPUs (Ray picks which)", layout=W.Layout(width="6em")))
                      for i in range(node.gpus)]
        self.box = W.VBox([self.label, W.HBox(self.boxes)] if self.boxes else [self.label])

    def ticked(self) -> int:
        return sum(1 for box in self.boxes if box.value)

    def update(self, node) -> dict:
        self.node = node
        out = {self.label: {"value": node_html(node)}}
        if not node.alive:  # gone: its boxes can no longer be chosen
            out.update({box: {"value": False, "disabled": True} for box in self.boxes})
        return out


def _wanted_count(node, wanted: dict | None) -> int:
    """How many of a new node's boxes start ticked: what the caller asked for it (by id, label,
    address or hostname), else its free GPUs (all of them when Ray's free figure is unknown)."""
    if wanted:
        for key, count in wanted.items():
            if key in (node.node_id, node.label, node.address, node.hostname):
                return int(count)
        return 0
    return node.gpus if node.gpus_free is None else node.gpus_free


def cores_each_html(agents: int, n_cores: int) -> str:
    if agents > n_cores:
        return f'<span style="font-size:12px;color:#b08800">{agents} agents share {n_cores} cores (no pinning)</span>'
    return f'<span style="font-size:12px;color:#586069">{n_cores // agents} of {n_cores} cores each</span>'
