"""What `hitl serve` keeps beside the hitl-core store: the task fields the core does not
hold (instructions, teammate, tools, expected output, goals). A small SQLite file next
to an SQLite store (`hitl.db` -> `hitl.db.serve`), made when the first task is; in memory
for other stores. The file of an older server (schema 1) also held its agents, which the
server moves into the store once (`old_agents`, `forget_old`)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import attrs

from hitl_core import Store, StoreError

__all__ = ["OldAgent", "ServeState", "state_path"]

SCHEMA_VERSION = 2
OLD_SCHEMA = 1
"""Schema 1 (hitl serve before leases) kept agents and Idempotency-Key bindings too."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, extras TEXT NOT NULL);
"""


@attrs.frozen
class OldAgent:
    """An unfinished agent in an older server's side file."""

    run_id: str
    teammate_id: int | None
    steps: list[dict[str, Any]]
    progress: dict[str, Any]


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
    """The side file, opened when it exists or is first written. One connection guarded
    by a lock; every method is one statement, so each is atomic on its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._old = False
        if path == ":memory:" or os.path.exists(path):
            with self._lock:
                self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise StoreError(
                "store_unavailable", f"cannot open the serve state {self.path!r}: {error}"
            ) from error
        try:
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            (found,) = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.Error as error:
            db.close()
            raise StoreError(
                "store_unavailable", f"cannot open the serve state {self.path!r}: {error}"
            ) from error
        if found not in (str(OLD_SCHEMA), str(SCHEMA_VERSION)):
            db.close()
            raise StoreError(
                "store_schema_newer", f"{self.path}: serve state schema {found} is not known"
            )
        self._old = found == str(OLD_SCHEMA)
        self._db = db
        return db

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _run(self, sql: str, args: tuple[Any, ...] = (), *, create: bool = False) -> list[Any]:
        """One statement; [] when there is no file yet and `create` is False."""
        with self._lock:
            db = self._db
            if db is None:
                if not create and not os.path.exists(self.path):
                    return []
                db = self._open()
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise StoreError("store_io_error", f"serve state {self.path!r}: {error}") from None

    # -- tasks ---------------------------------------------------------------------------
    def add_task(self, task_id: str, extras: dict[str, Any]) -> None:
        """Keep a task's wire fields that the core does not hold."""
        self._run(
            "INSERT OR REPLACE INTO tasks (task_id, extras) VALUES (?, ?)",
            (task_id, json.dumps(extras)),
            create=True,
        )

    def task(self, task_id: str) -> dict[str, Any] | None:
        """A task's extra fields, or None."""
        rows = self._run("SELECT extras FROM tasks WHERE task_id = ?", (task_id,))
        return json.loads(rows[0][0]) if rows else None

    # -- an older server's file ---------------------------------------------------------------
    def old_agents(self) -> list[OldAgent]:
        """The unfinished agents an older server left in this file (schema 1), if any."""
        if not self._old:
            return []
        try:
            rows = self._run(
                "SELECT run_id, teammate_id, program, progress FROM agents WHERE done = 0"
            )
        except StoreError:  # another server moved them first and dropped the table
            return []
        agents = []
        for run_id, teammate, program, progress in rows:
            try:
                agents.append(OldAgent(run_id, teammate, json.loads(program), json.loads(progress)))
            except ValueError:  # a damaged row: that agent cannot be moved
                continue
        return agents

    def forget_old(self) -> None:
        """Drop what an older server kept here that now lives in the store (its agents,
        whose runs now carry them, and its Idempotency-Key bindings); mark the file as
        this version's."""
        if not self._old:
            return
        self._run("DROP TABLE IF EXISTS agents")
        self._run("DROP TABLE IF EXISTS idempotency")
        self._run("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        self._old = False
