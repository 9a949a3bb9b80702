"""SQLite persistence of the embedded sweep server: sweeps, agents, runs, history rows.

The store owns the file (folder 0700, file 0600, WAL journal) and plain row access; it makes
no decisions.  One connection is shared by every thread and guarded by a lock: the server's
traffic is a few requests a second, and one writer keeps the controller's read-decide-write
steps simple.  Every write commits at once, so a server killed with SIGKILL loses nothing it
has already answered (WAL with ``synchronous=NORMAL`` is durable against a process crash).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
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
);
CREATE TABLE IF NOT EXISTS agents (
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
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,            -- order of hand-out within the server
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
);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id, seq);
CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent_id, state);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""

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
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
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

    def sweep_ids(self, states: tuple[str, ...] | None = None) -> list[str]:
        if states:
            marks = ",".join("?" * len(states))
            return [r["id"] for r in self._all(f"SELECT id FROM sweeps WHERE state IN ({marks})", states)]
        return [r["id"] for r in self._all("SELECT id FROM sweeps")]

    # -- agents -------------------------------------------------------------------------------
    def add_agent(self, agent_id: str, sweep_id: str, host: str | None) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO agents (id, sweep_id, host, created_at, last_seen) VALUES (?,?,?,?,?)",
            (agent_id, sweep_id, host, now, now),
        )

    def agent(self, agent_id: str) -> dict | None:
        return self._one("SELECT * FROM agents WHERE id = ?", (agent_id,))

    def update_agent(self, agent_id: str, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE agents SET {cols} WHERE id = ?", (*fields.values(), agent_id))

    def live_agents(self) -> list[dict]:
        return self._all("SELECT * FROM agents WHERE gone = 0")

    def touch_all_agents(self, now: float) -> None:
        """After a restart, give every agent a fresh grace period: the outage was ours."""
        self._exec("UPDATE agents SET last_seen = ? WHERE gone = 0", (now,))

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
    def __init__(self, store: Store):
        self._store = store

    def __enter__(self):
        self._store._lock.acquire()
        self._nested = self._store._db.in_transaction
        if not self._nested:
            self._store._db.execute("BEGIN IMMEDIATE")
        return self._store

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self._nested:
                self._store._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._store._lock.release()
        return False
