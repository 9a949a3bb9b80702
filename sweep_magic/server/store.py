"""SQLite persistence of the embedded sweep server: sweeps, agents, runs, history rows.

The store owns the file (folder 0700, file 0600, WAL journal) and plain row access; it makes
no decisions.  Several processes may open one file at once (two notebook kernels, a script,
``python -m sweep_magic.server``): ``transaction()`` is how the controller makes each decision
safe across all of them.  It starts with ``BEGIN IMMEDIATE``, which takes SQLite's single write
lock before the first read, so the rows a decision reads cannot change under it in any process
until it commits; a second process waits (busy timeout) instead of deciding on stale rows.

Inside one process, one connection is shared by every thread and guarded by a re-entrant
lock, held for a whole transaction.  Every transaction commits before the reply leaves, so a
server killed with SIGKILL loses nothing it has answered (WAL with ``synchronous=NORMAL`` is
durable against a process crash; only an OS crash can lose the last commits).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

# One statement per item: executescript() would commit the transaction they run in.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    project TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON of the config as the user gave it
    state TEXT NOT NULL,             -- RUNNING | PAUSED | CANCELED | FINISHED
    controller TEXT,
    scheduler TEXT,
    description TEXT,
    display_name TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL,
    host TEXT,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    prefetch INTEGER NOT NULL DEFAULT 0,
    heartbeat_s REAL,
    pid INTEGER,
    wandb_dir TEXT,
    gone INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,            -- order of hand-out (one order across all processes)
    sweep_id TEXT NOT NULL,
    agent_id TEXT,
    config TEXT NOT NULL,            -- JSON {name: {"value": v}}
    point TEXT NOT NULL,             -- canonical JSON {name: v}: identifies a grid point
    state TEXT NOT NULL,             -- pending running ending finished failed crashed killed reclaimed
    seen INTEGER NOT NULL DEFAULT 0,     -- listed in the agent's runState at least once
    started INTEGER NOT NULL DEFAULT 0,  -- wandb.init happened (side channel or run file)
    should_stop INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    summary TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL
)""",
    """CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id, seq)""",
    """CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent_id, state)""",
    """CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
)""",
)

# Columns added since the first release, added to any older file that lacks them, so a
# server of this version can open a database written by an earlier one.
_ADDED_COLUMNS = (
    ("sweeps", "early_stop_due", "INTEGER NOT NULL DEFAULT 1"),  # new results since stop_runs last ran
    ("agents", "server_url", "TEXT"),       # the server the agent talks to (restart grace)
    ("agents", "timeout_s", "REAL"),        # silence after which it is gone, set by that server
    ("agents", "search_dirs", "TEXT"),      # JSON: where that server looks for run files
    ("runs", "reported", "INTEGER NOT NULL DEFAULT 0"),  # history arrives on the side channel
    ("runs", "ending_at", "REAL"),          # when it left runState (a stale ending run is orphaned)
    ("runs", "note", "TEXT"),               # why its outcome is unknown (state crashed)
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state)",
    "CREATE INDEX IF NOT EXISTS agents_live ON agents (gone)",
)

# How long a transaction waits for another process's write lock.  A decision holds it for
# milliseconds (a bayes suggestion over many runs: up to a second or so); the client's
# Heartbeat call gives up after 60 s, so waiting up to 30 s still answers in time.
BUSY_TIMEOUT_S = 30.0

ACTIVE_RUN_STATES = ("pending", "running", "ending")


