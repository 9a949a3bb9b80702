"""What a Ray cluster offers, one record per node, and how a user's words name a node.

Shared by the Ray backend (which reads the records from Ray), the public API
(``sweep_magic.ray_nodes()``) and the panel (which shows them as checkboxes); nothing
here imports Ray, so the panel and the tests can use it without a cluster.

A node is named by its full Ray node id, a prefix of it (at least 4 characters), its
address, its hostname, or the label the views show (``ADDRESS`` or ``ADDRESS/ID6``);
the last three only when they name exactly one live node.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweep_magic.errors import PlacementError

MIN_ID_PREFIX = 4


@dataclass(frozen=True)
class ClusterNode:
    """One node of a Ray cluster as Ray accounts for it (not NVML: remote GPUs are Ray's)."""

    node_id: str
    address: str
    hostname: str
    gpus: int
    gpus_free: int | None  # None: Ray's per-node figures could not be read
    cpus: float
    alive: bool
    head: bool
    label: str  # what the views show: the address, with a short id when nodes share it

    def __str__(self) -> str:
        return self.label


def node_labels(nodes: list[tuple[str, str]]) -> dict[str, str]:
    """``{node_id: label}`` for ``(node_id, address)`` pairs: the address, with the id's first
    6 characters where several nodes share it (one host, containers, Ray's test clusters)."""
    per_address: dict[str, int] = {}
    for _node_id, address in nodes:
        per_address[address] = per_address.get(address, 0) + 1
    return {node_id: f"{address}/{node_id[:6]}" if per_address[address] > 1 else address for node_id, address in nodes}


def find_node(key: str, nodes: list[ClusterNode]) -> ClusterNode:
    """The one live node ``key`` names; ``PlacementError`` (one line) when none or several."""
    text = str(key).strip()
    live = [n for n in nodes if n.alive]
    if not text:
        raise PlacementError("an empty node name: give a node id (or its first characters), address or hostname")
    exact = [n for n in live if text in (n.node_id, n.label)]
    if len(exact) == 1:
        return exact[0]
    by_id = [n for n in live if len(text) >= MIN_ID_PREFIX and n.node_id.startswith(text)]
    by_name = [n for n in live if text in (n.address, n.hostname)]
    found = {n.node_id: n for n in (*by_id, *by_name)}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        known = ", ".join(n.label for n in live) or "none"
        raise PlacementError(f"no live node of the Ray cluster is {text!r} (live nodes: {known})")
    raise PlacementError(f"{text!r} names {len(found)} nodes of the Ray cluster "
                         f"({', '.join(n.label for n in found.values())}): give the node id or its label")
