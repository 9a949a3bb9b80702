"""The Ray backend: agents on the nodes of a Ray cluster, supervised from the kernel.

    kernel (Ray driver)                                          any node of the cluster
    ┌────────────────────────────────────────┐                   ┌──────────────────────────────┐
    │ Supervisor (unchanged state machine)   │ AgentHost.run(spec)│ AgentHost actor (ray_host)   │
    │  RayBackend.start ─ actor in its       ├──────────────────►│  └ worker process group      │
    │   placement-group bundle               │◄── stream ────────┤    (as local: lifeline, ...) │
    │  RayAgentProcess.events(): reader      │  hello, batches,  │  relay 127.0.0.1 ──┐         │
    │   thread; log bytes → agent-N.log      │  exit code        └────────────────────┼─────────┘
    │ Gateway actor (this node) ◄────────────┼── forward() over Ray ──────────────────┘
    │  └► 127.0.0.1 sweep server (key checked end to end)
    └────────────────────────────────────────┘

Placement: ``gpus=N`` is a count across the cluster (``"all"``: every GPU it has, ``"free"``:
those free now); each GPU is one placement-group bundle ``{"GPU": 1, "CPU": k}`` shared by
``agents_per_gpu=k`` agents holding ``1/k`` GPU each, so exactly N whole GPUs are taken and
Ray sets each actor's ``CUDA_VISIBLE_DEVICES``.  ``gpus={node: N, ...}`` asks for N GPUs on each
named node (the panel's per-node checkboxes): each bundle carries Ray's ``ray.io/node-id`` label
selector, so Ray picks which of the node's GPUs, never which node.  ``cpus=N`` is N CPU agents
of one CPU each.
Every agent reserves ``cpus_per_agent`` CPUs (default ``CPUS_PER_AGENT``) and caps its thread
pools to that.  A request
the cluster can never meet fails at once; one it cannot meet now fails after
``PLACEMENT_TIMEOUT`` seconds; either way nothing is left behind.

Failures: a dead actor ends the stream with ``RayActorError`` at once, an actor whose raylet
died says so itself (ray_host), and a node that falls silent (frozen, cut off) is found by the
stream's beat and an unanswered ping (``SILENT_SECONDS``); either way the supervisor reports the
lost run to the server from here and restarts the agent with its usual backoff; the new actor takes the same bundle, which Ray re-places on
the remaining nodes.  Actors are never detached: they, their workers and the placement
group die with the kernel.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from sweep_magic.agents import local
from sweep_magic.cluster import ClusterNode, find_node, node_labels
from sweep_magic.devices import THREAD_CAP_VARS, AgentSlot, check_shape
from sweep_magic.errors import PlacementError, SweepMagicError, first_line

PLACEMENT_TIMEOUT = 15.0  # ≤ 20 s from launch to a PlacementError, connecting included
START_TIMEOUT = 30.0  # an actor not running by then has no room (a lost node's bundle)
KILL_GRACE = 3.0  # SIGKILL through the actor, then ray.kill if it did not end
# A placed actor's stream carries an item at least every 0.5 s (ray_host.BEAT_SECONDS).  When
# it is silent this long, the actor is asked to answer a ping within PING_TIMEOUT; a node
# that cannot (frozen, cut off, powered off) loses its agent now, not when Ray's health
# checks declare it dead (≈15 s).  Worst case SILENT_SECONDS + PING_TIMEOUT + a poll ≈ 4.3 s.
SILENT_SECONDS = 2.0
PING_TIMEOUT = 2.0
POLL_SECONDS = 0.25
CPUS_PER_AGENT = 1
LOST_CODE = -int(signal.SIGKILL)
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node (placement_group's bundle_label_selector)  # what a dead actor's agent reports as its exit status

_classes: dict = {}
_classes_lock = threading.Lock()


def _ray():
    try:
        import ray
    except ImportError:
        raise SweepMagicError("backend='ray' needs Ray: pip install 'sweep_magic[ray]'") from None
    return ray


def _remote(name: str):
    """The ``ray.remote`` classes, made once per process (each call would re-export them)."""
    ray = _ray()
    from sweep_magic.agents import ray_host

    with _classes_lock:
        if not _classes:
            # max_concurrency: signal()/drain() must run while run() streams.
            _classes["host"] = ray.remote(max_concurrency=8, max_restarts=0)(ray_host.AgentHost)
            _classes["gateway"] = ray.remote(num_cpus=0, max_concurrency=32, max_restarts=0)(ray_host.Gateway)
        return _classes[name]


def connect(address: str | None) -> bool:
    """Use this process's Ray, or join the cluster at ``address`` (None: ``"auto"``).
    Returns True when connected through Ray Client (``ray://``)."""
    ray = _ray()
    if ray.is_initialized():
        return _client_mode(ray)
    where = address or "auto"
    try:
        # log_to_driver=False: Ray would print every actor's output into the cell from a
        # thread, which DESIGN.md rules out (and our workers' output goes to their logs).
        ray.init(address=where, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except Exception as err:  # noqa: BLE001 - whatever ray.init raises is the one-line reason
        raise SweepMagicError(f"could not connect to Ray at {where!r}: {first_line(err)}") from None
    _divert_cluster_messages()
    return where.startswith("ray://")


def _divert_cluster_messages() -> None:
    """Ray's driver prints the cluster's error messages ("a raylet died", ...) from a thread of
    its own, whatever ``log_to_driver`` says; in a notebook they would land in whichever cell
    ran last.  Where we started Ray, they go to ``<SWEEP_MAGIC_HOME>/ray-messages.log``; the
    views show their consequence (the agent's reason).  A private Ray name: if a Ray release
    moves it, Ray prints as before."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "sweep_magic", False):
        return

    def to_file(data, ignore_prefix=False):
        from sweep_magic.paths import home

        try:
            os.makedirs(home(), mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(home(), "ray-messages.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                for line in data.get("lines") or ():
                    f.write(f"{stamp} ({data.get('pid')}) {line}\n")
        except OSError:
            pass

    to_file.sweep_magic = True
    worker.print_to_stdstream = to_file


def _client_mode(ray) -> bool:
    try:
        return bool(ray.util.client.ray.is_connected())
    except Exception:  # noqa: BLE001 - Ray's state unreadable: treated as absent
        return False


# ---------------------------------------------------------------------------------------------
# Placement


def check_request(gpus=None, cpus=None, agents_per_gpu=1, cpus_per_agent=None) -> tuple[str, object]:
    """The request's shape, checked without a cluster: ("gpu", N | "all" | "free"),
    ("nodes", {node: N}) for GPUs on named nodes, ("cpu", N) or ("auto", None)."""
    check_shape(gpus, cpus, agents_per_gpu)
    if cpus_per_agent is not None and (isinstance(cpus_per_agent, bool) or not isinstance(cpus_per_agent, int)
                                       or cpus_per_agent < 1):
        raise PlacementError(f"cpus_per_agent must be a whole number ≥ 1 (CPUs each agent reserves), "
                             f"not {cpus_per_agent!r}")
    if cpus is not None:
        return "cpu", cpus
    if gpus is None:
        return "auto", None
    if isinstance(gpus, str) and "=" in gpus:
        gpus = _per_node_words(gpus)
    if isinstance(gpus, dict):
        return "nodes", _per_node(gpus)
    if isinstance(gpus, str):
        word = gpus.strip().lower()
        if word in ("all", "free"):
            return "gpu", word
        if word.isdigit():
            gpus = int(word)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise PlacementError(
            f"with Ray, gpus= is how many GPUs of the cluster to use (a whole number, 'all' or 'free'), "
            f"or {{node: how many}}, not {gpus!r}"
        )
    return "gpu", gpus


def _per_node_words(text: str) -> dict:
    """``"NODE=2,NODE=1"`` (the magic's and the CLI's spelling of ``{node: 2, node: 1}``)."""
    out: dict = {}
    for part in (p.strip() for p in text.split(",")):
        node, eq, count = part.rpartition("=")
        if not eq or not node.strip() or not count.strip().isdigit():
            raise PlacementError(f"--gpus with --ray: expected NODE=COUNT[,NODE=COUNT...], not {part!r}")
        out[node.strip()] = out.get(node.strip(), 0) + int(count)
    return out


def _per_node(gpus: dict) -> dict[str, int]:
    if not gpus:
        raise PlacementError("gpus={}: name at least one node and how many of its GPUs to use")
    for node, count in gpus.items():
        if not isinstance(node, str) or not node.strip():
            raise PlacementError(f"gpus={{node: how many}}: a node is named by a string (id, address, hostname), "
                                 f"not {node!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PlacementError(f"gpus={{{node!r}: {count!r}}}: how many GPUs of the node, a whole number ≥ 1")
    return {node.strip(): count for node, count in gpus.items()}


@dataclass
class Placement:
    """The placement group and, per agent slot, the share of its bundle the actor takes."""

    slots: list[AgentSlot]
    bundle_of: list[int]
    num_gpus: float
    pg: object
    cpus_each: int = CPUS_PER_AGENT
    _released: bool = field(default=False, repr=False)

    def options(self, index: int) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.bundle_of[index])
        return dict(num_gpus=self.num_gpus, num_cpus=self.cpus_each, scheduling_strategy=strategy)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - Ray is gone already: the group went with the job
            pass


def _threads(n: int) -> dict[str, str]:
    # Ray gives actors without num_cpus OMP_NUM_THREADS=1 and leaves the rest alone: set all.
    return {var: str(max(1, n)) for var in THREAD_CAP_VARS}


def place(*, gpus=None, cpus=None, agents_per_gpu=1, cpus_per_agent=None, timeout: float | None = None) -> Placement:
    """Reserve the agents' resources on the connected cluster; ``PlacementError`` when it cannot."""
    timeout = PLACEMENT_TIMEOUT if timeout is None else timeout
    kind, n = check_request(gpus, cpus, agents_per_gpu, cpus_per_agent)
    c = cpus_per_agent or CPUS_PER_AGENT
    ray = _ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    total, free = ray.cluster_resources(), ray.available_resources()
    gpu_total, gpu_free = int(total.get("GPU", 0)), int(free.get("GPU", 0))
    if kind == "auto":
        kind, n = ("gpu", gpu_total) if gpu_total else ("cpu", 1)
    k = agents_per_gpu if kind != "cpu" else 1
    selectors = None
    if kind == "nodes":
        on_node = _gpus_on_nodes(n)
        n = len(on_node)
        bundles = [{"GPU": 1, "CPU": k * c} for _ in on_node]
        # Ray's own label on every node: each bundle may only go to the node it was asked on.
        selectors = [{NODE_ID_LABEL: node.node_id} for node in on_node]
    elif kind == "gpu":
        if gpu_total == 0:
            raise PlacementError("the Ray cluster has no GPU; use cpus=N for CPU agents")
        n = {"all": gpu_total, "free": gpu_free}.get(n, n)
        if n == 0:
            raise PlacementError(f"none of the Ray cluster's {gpu_total} GPUs is free now")
        if n > gpu_total:
            raise PlacementError(f"gpus={n}: the Ray cluster has {gpu_total} GPU{'s' if gpu_total != 1 else ''}")
        bundles = [{"GPU": 1, "CPU": k * c} for _ in range(n)]
    else:
        bundles = [{"CPU": c} for _ in range(n)]
    agents = n * k
    cpu_total = total.get("CPU", 0)
    if agents * c > cpu_total:
        raise PlacementError(f"{agents} agents need {agents * c} CPUs; the Ray cluster has {cpu_total:g}")
    need = max(bundle["CPU"] for bundle in bundles)  # a bundle is placed whole, on one node
    if need > 1:
        most = max((node.cpus for node in nodes() if node.alive), default=0)
        if need > most:
            what = f"{k} agents × {c} CPUs on one GPU's node" if kind != "cpu" else f"cpus_per_agent={c}"
            raise PlacementError(f"{what}: no node of the Ray cluster has {need} CPUs (the most: {most:g})")
    # SPREAD: agents on as many nodes as possible (memory headroom, and a lost node takes fewer).
    pg = placement_group(bundles, strategy="SPREAD", **({"bundle_label_selector": selectors} if selectors else {}))
    try:
        ready = pg.wait(timeout_seconds=timeout)
    except BaseException:
        remove_placement_group(pg)
        raise
    if not ready:
        remove_placement_group(pg)  # an unmet request would otherwise stay pending forever
        if kind == "nodes":
            asked = ", ".join(f"{node}: {count}" for node, count in _count_by_label(on_node).items())
            have = ", ".join(f"{node}: {node.gpus_free if node.gpus_free is not None else '?'}"
                             for node in dict.fromkeys(on_node))
            raise PlacementError(f"the Ray cluster could not place {agents} agents within {timeout:g} s: GPUs asked "
                                 f"per node {asked}; free then {have}")
        what = f"{n} GPU{'s' if n != 1 else ''}" if kind == "gpu" else f"{n} CPUs"
        have = f"{gpu_free} of {gpu_total} GPUs" if kind == "gpu" else f"{free.get('CPU', 0):g} of {cpu_total:g} CPUs"
        raise PlacementError(f"the Ray cluster could not place {agents} agents ({what}) within {timeout:g} s; "
                             f"{have} were free")
    if kind != "cpu":
        # An even 1/k (to Ray's 4 decimals) so that k shares always fit in the bundle's GPU.
        share = math.floor(10000 / k) / 10000
        env = _threads(c)  # CUDA_VISIBLE_DEVICES: Ray sets it per actor
        slots = [AgentSlot(index=i, kind="gpu", label="gpu", gpu_ids=(), cpus=None, env=dict(env))
                 for i in range(agents)]
        return Placement(slots, [i // k for i in range(agents)], share, pg, c)
    # Zero-GPU actors keep the node's CUDA_VISIBLE_DEVICES: a CPU agent must hide GPUs itself.
    env = {"CUDA_VISIBLE_DEVICES": "", **_threads(c)}
    slots = [AgentSlot(index=i, kind="cpu", label="cpu", gpu_ids=(), cpus=None, env=dict(env)) for i in range(n)]
    return Placement(slots, list(range(n)), 0.0, pg, c)


def _gpus_on_nodes(per_node: dict[str, int]) -> list[ClusterNode]:
    """One entry per GPU asked for, each the node it must be on; a node named twice (by its
    id and its address, say) counts once per mention."""
    known = nodes()
    out: list[ClusterNode] = []
    for key, count in per_node.items():
        node = find_node(key, known)
        out += [node] * count
    for node, count in _count_by_node(out).items():
        if count > node.gpus:
            has = f"has {node.gpus} GPU{'s' if node.gpus != 1 else ''}" if node.gpus else "has no GPU"
            raise PlacementError(f"node {node.label}: {count} GPUs asked, it {has}")
    return out


def _count_by_node(on_node: list[ClusterNode]) -> dict[ClusterNode, int]:
    counts: dict[ClusterNode, int] = {}
    for node in on_node:
        counts[node] = counts.get(node, 0) + 1
    return counts


def _count_by_label(on_node: list[ClusterNode]) -> dict[str, int]:
    return {node.label: count for node, count in _count_by_node(on_node).items()}


# ---------------------------------------------------------------------------------------------
# The cluster's nodes


def connected() -> bool:
    """Whether this process already has Ray initialised (never imports Ray to find out)."""
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported or broken Ray: not connected
        return False


def nodes() -> list[ClusterNode]:
    """The connected cluster's nodes, live ones first (head first among them), as Ray
    accounts for them.  Per-node free figures come from a private Ray name; when a Ray
    release moves it they read as unknown (``gpus_free=None``), never as free."""
    ray = _ray()
    listed = ray.nodes()
    free = _free_per_node()
    labels = node_labels([(n["NodeID"], n.get("NodeManagerAddress", "?")) for n in listed if n.get("Alive")])
    out = []
    for n in listed:
        node_id, resources = n["NodeID"], n.get("Resources") or {}
        alive = bool(n.get("Alive"))
        left = free.get(node_id) if free is not None else None
        out.append(ClusterNode(
            node_id=node_id,
            address=n.get("NodeManagerAddress", "?"),
            hostname=n.get("NodeManagerHostname", ""),
            gpus=int(resources.get("GPU", 0)),
            gpus_free=(int(left.get("GPU", 0)) if left is not None else None) if alive else 0,
            cpus=float(resources.get("CPU", 0)),
            alive=alive,
            head="node:__internal_head__" in resources,
            label=labels.get(node_id) or f"{n.get('NodeManagerAddress', '?')}/{node_id[:6]}",
        ))
    return sorted(out, key=lambda node: (not node.alive, not node.head, node.label))


def _free_per_node() -> dict | None:
    try:
        from ray._private import state

        return state.available_resources_per_node()
    except Exception:  # noqa: BLE001 - a private Ray name: unknown, never "free"
        return None


# ---------------------------------------------------------------------------------------------
# The backend


class RayBackend:
    """``Backend`` over Ray (see the module diagram).  ``close()`` frees the placement group
    and the gateway; the session calls it once every agent has ended."""

    def __init__(self, placement: Placement, *, server_url: str | None):
        ray = _ray()
        self._placement = placement
        self._slot_of: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._nodes: dict[str, str] = {}
        self._gateway = None
        if server_url:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            self._gateway = _remote("gateway").options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
            ).remote(server_url)

    def for_slots(self, spec_for_slot):
        """Wrap ``spec_for_slot`` so that ``start`` knows which slot (bundle) a spec is for:
        the supervisor calls the two back to back, under its lock."""

        def build(slot: AgentSlot):
            spec = spec_for_slot(slot)
            with self._lock:
                self._slot_of[id(spec)] = slot.index
            return spec

        return build

    def start(self, spec, *, log_path: str, header: str) -> RayAgentProcess:
        with self._lock:
            index = self._slot_of.pop(id(spec))
            if self._closed:
                raise SweepMagicError("the session's Ray placement group was released when its agents ended")
        actor = _remote("host").options(**self._placement.options(index)).remote()
        kernel_paths = [os.getcwd(), *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
        stream = actor.run.remote(index, spec, header, self._gateway, kernel_paths, os.getcwd())
        return RayAgentProcess(actor, stream, spec, log_path, self.node_label)

    def node_label(self, node_id: str, ip: str) -> str:
        """The node's IP, with a short id when several nodes share it (one host, containers)."""
        with self._lock:
            if node_id not in self._nodes:
                try:
                    alive = {n["NodeID"]: n.get("NodeManagerAddress") for n in _ray().nodes() if n.get("Alive")}
                except Exception:  # noqa: BLE001 - no node list: no same-address check
                    alive = {}
                alive.setdefault(node_id, ip)
                self._nodes[node_id] = node_labels(list(alive.items()))[node_id]
            return self._nodes[node_id]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._placement.release()
        if self._gateway is not None:
            try:
                _ray().kill(self._gateway)
            except Exception:  # noqa: BLE001 - cleanup is best effort: Ray may be gone
                pass


class RayAgentProcess:
    """One agent's actor, seen from the kernel: ``AgentProcess`` for the supervisor."""

    def __init__(self, actor, stream, spec, log_path: str, label):
        self.pid: int | None = None
        self.node = ""
        self.node_id: str | None = None
        self.device: str | None = None  # "gpu 1" once placed (the slot only says "gpu")
        self.exit_reason: str | None = None
        self._actor, self._stream, self._spec, self._label = actor, stream, spec, label
        self._code: int | None = None
        self._why_lost: str | None = None
        self._hello = threading.Event()
        self._ended = threading.Event()
        self._log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._timer = threading.Timer(START_TIMEOUT, self._start_timeout)
        self._timer.daemon = True
        self._timer.start()

    @property
    def returncode(self) -> int | None:
        return self._code

    def events(self):
        ray = _ray()
        try:
            heard = time.monotonic()
            while True:
                ready, _ = ray.wait([self._stream], timeout=POLL_SECONDS)
                if not ready:
                    if self._hello.is_set() and time.monotonic() - heard >= SILENT_SECONDS:
                        if not self._answers_ping(ray):
                            self._why_lost = (f"its Ray node stopped answering ({time.monotonic() - heard:.1f} s "
                                              "without a word; frozen, cut off or powered off)")
                            self._kill()
                            self._finish(LOST_CODE, self._why_lost)
                            return
                        heard = time.monotonic()
                    continue
                try:
                    ref = next(self._stream)
                except StopIteration:
                    break
                heard = time.monotonic()
                item = ray.get(ref)
                if "pid" in item:
                    self._placed(item)
                    continue
                if item.get("log"):
                    self._write(item["log"])
                if "exit" in item:
                    self._finish(item["exit"], item.get("lost"))
                    return
                yield from item.get("lines", ())
            self._finish(LOST_CODE, "its Ray actor ended without an exit status")
        except ray.exceptions.RayActorError as err:
            self._finish(LOST_CODE, self._why_lost or _lost_reason(err))
        except Exception as err:  # noqa: BLE001 - RayTaskError: run() itself failed on the node
            self._finish(LOST_CODE, self._why_lost or f"its Ray actor failed: {_cause(err)}")

    def _answers_ping(self, ray) -> bool:
        try:
            return bool(ray.get(self._actor.ping.remote(), timeout=PING_TIMEOUT))
        except ray.exceptions.GetTimeoutError:
            return False
        except ray.exceptions.RayActorError:
            return True  # dead, not silent: the stream's own end says why, at once

    def _placed(self, hello: dict) -> None:
        self._timer.cancel()
        self.pid, self.node_id = hello["pid"], hello["node_id"]
        self.node = self._label(hello["node_id"], hello["ip"])
        gpus = hello.get("gpus") or []
        self.device = f"gpu {','.join(gpus)}" if gpus else "cpu"
        self._hello.set()

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._log_fd, data)
        except OSError:
            pass

    def _finish(self, code: int, reason: str | None) -> None:
        self._timer.cancel()
        if reason:
            self.exit_reason = reason
            self._write(f"[sweep_magic] agent lost: {reason}\n".encode())
        self._code = code
        self._ended.set()

    def _start_timeout(self) -> None:
        if not self._hello.is_set():
            self._why_lost = f"its Ray actor was not placed within {START_TIMEOUT:g} s (no room left on the cluster?)"
            self._kill()

    def _kill(self) -> None:
        try:
            _ray().kill(self._actor, no_restart=True)
        except Exception:  # noqa: BLE001 - cleanup is best effort: Ray may be gone
            pass

    def signal(self, sig: int) -> bool:
        if self._ended.is_set():
            return False
        if not self._hello.is_set():
            # No worker yet (the actor is pending or starting): ending the actor ends it all.
            if sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                self._why_lost = self._why_lost or "stopped before its Ray actor started"
                self._kill()
            return True
        try:
            self._actor.signal.remote(int(sig))
        except Exception:  # noqa: BLE001 - Ray's state unreadable: treated as not alive
            return False
        if sig == signal.SIGKILL:
            # A node too wedged to pass the signal on: Ray's kill still ends the actor, and the
            # worker with it (its lifeline is the actor's).
            timer = threading.Timer(KILL_GRACE, lambda: self._ended.is_set() or self._kill())
            timer.daemon = True
            timer.start()
        return True

    def drain(self) -> None:
        if self._hello.is_set() and not self._ended.is_set():
            try:
                self._actor.drain.remote()
            except Exception:  # noqa: BLE001 - cleanup is best effort: Ray may be gone
                pass

    def wait(self) -> int:
        self._ended.wait()
        return self._code

    def cleanup(self) -> None:
        # The worker and its wandb-core were reaped on the node before the exit status came;
        # killing the idle actor frees its share of the bundle for a restart.
        self._timer.cancel()
        self._kill()
        try:
            os.close(self._log_fd)
        except OSError:
            pass

    def report_lost_run(self, run_id: str, state: str, code: int) -> None:
        # From the kernel, straight to its loopback server: the node may be gone.
        local.report_lost_run(self._spec, run_id, state, code)


def _cause(err: BaseException) -> str:
    text = str(err)
    if "No module named 'sweep_magic'" in text:
        return "sweep_magic is not installed on that node (every node needs the same Python, wandb and sweep_magic)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def _lost_reason(err: BaseException) -> str:
    text = str(err)
    if "No module named" in text:
        return f"its Ray actor could not start: {_cause(err)}"
    low = text.lower()
    if "node" in low and ("died" in low or "dead" in low or "failed" in low):
        return "its Ray node was lost"
    if "ray.kill" in low or "killed by" in low:
        return "its Ray actor was killed"
    return "its Ray actor died"
