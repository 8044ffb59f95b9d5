"""The SQLite store's schema: its tables and indexes, its version, and the read-only
inspection that decides whether an existing file is ours before anything writes to it."""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from hitl_core import StoreError

__all__ = [
    "APPLICATION",
    "EVENT_SHAPES",
    "SCHEMA",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "UPGRADE_V1",
    "create_schema",
    "inspect_file",
    "is_wal",
    "upgrade_schema",
]

SCHEMA_VERSION = 2
"""The schema this code writes and reads. A file with a higher version is refused; a
file with a version-1 schema (hitl-core 0.1) is upgraded in one transaction when it is
opened (`upgrade_schema`)."""

APPLICATION = "hitl-core"
APPLICATION_ID = 0x48544C43  # "HTLC" in the file header, so tools like `file` can tell
MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100

# Version 2. Every table has `seq INTEGER PRIMARY KEY` (the rowid): SQLite gives each new
# row max(seq) + 1, so ordering by seq is insertion order. Ids are random text under a
# UNIQUE index (the lookup by id). Requests and events name their run by its seq, not its
# id: an integer is small, and since recent runs have the highest seq, the per-run
# indexes grow at their right edge instead of at random pages. JSON columns hold compact
# JSON text (NULL for None); booleans are 0/1; times are REAL seconds. Each secondary
# index says which query needs it: a write updates every index it touches, so there is
# none that no query reads.
SCHEMA: tuple[str, ...] = (
    """CREATE TABLE hitl_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE runs (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        status            TEXT NOT NULL,
        human_in_the_loop INTEGER NOT NULL,
        permission_mode   TEXT NOT NULL,
        user_id           TEXT,
        task_id           TEXT,
        input_timeout     REAL NOT NULL,
        suspended         INTEGER NOT NULL,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL,
        plan_approved     INTEGER NOT NULL,
        plan_revisions    INTEGER NOT NULL,
        remembered_allow  TEXT NOT NULL,
        remembered_deny   TEXT NOT NULL,
        deadline          REAL,
        error             TEXT,
        version           INTEGER NOT NULL,
        lease_worker      TEXT,
        lease_token       INTEGER NOT NULL,
        lease_expires     REAL,
        metadata          TEXT,
        output            TEXT,
        checkpoint        TEXT
    )""",
    # runs.list(user_id=...): one user's runs in order (runs without a user are not in it)
    "CREATE INDEX runs_by_user ON runs (user_id, seq) WHERE user_id IS NOT NULL",
    # runs.list(status=...): one status in order
    "CREATE INDEX runs_by_status ON runs (status, seq)",
    # due_runs (every call and tick()): runs with a deadline, equal ones in creation order
    "CREATE INDEX runs_due ON runs (deadline, seq) WHERE deadline IS NOT NULL",
    # claimable_runs (runs.claimable): running runs by when their lease lapsed (none: 0)
    "CREATE INDEX runs_claimable ON runs (ifnull(lease_expires, 0.0), seq) "
    "WHERE status = 'running'",
    # ended_runs (runs.prune): ended runs by their last change (ORs, not IN: SQLite
    # would build a temporary table for the IN list at every write of a run)
    "CREATE INDEX runs_ended ON runs (updated_at) "
    "WHERE status = 'completed' OR status = 'failed' OR status = 'cancelled'",
    """CREATE TABLE requests (
        seq         INTEGER PRIMARY KEY,
        request_id  TEXT NOT NULL UNIQUE,
        run_seq     INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        tool_name   TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        resolved_at REAL,
        decision    TEXT,
        reason      TEXT,
        remember    INTEGER NOT NULL,
        actor       TEXT,
        source      TEXT,
        resumed     INTEGER NOT NULL,
        tool_input  TEXT NOT NULL,
        answers     TEXT
    )""",
    # list_requests(run): a run's requests, its pending ones without reading its history
    # (a decision moves its entry within the run's part of the index)
    "CREATE INDEX requests_by_run ON requests (run_seq, status, seq)",
    # pending_requests (runs.pending): every pending request, oldest first
    "CREATE INDEX requests_pending ON requests (seq) WHERE status = 'pending'",
    # scope is the user id, or '' for the account scope (user ids are non-empty), so the
    # UNIQUE index also holds for the account scope (NULLs would all be distinct).
    """CREATE TABLE policies (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        scope      TEXT NOT NULL,
        tool_name  TEXT NOT NULL,
        is_pattern INTEGER NOT NULL,
        prefix     TEXT,
        source     TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    # find_policy and the exact candidate; also keeps one policy per (scope, tool)
    "CREATE UNIQUE INDEX policies_by_scope_tool ON policies (scope, tool_name)",
    # list_policies: a scope's policies in order
    "CREATE INDEX policies_by_scope ON policies (scope, seq)",
    # candidate_policies: pattern policies by their literal prefix (one probe per prefix)
    "CREATE INDEX policies_patterns ON policies (scope, prefix, seq) WHERE is_pattern = 1",
    """CREATE TABLE tasks (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        name              TEXT NOT NULL,
        human_in_the_loop INTEGER,
        permission_mode   TEXT,
        user_id           TEXT,
        created_at        REAL NOT NULL
    )""",
    # data: NULL for {}, a JSON array [shape, values...] for the engine's usual shapes
    # (EVENT_SHAPES), else the JSON object
    """CREATE TABLE events (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        type       TEXT NOT NULL,
        run_seq    INTEGER NOT NULL,
        created_at REAL NOT NULL,
        data       TEXT
    )""",
    # list_events(run_id=...): one run's events in order
    "CREATE INDEX events_by_run ON events (run_seq, seq)",
    """CREATE TABLE idempotency_keys (
        key         TEXT PRIMARY KEY,
        run_id      TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID""",
    # delete_runs: a pruned run's key goes with it
    "CREATE INDEX idempotency_keys_by_run ON idempotency_keys (run_id)",
    # webhooks: named positions in the event log, endpoints, and the delivery outbox
    """CREATE TABLE webhook_cursors (
        name     TEXT PRIMARY KEY,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE webhook_endpoints (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        url        TEXT NOT NULL,
        events     TEXT NOT NULL,
        secret     TEXT NOT NULL,
        active     INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE webhook_deliveries (
        seq                  INTEGER PRIMARY KEY,
        id                   TEXT NOT NULL UNIQUE,
        endpoint_id          TEXT NOT NULL,
        event_id             TEXT NOT NULL,
        event_type           TEXT NOT NULL,
        run_id               TEXT NOT NULL,
        payload              TEXT NOT NULL,
        status               TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        response_status_code INTEGER,
        response_body        TEXT,
        error                TEXT,
        next_retry_at        REAL,
        created_at           REAL NOT NULL,
        updated_at           REAL NOT NULL
    )""",
    # list_deliveries and delete_endpoint: one endpoint's deliveries in order
    "CREATE INDEX deliveries_by_endpoint ON webhook_deliveries (endpoint_id, seq)",
    # due_deliveries (webhooks.claim): pending ones only, a missing retry time counting as 0
    "CREATE INDEX deliveries_due ON webhook_deliveries (ifnull(next_retry_at, 0.0), seq) "
    "WHERE status = 'pending'",
    # delete_runs: a pruned run's finished deliveries go with it
    "CREATE INDEX deliveries_by_run ON webhook_deliveries (run_id)",
)

EVENT_SHAPES: tuple[tuple[str, ...], ...] = (
    ("human_in_the_loop", "permission_mode", "user_id", "task_id"),
    ("request_id", "kind", "tool_name"),
    ("request_id", "kind", "status", "decision", "source"),
    ("error",),
)
"""The key lists of the event data the engine records, numbered from 1 in stored data
(`[1, true, "approval", null, null]`). Only ever append to this list: stored rows name
their shape by its number."""

# Version 1, as hitl-core 0.1 created it: kept to upgrade such files (and to make one in
# the upgrade tests). Never change it.
SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE hitl_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE runs (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        status            TEXT NOT NULL,
        human_in_the_loop INTEGER NOT NULL,
        permission_mode   TEXT NOT NULL,
        user_id           TEXT,
        task_id           TEXT,
        metadata          TEXT,
        input_timeout     REAL NOT NULL,
        suspended         INTEGER NOT NULL,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL,
        plan_approved     INTEGER NOT NULL,
        plan_revisions    INTEGER NOT NULL,
        remembered_allow  TEXT NOT NULL,
        remembered_deny   TEXT NOT NULL,
        deadline          REAL,
        output            TEXT,
        error             TEXT,
        version           INTEGER NOT NULL
    )""",
    # runs.list(user_id=...) walks one user's runs in order.
    "CREATE INDEX runs_by_user ON runs (user_id, seq)",
    # due_runs: only runs with a deadline are indexed; equal deadlines in creation order.
    "CREATE INDEX runs_due ON runs (deadline, seq) WHERE deadline IS NOT NULL",
    """CREATE TABLE requests (
        seq         INTEGER PRIMARY KEY,
        request_id  TEXT NOT NULL UNIQUE,
        run_id      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        tool_name   TEXT NOT NULL,
        tool_input  TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        resolved_at REAL,
        answers     TEXT,
        decision    TEXT,
        reason      TEXT,
        remember    INTEGER NOT NULL,
        actor       TEXT,
        source      TEXT,
        resumed     INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX requests_by_run ON requests (run_id, seq)",
    # Only pending requests are in this index: a run's pending ones are found without
    # reading its resolved history, and pending_requests sorts this small set by seq.
    "CREATE INDEX requests_pending ON requests (run_id, seq) WHERE status = 'pending'",
    # scope is the user id, or '' for the account scope (user ids are non-empty), so the
    # UNIQUE index also holds for the account scope (NULLs would all be distinct).
    """CREATE TABLE policies (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        scope      TEXT NOT NULL,
        tool_name  TEXT NOT NULL,
        is_pattern INTEGER NOT NULL,
        prefix     TEXT,
        source     TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE UNIQUE INDEX policies_by_scope_tool ON policies (scope, tool_name)",
    "CREATE INDEX policies_by_scope ON policies (scope, seq)",
    # pattern policies by their literal prefix: a lookup probes the tool name's prefixes
    "CREATE INDEX policies_patterns ON policies (scope, prefix, seq) WHERE is_pattern = 1",
    """CREATE TABLE tasks (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        name              TEXT NOT NULL,
        human_in_the_loop INTEGER,
        permission_mode   TEXT,
        user_id           TEXT,
        created_at        REAL NOT NULL
    )""",
    """CREATE TABLE events (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        type       TEXT NOT NULL,
        run_id     TEXT NOT NULL,
        created_at REAL NOT NULL,
        data       TEXT NOT NULL
    )""",
    "CREATE INDEX events_by_run ON events (run_id, seq)",
    # webhooks: named positions in the event log, endpoints, and the delivery outbox
    """CREATE TABLE webhook_cursors (
        name     TEXT PRIMARY KEY,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE webhook_endpoints (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        url        TEXT NOT NULL,
        events     TEXT NOT NULL,
        secret     TEXT NOT NULL,
        active     INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE webhook_deliveries (
        seq                  INTEGER PRIMARY KEY,
        id                   TEXT NOT NULL UNIQUE,
        endpoint_id          TEXT NOT NULL,
        event_id             TEXT NOT NULL,
        event_type           TEXT NOT NULL,
        run_id               TEXT NOT NULL,
        payload              TEXT NOT NULL,
        status               TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        response_status_code INTEGER,
        response_body        TEXT,
        error                TEXT,
        next_retry_at        REAL,
        created_at           REAL NOT NULL,
        updated_at           REAL NOT NULL
    )""",
    "CREATE INDEX deliveries_by_endpoint ON webhook_deliveries (endpoint_id, seq)",
    # due_deliveries: pending ones only, a missing retry time counting as 0.
    "CREATE INDEX deliveries_due ON webhook_deliveries (ifnull(next_retry_at, 0.0), seq) "
    "WHERE status = 'pending'",
)


def _created(statement: str) -> str:
    """The name of the table or index a CREATE statement makes."""
    words = [w for w in statement.split() if w not in ("CREATE", "UNIQUE", "TABLE", "INDEX")]
    return words[0]


_V2_OBJECTS = frozenset(
    {
        *("runs", "runs_by_user", "runs_by_status", "runs_due", "runs_claimable", "runs_ended"),
        *("requests", "requests_by_run", "requests_pending", "events", "events_by_run"),
        *("idempotency_keys", "idempotency_keys_by_run", "deliveries_by_run"),
    }
)

# v1 -> v2: runs gain the lease and checkpoint columns; requests and events name their
# run by its seq (rows whose run is missing cannot be named and are left behind, which
# the engine never made); the indexes are those of SCHEMA. Runs keep their seq.
_COMMON_RUN_COLUMNS = (
    "seq, id, status, human_in_the_loop, permission_mode, user_id, task_id, input_timeout, "
    "suspended, created_at, updated_at, plan_approved, plan_revisions, remembered_allow, "
    "remembered_deny, deadline, error, version, metadata, output"
)
_REQUEST_COLUMNS = (
    "kind, tool_name, status, created_at, resolved_at, decision, reason, remember, actor, "
    "source, resumed, tool_input, answers"
)
_QUALIFIED_REQUEST_COLUMNS = ", ".join(f"q.{name}" for name in _REQUEST_COLUMNS.split(", "))
UPGRADE_V1: tuple[str, ...] = (
    "ALTER TABLE runs RENAME TO runs_v1",
    "ALTER TABLE requests RENAME TO requests_v1",
    "ALTER TABLE events RENAME TO events_v1",
    "DROP INDEX runs_by_user",
    "DROP INDEX runs_due",
    "DROP INDEX requests_by_run",
    "DROP INDEX requests_pending",
    "DROP INDEX events_by_run",
    *(statement for statement in SCHEMA if _created(statement) in _V2_OBJECTS),
    f"INSERT INTO runs ({_COMMON_RUN_COLUMNS}, lease_token) "
    f"SELECT {_COMMON_RUN_COLUMNS}, 0 FROM runs_v1",
    f"INSERT INTO requests (seq, request_id, run_seq, {_REQUEST_COLUMNS}) "
    f"SELECT q.seq, q.request_id, r.seq, {_QUALIFIED_REQUEST_COLUMNS} "
    "FROM requests_v1 AS q JOIN runs AS r ON r.id = q.run_id",
    "INSERT INTO events (seq, id, type, run_seq, created_at, data) "
    "SELECT e.seq, e.id, e.type, r.seq, e.created_at, nullif(e.data, '{}') "
    "FROM events_v1 AS e JOIN runs AS r ON r.id = e.run_id",
    "DROP TABLE runs_v1",
    "DROP TABLE requests_v1",
    "DROP TABLE events_v1",
)
_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
_META_SQL = "SELECT key, value FROM hitl_meta WHERE key IN ('application', 'schema_version')"


def is_wal(header: bytes) -> bool:
    """True when a database header says the file is in WAL mode (format versions 2)."""
    return header[18] == 2 or header[19] == 2


def read_header(path: str) -> bytes:
    """The first bytes of an existing non-empty file; StoreError when it is not SQLite."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER_SIZE)
    except OSError as error:
        raise StoreError(
            "store_unavailable", f"cannot read {path!r}: {error.strerror or error}"
        ) from error
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise StoreError(
            "not_a_database",
            f"{path!r} is not an SQLite database (it starts with {header[:16]!r}); "
            "hitl-core leaves it untouched",
        )
    return header


def schema_version(tables: set[str], meta: dict[str, str], path: str) -> int | None:
    """Our schema version given a database's tables and hitl_meta rows; None for a
    database without tables; StoreError for a database that is not ours or too new."""
    if not tables:
        return None
    if "hitl_meta" not in tables or meta.get("application") != APPLICATION:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            "foreign_database",
            f"{path!r} is an SQLite database of another application (tables: {shown}); "
            "hitl-core leaves it untouched",
        )
    raw = meta.get("schema_version", "")
    version = int(raw) if raw.isdigit() else 0
    if version < 1:
        raise StoreError(
            "foreign_database",
            f"{path!r} has hitl-core's marker but no valid schema version ({raw!r}); "
            "hitl-core leaves it untouched",
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            "schema_too_new",
            f"{path!r} has hitl-core schema version {version}, newer than the {SCHEMA_VERSION} "
            "this version of hitl-core knows; upgrade hitl-core to open it (file left untouched)",
        )
    return version


def read_schema(db: sqlite3.Connection, path: str) -> int | None:
    """Our schema version as seen through `db` (see `schema_version`)."""
    tables = {name for (name,) in db.execute(_TABLES_SQL)}
    meta: dict[str, str] = {}
    if "hitl_meta" in tables:
        meta = {str(key): str(value) for key, value in db.execute(_META_SQL)}
    return schema_version(tables, meta, path)


def inspect_file(path: str, header: bytes) -> int | None:
    """Look into an existing SQLite file without changing anything on disk, and return
    our schema version (None: the database has no tables yet).

    A WAL database is opened `immutable` unless its -wal and -shm files both exist: a
    plain read-only open would create them and leave them behind."""
    siblings = os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
    uri = f"file:{quote(path)}?mode=ro"
    if is_wal(header) and not siblings:
        uri += "&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreError(
            "store_unavailable", f"cannot open {path!r} to inspect it: {error}"
        ) from error
    try:
        return read_schema(db, path)
    except sqlite3.DatabaseError as error:
        raise StoreError(
            "not_a_database",
            f"{path!r} cannot be read as an SQLite database ({error}); "
            "hitl-core leaves it untouched",
        ) from error
    finally:
        db.close()


def create_schema(db: sqlite3.Connection) -> None:
    """Create every table, index and the version marker (inside the caller's transaction)."""
    for statement in SCHEMA:
        db.execute(statement)
    db.executemany(
        "INSERT INTO hitl_meta (key, value) VALUES (?, ?)",
        [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
    )
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def upgrade_schema(db: sqlite3.Connection, version: int) -> None:
    """Bring a schema of `version` up to SCHEMA_VERSION (inside the caller's transaction)."""
    if version == 1:
        for statement in UPGRADE_V1:
            db.execute(statement)
    db.execute(
        "UPDATE hitl_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
    )
