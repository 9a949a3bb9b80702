"""The node side of the Ray backend: the actors that host an agent, and the relay to the kernel.

    agent's node                                              kernel's (driver's) node
    ┌──────────────────────────────────────────┐              ┌──────────────────────────────┐
    │ AgentHost actor (one per agent)          │  stream of   │ supervisor reader thread     │
    │  spawner thread: LocalBackend.start ─►   │  batches ───►│  (agents/ray.py)             │
    │   worker process group (unchanged:       │  (streaming  │                              │
    │   lifeline, signals, events pipe)        │  generator)  │                              │
    │  relay: 127.0.0.1:PORT ◄── wandb client, │              │ Gateway actor (pinned here)  │
    │   side channel  ── forward() over Ray ───┼─────────────►│  ──► 127.0.0.1 sweep server  │
    └──────────────────────────────────────────┘              └──────────────────────────────┘

The worker runs exactly as with the local backend: this actor is its parent, holds the
lifeline's write end (the actor's death is the worker's death) and reaps its wandb-core.
The spec (it may hold an API key) arrives as a method argument, never in ``runtime_env``
or a constructor, so Ray's actor table and dashboard never show it; nothing here logs it.

The relay adds no credentials: the worker still sends ``api:<key>`` and the kernel's server
checks it.  The gateway only ever talks to the one server URL it was made with, so it is not
an open proxy.  This module is imported on every node, so it must not need ``ray`` at
import time (the kernel wraps these classes with ``ray.remote``).
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse

from sweep_magic.agents.local import LocalBackend
from sweep_magic.protocol import env as child_env

BATCH_SECONDS = 0.05  # gather what arrives this long after the first line, then send
IDLE_SECONDS = 0.25  # how often an idle stream looks at the log file
BEAT_SECONDS = 0.5  # an item at least this often, even empty: the kernel's sign of a live node
MAX_RELAY_BODY = 64 * 1024 * 1024
RELAY_TIMEOUT = 60.0
# Hop-by-hop headers are the relay's own business, not the server's (RFC 9110 §7.6.1).
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                  "upgrade", "host", "content-length"})


class Gateway:
    """On the kernel's node: forwards relayed requests to the kernel's loopback server."""

    def __init__(self, server_url: str):
        url = urllib.parse.urlsplit(server_url)
        if url.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the gateway only forwards to a loopback server, not {url.hostname}")
        self._host, self._port = url.hostname, url.port

    def ping(self) -> bool:
        return True

    def forward(self, method: str, path: str, headers: list, body: bytes) -> tuple:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=RELAY_TIMEOUT)
        try:
            conn.request(method, path, body=body or None, headers=dict(headers))
            resp = conn.getresponse()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], resp.read()
        finally:
            conn.close()


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the wandb client reuses its connection

    def _relay(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        if size < 0 or size > MAX_RELAY_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(size) if size else b""
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
        try:
            status, out_headers, data = self.server.forward(self.command, self.path, headers, body)
        except Exception as err:  # noqa: BLE001 - the kernel (or the gateway) is gone or too slow
            self.send_error(502, explain=type(err).__name__)
            return
        self.send_response(status)
        for name, value in out_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

    def log_message(self, *args) -> None:
        pass  # stderr is Ray's log file: nothing of a request goes there


class _Relay(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, forward):
        self.forward = forward
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="sweep-magic-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def node_dir(kernel_wandb_dir: str | None, node_id: str) -> str:
    """This node's folder for the session: the kernel's session path when this node can write
    it (a shared or same-layout home: ``results()[i]["dir"]`` then reads naturally), else a
    private temp folder."""
    if kernel_wandb_dir:
        path = os.path.join(kernel_wandb_dir, "nodes", node_id[:8])
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            return path
        except OSError:
            pass
    name = os.path.basename(os.path.normpath(kernel_wandb_dir or "session"))
    path = os.path.join(tempfile.gettempdir(), f"sweep_magic-{os.getuid()}", name, node_id[:8])
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class AgentHost:
    """One agent on one node.  ``run`` is a streaming generator: a hello with where the worker
    runs, then ``{"lines": [...], "log": bytes}`` batches, then ``{"exit": code}``."""

    def __init__(self):
        self._local = None  # the LocalAgentProcess
        self._spawned = threading.Event()
        self._exited = threading.Event()
        self._lines: queue.Queue = queue.Queue()
        self._code: int | None = None
        self._error: str | None = None
        self._relay: _Relay | None = None
        self._lost: str | None = None

    def run(self, index: int, spec, header: str, gateway=None, kernel_paths=(), kernel_cwd: str | None = None):
        import ray

        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        base = node_dir(spec.env.get("WANDB_DIR"), node_id)
        os.makedirs(os.path.join(base, "logs"), mode=0o700, exist_ok=True)
        log_path = os.path.join(base, "logs", f"agent-{index}.log")
        spec_dir = tempfile.mkdtemp(prefix="sweep-magic-spec-")
        env = dict(spec.env, WANDB_DIR=base)
        # The kernel's import path first (a notebook's own modules on a shared file system),
        # then this process's; missing folders are harmless to the worker.
        env[child_env.SYS_PATH_VAR] = os.pathsep.join(dict.fromkeys([*kernel_paths, *child_env_paths()]))
        report_url = spec.report_url
        if spec.report_url and gateway is not None:
            self._relay = _Relay(lambda *req: ray.get(gateway.forward.remote(*req), timeout=RELAY_TIMEOUT))
            env["WANDB_BASE_URL"] = report_url = self._relay.url
        spec = dataclasses.replace(spec, env=env, report_url=report_url)
        if kernel_cwd and os.path.isdir(kernel_cwd):
            os.chdir(kernel_cwd)  # relative paths in the function mean the notebook's folder
        start_at = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        # The worker's PR_SET_PDEATHSIG fires when the *thread* that forked it ends: fork from
        # a thread of our own that lives exactly as long as the worker.
        threading.Thread(target=self._spawn_and_wait, args=(spec, log_path, header, spec_dir),
                         name="sweep-magic-spawner", daemon=True).start()
        self._spawned.wait()
        try:
            if self._local is None:
                raise RuntimeError(self._error or "the worker did not start")
            threading.Thread(target=self._watch_raylet, args=(os.getppid(),), name="sweep-magic-raylet-watch",
                             daemon=True).start()
            yield {"pid": self._local.pid, "node_id": node_id, "ip": _node_ip(),
                   "gpus": [str(g) for g in ray.get_gpu_ids()]}
            tail = _Tail(log_path, start_at)
            done = False
            sent = time.monotonic()
            while not done:
                lines, done = self._take(IDLE_SECONDS)
                log = tail.read()
                if lines or log or time.monotonic() - sent >= BEAT_SECONDS:
                    yield {"lines": lines, "log": log}
                    sent = time.monotonic()
            self._exited.wait()
            yield {"exit": self._code, "log": tail.read(), "lost": self._lost}
        finally:
            if self._relay is not None:
                self._relay.close()
            shutil.rmtree(spec_dir, ignore_errors=True)
            if self._lost:
                # Our raylet is gone, so Ray would end this process only once the GCS marks
                # the node dead; the exit status above has been sent, nothing else is ours.
                threading.Timer(2.0, os._exit, args=(1,)).start()

    def _watch_raylet(self, raylet_pid: int) -> None:
        """A dead raylet is noticed by the GCS only after its missed health checks (≈15 s by
        default), and meanwhile this actor and its worker run on.  The raylet is our parent:
        when we are re-parented it is gone, so the worker is ended here and the kernel is
        told at once (the stream goes straight to the kernel, not through the raylet)."""
        while not self._exited.wait(0.2):
            if os.getppid() != raylet_pid:
                self._lost = "its Ray node's raylet died"
                if self._local is not None:
                    self._local.signal(signal.SIGKILL)
                return

    def _spawn_and_wait(self, spec, log_path: str, header: str, spec_dir: str) -> None:
        try:
            # Cold: an actor hosts one worker and dies with it, so a zygote of its own would
            # only add a second interpreter (≈90 MB) per agent, importing wandb alongside.
            self._local = LocalBackend(spec_dir, warm=False).start(spec, log_path=log_path, header=header)
        except Exception as err:  # noqa: BLE001 - whatever stops the start is the agent's error, sent to the kernel
            self._error = f"could not start the worker: {type(err).__name__}: {err}"
            self._spawned.set()
            self._lines.put(None)
            return
        self._spawned.set()
        reader = threading.Thread(target=self._read, name="sweep-magic-events", daemon=True)
        reader.start()
        code = self._local.wait()
        # As the supervisor does locally: the group's leftovers die (they may hold the events
        # pipe), then the sidecars are reaped, before the kernel hears the exit code.
        self._local.signal(signal.SIGKILL)
        reader.join(timeout=5)
        self._local.cleanup()
        self._code = code
        self._exited.set()

    def _read(self) -> None:
        try:
            for line in self._local.events():
                self._lines.put(line)
        finally:
            self._lines.put(None)

    def _take(self, wait: float) -> tuple[list, bool]:
        """The event lines that arrived (waiting up to ``wait`` for the first); True at EOF."""
        out: list = []
        try:
            first = self._lines.get(timeout=wait)
        except queue.Empty:
            return out, False
        deadline = time.monotonic() + BATCH_SECONDS
        item = first
        while True:
            if item is None:
                return out, True
            out.append(item)
            try:
                item = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return out, False

    def ping(self) -> bool:
        """Answered from another of the actor's threads: the kernel asks when the stream falls silent."""
        return True

    def signal(self, sig: int) -> bool:
        self._spawned.wait(timeout=30)
        return self._local is not None and self._local.signal(sig)

    def drain(self) -> None:
        if self._local is not None:
            self._local.drain()


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def child_env_paths() -> list[str]:
    import sys

    return [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]


class _Tail:
    """New bytes of the worker's log file since the stream started."""

    def __init__(self, path: str, pos: int):
        self._path, self._pos = path, pos

    def read(self, limit: int = 256 * 1024) -> bytes:
        try:
            with open(self._path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                if end <= self._pos:
                    return b""
                # A flood of output: only the end matters to the kernel's tail.
                start = max(self._pos, end - limit)
                f.seek(start)
                data = f.read(end - start)
        except OSError:
            return b""
        self._pos = end
        return data
