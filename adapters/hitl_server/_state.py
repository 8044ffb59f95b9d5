"""What `hitl serve` keeps beside the hitl-core store: each simulated agent's program and
progress, the task fields the core does not hold, and Idempotency-Key bindings. A small
SQLite file next to an SQLite store (`hitl.db` -> `hitl.db.serve`), else in memory."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hitl_core import Store, StoreError

__all__ = ["AgentRow", "ServeState", "state_path"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    run_id TEXT PRIMARY KEY,
    message TEXT NOT NULL,
    teammate_id INTEGER,
    program TEXT NOT NULL,
    progress TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS agents_active ON agents (done, run_id);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, extras TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL
);
"""

AgentRow = tuple[str, list[dict[str, Any]], dict[str, Any]]
"""(run id, program steps, progress) of one simulated agent."""


def state_path(store: str | Store) -> str:
    """Where the server's own state lives for a store URL (or an open store):
    `<file>.serve` beside an SQLite file, ':memory:' for anything else (memory://,
    sqlite:///:memory:, others)."""
    from hitl_sqlite import SqliteStore, parse_url

    if isinstance(store, SqliteStore):
        path = store.path
    elif isinstance(store, str) and store.startswith("sqlite:///"):
        path, _ = parse_url(store)
    else:
        return ":memory:"
    return ":memory:" if path == ":memory:" else str(Path(path)) + ".serve"


class ServeState:
    """The side file. One connection guarded by a lock; every method is one statement,
    so each is atomic on its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(
                    "store_schema_newer", f"{path}: serve state schema {row[0]} is not known"
                )
        except sqlite3.Error as error:
            raise StoreError(
                "store_unavailable", f"cannot open the serve state {path!r}: {error}"
            ) from error

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise StoreError("store_io_error", f"serve state {self.path!r}: {error}") from None

    # -- simulated agents -----------------------------------------------------------------
    def add_agent(
        self,
        run_id: str,
        *,
        message: str,
        teammate_id: int | None,
        program: list[dict[str, Any]],
        progress: dict[str, Any],
    ) -> None:
        """Record a new agent for a run."""
        self._run(
            "INSERT OR REPLACE INTO agents (run_id, message, teammate_id, program, progress, done)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            (run_id, message, teammate_id, json.dumps(program), json.dumps(progress)),
        )

    def save_progress(self, run_id: str, progress: dict[str, Any], *, done: bool) -> None:
        """Store where an agent is (and whether it has finished)."""
        self._run(
            "UPDATE agents SET progress = ?, done = ? WHERE run_id = ?",
            (json.dumps(progress), int(done), run_id),
        )

    def active_agents(self) -> list[AgentRow]:
        """Every agent that has not finished, oldest run id first."""
        rows = self._run("SELECT run_id, program, progress FROM agents WHERE done = 0")
        return [(r[0], json.loads(r[1]), json.loads(r[2])) for r in rows]

    def teammate(self, run_id: str) -> int | None:
        """The teammate id a run was created with (None if none or not ours)."""
        rows = self._run("SELECT teammate_id FROM agents WHERE run_id = ?", (run_id,))
        return rows[0][0] if rows else None

    def teammates(self, run_ids: list[str]) -> dict[str, int | None]:
        """`teammate` for many runs at once."""
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        rows = self._run(
            f"SELECT run_id, teammate_id FROM agents WHERE run_id IN ({marks})", tuple(run_ids)
        )
        return {r[0]: r[1] for r in rows}

    # -- tasks ---------------------------------------------------------------------------
    def add_task(self, task_id: str, extras: dict[str, Any]) -> None:
        """Keep a task's wire fields that the core does not hold."""
        self._run(
            "INSERT OR REPLACE INTO tasks (task_id, extras) VALUES (?, ?)",
            (task_id, json.dumps(extras)),
        )

    def task(self, task_id: str) -> dict[str, Any] | None:
        """A task's extra fields, or None."""
        rows = self._run("SELECT extras FROM tasks WHERE task_id = ?", (task_id,))
        return json.loads(rows[0][0]) if rows else None

    # -- idempotency ------------------------------------------------------------------------
    def bound_run(self, key: str) -> str | None:
        """The run an Idempotency-Key already started, if any."""
        rows = self._run("SELECT run_id FROM idempotency WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def bind(self, key: str, run_id: str) -> None:
        """Bind an Idempotency-Key to the run it started."""
        self._run("INSERT OR IGNORE INTO idempotency (key, run_id) VALUES (?, ?)", (key, run_id))