def _open_private(path: str) -> None:
    """Create the folder (0700) and the file (0600) before SQLite touches them."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    # umask may have widened nothing, but an existing file may predate us.
    os.chmod(path, 0o600)


class Store:
    """Row access to one sweep server database; every method is thread-safe."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        _open_private(self.path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_S)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            # The busy timeout first: another process may be creating the same file right now.
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self.transaction():  # two processes opening an old file must not both migrate it
                for statement in _SCHEMA:
                    self._db.execute(statement)
                for table, column, decl in _ADDED_COLUMNS:
                    have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                for statement in _INDEXES:
                    self._db.execute(statement)
        # WAL side files are created by SQLite with the main file's mode on most builds;
        # make sure they are private anyway.
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, tuple(args)).fetchall()]

    def _one(self, sql: str, args: Iterable[Any] = ()) -> dict | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, tuple(args))

    def transaction(self):
        """``with store.transaction():`` groups writes atomically (the lock is re-entrant)."""
        return _Transaction(self)

    # -- server facts (e.g. its API key, so a restart keeps its agents) ---------------------------
    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored value, or ``value`` stored now: the first of racing processes wins."""
        with self.transaction():
            self._exec("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return self.meta(key)

    # -- sweeps -------------------------------------------------------------------------------
    def add_sweep(self, sweep_id: str, entity: str, project: str, config: dict, **extra) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO sweeps (id, entity, project, config, state, controller, scheduler,"
            " description, display_name, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (sweep_id, entity, project, json.dumps(config), "RUNNING", extra.get("controller"),
             extra.get("scheduler"), extra.get("description"), extra.get("display_name"), now, now),
        )

    def sweep(self, sweep_id: str) -> dict | None:
        row = self._one("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        if row:
            row["config"] = json.loads(row["config"])
        return row

    def update_sweep(self, sweep_id: str, **fields) -> None:
        fields["updated_at"] = time.time()
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE sweeps SET {cols} WHERE id = ?", (*fields.values(), sweep_id))

    def set_early_stop_due(self, sweep_id: str, due: bool = True) -> None:
        """New results (or none since the last check); not a user-visible change of the sweep."""
        self._exec("UPDATE sweeps SET early_stop_due = ? WHERE id = ?", (1 if due else 0, sweep_id))

    def sweep_ids(self, states: tuple[str, ...] | None = None) -> list[str]:
        if states:
            marks = ",".join("?" * len(states))
            return [r["id"] for r in self._all(f"SELECT id FROM sweeps WHERE state IN ({marks})", states)]
        return [r["id"] for r in self._all("SELECT id FROM sweeps")]

    # -- agents -------------------------------------------------------------------------------
    def add_agent(self, agent_id: str, sweep_id: str, host: str | None, *, server_url: str | None = None,
                  timeout_s: float | None = None, search_dirs: list[str] | None = None) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO agents (id, sweep_id, host, created_at, last_seen, server_url, timeout_s, search_dirs)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (agent_id, sweep_id, host, now, now, server_url, timeout_s, json.dumps(search_dirs or [])),
        )

    def agent(self, agent_id: str) -> dict | None:
        return self._one("SELECT * FROM agents WHERE id = ?", (agent_id,))

    def update_agent(self, agent_id: str, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE agents SET {cols} WHERE id = ?", (*fields.values(), agent_id))

    def live_agents(self) -> list[dict]:
        return self._all("SELECT * FROM agents WHERE gone = 0")

    def touch_agents_of(self, server_url: str, now: float) -> int:
        """After a restart, give the agents of the server at ``server_url`` a fresh grace period:
        the outage was that server's.  Other servers' agents keep their own heartbeat times."""
        with self._lock:
            return self._db.execute("UPDATE agents SET last_seen = ? WHERE gone = 0 AND server_url = ?",
                                    (now, server_url)).rowcount

    # -- runs ---------------------------------------------------------------------------------
    def add_run(self, run_id: str, sweep_id: str, agent_id: str, config: dict, point: str) -> None:
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            self._db.execute(
                "INSERT INTO runs (id, seq, sweep_id, agent_id, config, point, state, created_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, seq, sweep_id, agent_id, json.dumps(config), point, "pending", time.time()),
            )

    @staticmethod
    def _decode_run(row: dict) -> dict:
        row["config"] = json.loads(row["config"])
        row["summary"] = json.loads(row["summary"]) if row.get("summary") else {}
        return row

    def run(self, run_id: str) -> dict | None:
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._decode_run(row) if row else None

    def runs_of_sweep(self, sweep_id: str) -> list[dict]:
        return [self._decode_run(r) for r in self._all("SELECT * FROM runs WHERE sweep_id = ? ORDER BY seq", (sweep_id,))]

    def active_runs_of_agent(self, agent_id: str) -> list[dict]:
        marks = ",".join("?" * len(ACTIVE_RUN_STATES))
        return [
            self._decode_run(r)
            for r in self._all(
                f"SELECT * FROM runs WHERE agent_id = ? AND state IN ({marks}) ORDER BY seq",
                (agent_id, *ACTIVE_RUN_STATES),
            )
        ]

    def running_runs_of_sweep(self, sweep_id: str) -> list[dict]:
        return [self._decode_run(r) for r in self._all(
            "SELECT * FROM runs WHERE sweep_id = ? AND state = 'running' ORDER BY seq", (sweep_id,))]

    def runs_in_state(self, state: str) -> list[dict]:
        return [self._decode_run(r) for r in self._all("SELECT * FROM runs WHERE state = ?", (state,))]

    def update_run(self, run_id: str, **fields) -> None:
        if "summary" in fields:
            fields["summary"] = json.dumps(fields["summary"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    # -- history ------------------------------------------------------------------------------
    def append_history(self, run_id: str, rows: list[dict]) -> None:
        with self._lock:
            start = self._db.execute(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM history WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            self._db.executemany(
                "INSERT INTO history (run_id, idx, row) VALUES (?,?,?)",
                [(run_id, start + i, json.dumps(r)) for i, r in enumerate(rows)],
            )

    def replace_history(self, run_id: str, rows: list[dict]) -> None:
        with self.transaction():
            self._exec("DELETE FROM history WHERE run_id = ?", (run_id,))
            self.append_history(run_id, rows)

    def history(self, run_id: str) -> list[dict]:
        return [json.loads(r["row"]) for r in self._all("SELECT row FROM history WHERE run_id = ? ORDER BY idx", (run_id,))]

    def history_count(self, run_id: str) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM history WHERE run_id = ?", (run_id,))
        return row["n"] if row else 0


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception), holding the thread lock
    throughout; nested uses join the outer transaction."""

    def __init__(self, store: Store):
        self._store = store

    def __enter__(self):
        self._store._lock.acquire()
        try:
            self._nested = self._store._db.in_transaction
            if not self._nested:
                self._store._db.execute("BEGIN IMMEDIATE")  # waits up to BUSY_TIMEOUT_S
        except BaseException:
            self._store._lock.release()
            raise
        return self._store

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self._nested:
                self._store._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._store._lock.release()
        return False
