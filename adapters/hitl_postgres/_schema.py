"""The PostgreSQL store's schema: its tables, indexes and two helper functions, all in
one schema of its own (`hitl` by default) with a marker row; its version; and the
inspection that refuses a foreign or newer schema before anything is written."""

from __future__ import annotations

import psycopg
from psycopg import sql

from hitl_core.adapter import StoreError

from ._write import WRITE_FUNCTION

__all__ = ["APPLICATION", "SCHEMA_VERSION", "UPGRADES", "ensure_schema", "inspect"]

SCHEMA_VERSION = 1
"""The schema this code writes and reads. A newer one is refused; an older one is
upgraded (`UPGRADES`) in one transaction when a store opens it."""

APPLICATION = "hitl-core"
LOCK_CLASS = 0x48544C43  # "HTLC": the first key of the schema's advisory lock
EVENT_LOCK_CLASS = LOCK_CLASS + 1  # ... and of the lock that orders events

# `{s}` is the schema, quoted; `{event_lock}` the key of the lock that orders events.
# Fixed-width columns come first in each table so that rows carry no alignment padding.
# Times are seconds as double precision; JSON values are `json` (kept as written: key
# order and numbers survive); lists of names are text[], NULL for an empty list. Runs
# are referenced by their `seq` inside the schema (requests, events) and by their text
# id where a record names them (deliveries, keys). Random text ids are found through a
# b-tree on their 64-bit hash (`hashtextextended`), half the size of one on the text.
BASE: tuple[str, ...] = (
    """CREATE TABLE {s}.hitl_meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    )""",
    """CREATE TABLE {s}.runs (
        seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        input_timeout     double precision NOT NULL,
        created_at        double precision NOT NULL,
        updated_at        double precision NOT NULL,
        deadline          double precision,
        lease_expires     double precision,
        version           integer NOT NULL,
        plan_revisions    integer NOT NULL,
        lease_token       integer NOT NULL,
        human_in_the_loop boolean NOT NULL,
        suspended         boolean NOT NULL,
        plan_approved     boolean NOT NULL,
        id                text NOT NULL,
        status            text NOT NULL,
        permission_mode   text NOT NULL,
        user_id           text,
        task_id           text,
        metadata          json,
        remembered_allow  text[],
        remembered_deny   text[],
        output            json,
        error             text,
        lease_worker      text,
        checkpoint        json
    )""",
    "CREATE INDEX runs_id ON {s}.runs (hashtextextended(id, 0))",
    "CREATE INDEX runs_by_user ON {s}.runs (user_id, seq) WHERE user_id IS NOT NULL",
    # runs.list(status=...): a small index for the waiting runs, one for the ended ones;
    # running runs are found through runs_claimable (they are few: agents at work)
    "CREATE INDEX runs_awaiting ON {s}.runs (seq) WHERE status = 'awaiting_approval'",
    "CREATE INDEX runs_ended_by_status ON {s}.runs (status, seq) "
    "WHERE status IN ('completed', 'failed', 'cancelled')",
    "CREATE INDEX runs_due ON {s}.runs (deadline, seq) WHERE deadline IS NOT NULL",
    "CREATE INDEX runs_claimable ON {s}.runs (coalesce(lease_expires, 0), seq) "
    "WHERE status = 'running'",
    "CREATE INDEX runs_ended ON {s}.runs (updated_at, seq) "
    "WHERE status IN ('completed', 'failed', 'cancelled')",
    """CREATE TABLE {s}.requests (
        seq         bigint GENERATED ALWAYS AS IDENTITY,
        run_seq     bigint NOT NULL,
        created_at  double precision NOT NULL,
        resolved_at double precision,
        remember    boolean NOT NULL,
        resumed     boolean NOT NULL,
        request_id  text NOT NULL,
        kind        text NOT NULL,
        tool_name   text NOT NULL,
        status      text NOT NULL,
        tool_input  json NOT NULL,
        answers     json,
        decision    text,
        reason      text,
        actor       text,
        source      text
    )""",
    "CREATE INDEX requests_id ON {s}.requests (hashtextextended(request_id, 0))",
    "CREATE INDEX requests_by_run ON {s}.requests (run_seq, seq)",
    "CREATE INDEX requests_pending ON {s}.requests (seq) WHERE status = 'pending'",
    # Events are numbered in commit order: a transaction takes the numbers under the
    # event lock, held until it commits, so a reader never sees an event appear behind
    # one it has already read.
    """CREATE TABLE {s}.events (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_seq    bigint NOT NULL,
        created_at double precision NOT NULL,
        id         text NOT NULL,
        type       text NOT NULL,
        data       json NOT NULL
    )""",
    "CREATE INDEX events_id ON {s}.events (hashtextextended(id, 0))",
    "CREATE INDEX events_by_run ON {s}.events (run_seq, seq)",
    # scope is the user id, or '' for the account scope (user ids are never empty), so
    # that the unique constraint holds for the account scope too.
    """CREATE TABLE {s}.policies (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at double precision NOT NULL,
        is_pattern boolean NOT NULL,
        id         text NOT NULL UNIQUE,
        scope      text NOT NULL,
        tool_name  text NOT NULL,
        prefix     text,
        source     text NOT NULL,
        CONSTRAINT policies_scope_tool UNIQUE (scope, tool_name)
    )""",
    "CREATE INDEX policies_by_scope ON {s}.policies (scope, seq)",
    "CREATE INDEX policies_patterns ON {s}.policies (scope, prefix, seq) WHERE is_pattern",
    """CREATE TABLE {s}.tasks (
        seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at        double precision NOT NULL,
        human_in_the_loop boolean,
        id                text NOT NULL UNIQUE,
        name              text NOT NULL,
        permission_mode   text,
        user_id           text
    )""",
    """CREATE TABLE {s}.idempotency_keys (
        created_at  double precision NOT NULL,
        key         text PRIMARY KEY,
        run_id      text NOT NULL,
        fingerprint text NOT NULL
    )""",
    "CREATE INDEX idempotency_keys_by_run ON {s}.idempotency_keys (run_id)",
    """CREATE TABLE {s}.webhook_cursors (
        name     text PRIMARY KEY,
        event_id text NOT NULL
    )""",
    """CREATE TABLE {s}.webhook_endpoints (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        active     boolean NOT NULL,
        id         text NOT NULL UNIQUE,
        url        text NOT NULL,
        events     text[],
        secret     text NOT NULL
    )""",
    """CREATE TABLE {s}.webhook_deliveries (
        seq                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        next_retry_at        double precision,
        created_at           double precision NOT NULL,
        updated_at           double precision NOT NULL,
        attempts             integer NOT NULL,
        response_status_code integer,
        id                   text NOT NULL UNIQUE,
        endpoint_id          text NOT NULL,
        event_id             text NOT NULL,
        event_type           text NOT NULL,
        run_id               text NOT NULL,
        payload              text NOT NULL,
        status               text NOT NULL,
        response_body        text,
        error                text
    )""",
    "CREATE INDEX deliveries_by_endpoint ON {s}.webhook_deliveries (endpoint_id, seq)",
    "CREATE INDEX deliveries_due ON {s}.webhook_deliveries (coalesce(next_retry_at, 0), seq) "
    "WHERE status = 'pending'",
    "CREATE INDEX deliveries_by_run ON {s}.webhook_deliveries (run_id)",
    WRITE_FUNCTION,
)

