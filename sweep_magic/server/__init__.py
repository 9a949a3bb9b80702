"""The embedded sweep server: what the unmodified wandb client talks to, with no W&B account.

``serve()`` starts a server (its own thread) and returns a ``LocalServer``; ``local_server()``
is this process's shared one, started on first use; ``local_sweep()`` creates a sweep on it.
The parts, one job each::

    httpd.py          HTTP: auth, size limits, routing      (ThreadingHTTPServer)
    graphql_core.py   GraphQL request → dict                 (graphql-core, schema.py's SDL)
    controller.py     sweep decisions                        (W&B's `sweeps` engine)
    settle.py         runs nobody reported, silent agents    (finalizer and reaper threads)
    store.py          SQLite file                            (0600 file, 0700 folder, WAL)
    results_reader.py results of unhooked runs               (our own .wandb framing + wandb's Record protobuf)
    __main__.py       `python -m sweep_magic.server`

Any number of servers (kernels, scripts, the CLI) may open one database at once: each decision
is one SQLite transaction, so each grid point still runs once (docs/server.md).
"""

from __future__ import annotations

import logging
import os
import secrets
import string
import threading

log = logging.getLogger(__name__)

_KEY_ALPHABET = string.ascii_letters + string.digits


def default_db_path() -> str:
    from sweep_magic.paths import home

    return os.path.join(home(), "server.sqlite3")


def default_wandb_dirs() -> list[str]:
    """Where to look for run files of unhooked runs: our WANDB_DIR and cwd (agents' default)."""
    dirs = [os.environ.get("WANDB_DIR"), os.getcwd()]
    return [os.path.abspath(d) for d in dict.fromkeys(d for d in dirs if d)]


def new_api_key() -> str:
    # wandb's client accepts `prefix-` + at least 40 word characters.
    return "local-" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(48))


class LocalServer:
    """A running server.  ``stop()`` shuts it down and joins its threads."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, db: str | None = None, *,
                 wandb_dirs: list[str] | None = None, agent_timeout: float | None = None,
                 api_key: str | None = None):
        from sweep_magic.server.controller import DEFAULT_AGENT_TIMEOUT, Controller
        from sweep_magic.server.httpd import SweepHTTPServer
        from sweep_magic.server.store import Store

        self.db_path = os.path.abspath(db or default_db_path())
        self._store = Store(self.db_path)
        # The key lives with the database (0600): a server restarted on the same file keeps
        # its agents, which still hold the old key in their environment.
        # Every server on one file shares the first key stored there, so two processes that
        # create the file at once cannot leave one of them with a key the file forgot.
        if api_key:
            self._store.set_meta("api_key", api_key)
            self.api_key = api_key
        else:
            self.api_key = self._store.meta_setdefault("api_key", new_api_key())
        self.controller = Controller(
            self._store, wandb_dirs=default_wandb_dirs() + list(wandb_dirs or []),
            agent_timeout=agent_timeout or DEFAULT_AGENT_TIMEOUT)
        try:
            self._httpd = SweepHTTPServer((host, port), self.controller, self.api_key)
        except OSError:
            self._store.close()
            raise
        bound_host, self.port = self._httpd.server_address[:2]
        self.host = bound_host
        self.url = f"http://{bound_host}:{self.port}"
        self.controller.server_url = self.url  # known only once bound (port 0)
        self.controller.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"sweep-server-{self.port}", daemon=True)
        self._thread.start()
        self._stopped = False
        log.info("sweep server listening on %s (db %s)", self.url, self.db_path)

    def env(self) -> dict[str, str]:
        return {"WANDB_BASE_URL": self.url, "WANDB_API_KEY": self.api_key, "WANDB_MODE": "offline"}

    def add_wandb_dir(self, path: str) -> None:
        """Also look under ``path`` for the run files of agents that cannot report results."""
        path = os.path.abspath(path)
        if path not in self.controller.wandb_dirs:
            self.controller.wandb_dirs.append(path)

    def create_sweep(self, config: dict, project: str | None = None, entity: str | None = None) -> str:
        sweep_id, _warnings = self.controller.create_sweep(config, entity=entity, project=project)
        return sweep_id

    def has_sweep(self, sweep_id: str) -> bool:
        return self.controller.has_sweep(sweep_id)

    def sweep_config(self, sweep_id: str) -> dict:
        return dict(self.controller.sweep(sweep_id)["config"])

    def sweep_info(self, sweep_id: str) -> dict:
        """The sweep's row: ``config``, ``state``, ``entity``, ``project``, ..."""
        return dict(self.controller.sweep(sweep_id))

    def nothing_left(self, sweep_id: str) -> bool:
        """True when the sweep will hand out no more runs and none is in flight."""
        return self.controller.nothing_left(sweep_id)

    def sweep_state(self, sweep_id: str) -> str:
        return self.controller.sweep(sweep_id)["state"]

    def runs(self, sweep_id: str) -> list[dict]:
        """The sweep's runs (id, state, config, summary, …), in hand-out order."""
        return self.controller.visible_runs(sweep_id)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._thread.join(timeout=10)
        self._httpd.server_close()
        self.controller.close()
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<LocalServer {self.url} {state} db={self.db_path}>"


def serve(host: str = "127.0.0.1", port: int = 0, db: str | None = None, **options) -> LocalServer:
    """A new server on ``host:port`` (port 0: any free port, read back in ``.url``)."""
    return LocalServer(host, port, db, **options)


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def local_server(*, db: str | None = None) -> LocalServer:
    """This process's server, started on first use (loopback, random port and key)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._stopped:
            _shared = serve(db=db)
        elif db is not None and os.path.abspath(db) != _shared.db_path:
            raise ValueError(f"the local server already runs on {_shared.db_path}; stop it to use {db}")
        return _shared


def local_sweep(config: dict, project: str = "sweep_magic", entity: str | None = None) -> str:
    """Create a sweep on this process's local server; returns the sweep id."""
    return local_server().create_sweep(config, project=project, entity=entity)


__all__ = ["LocalServer", "serve", "local_server", "local_sweep", "default_db_path"]