UPGRADES: dict[int, tuple[str, ...]] = {}
"""What each version after 1 adds to the one before, as statements with `{s}` for the
schema. A new schema is made from BASE and every upgrade in turn, so the upgrade path
is the path every test takes."""

_RELATIONS = """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    ORDER BY c.relname
"""
_HAS_SCHEMA = "SELECT 1 FROM pg_namespace WHERE nspname = %s"


def lock_key(schema: str) -> sql.Composable:
    """The advisory lock taken while the schema is created or upgraded."""
    return sql.SQL("pg_advisory_xact_lock({}, hashtext({}))").format(
        sql.Literal(LOCK_CLASS), sql.Literal(schema)
    )


def inspect(conn: psycopg.Connection[tuple[object, ...]], schema: str, where: str) -> int | None:
    """Our schema version in `schema` (None: it has no relations yet), read without
    changing anything; StoreError when the schema belongs to someone else or is too new."""
    names = [str(row[0]) for row in conn.execute(_RELATIONS, (schema,))]
    if not names:
        return None
    meta: dict[str, str] = {}
    if "hitl_meta" in names:
        query = sql.SQL(
            "SELECT key, value FROM {}.hitl_meta WHERE key IN ('application', 'schema_version')"
        ).format(sql.Identifier(schema))
        try:
            meta = {str(k): str(v) for k, v in conn.execute(query)}
        except psycopg.errors.UndefinedColumn:
            meta = {}
    if meta.get("application") != APPLICATION:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise StoreError(
            "foreign_database",
            f"schema {schema!r} of {where} already holds tables of another application "
            f"({shown}); hitl-core leaves it untouched (choose another with ?schema=...)",
        )
    raw = meta.get("schema_version", "")
    version = int(raw) if raw.isdigit() else 0
    if version < 1:
        raise StoreError(
            "foreign_database",
            f"schema {schema!r} of {where} has hitl-core's marker but no valid schema "
            f"version ({raw!r}); hitl-core leaves it untouched",
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            "schema_too_new",
            f"schema {schema!r} of {where} has hitl-core schema version {version}, newer "
            f"than the {SCHEMA_VERSION} this version of hitl-core knows; upgrade hitl-core "
            "to use it (left untouched)",
        )
    return version


def _statements(schema: str, texts: tuple[str, ...]) -> list[sql.Composed]:
    quoted = sql.Identifier(schema)
    lock = sql.SQL("{}, hashtext({})").format(sql.Literal(EVENT_LOCK_CLASS), sql.Literal(schema))
    return [sql.SQL(text).format(s=quoted, event_lock=lock) for text in texts]


def ensure_schema(conn: psycopg.Connection[tuple[object, ...]], schema: str, where: str) -> int:
    """Make sure `schema` holds our tables at SCHEMA_VERSION and return the version found
    before. A look without locks first, so that a refused schema sees no write at all;
    then, when something is missing, creation or upgrade in one transaction under an
    advisory lock (hosts starting together wait for each other), looking again inside.
    `conn` is in autocommit mode."""
    found = inspect(conn, schema, where)
    if found == SCHEMA_VERSION:
        return found
    with conn.transaction():
        conn.execute(sql.SQL("SELECT {}").format(lock_key(schema)))
        found = inspect(conn, schema, where)
        if found == SCHEMA_VERSION:
            return found
        statements: list[sql.Composed] = []
        if found is None:
            if conn.execute(_HAS_SCHEMA, (schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            statements = _statements(schema, BASE)
        for target in range((found or 1) + 1, SCHEMA_VERSION + 1):
            statements += _statements(schema, UPGRADES[target])
        for statement in statements:
            conn.execute(statement)
        meta = sql.SQL(
            "INSERT INTO {}.hitl_meta (key, value) VALUES ('application', %s), "
            "('schema_version', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ).format(sql.Identifier(schema))
        conn.execute(meta, (APPLICATION, str(SCHEMA_VERSION)))
    return found or 0
