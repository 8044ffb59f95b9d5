"""The PostgreSQL store's schema: its tables, indexes and two helper functions, all in
one schema of its own (`hitl` by default) with a marker row; its version; and the
inspection that refuses a foreign or newer schema before anything is written."""

from __future__ import annotations

import psycopg
from psycopg import sql

from hitl_core.adapter import StoreError

__all__ = ["APPLICATION", "SCHEMA_VERSION", "UPGRADES", "ensure_schema", "inspect"]

SCHEMA_VERSION = 1
"""The schema this code writes and reads. A newer one is refused; an older one is
upgraded (`UPGRADES`) in one transaction when a store opens it."""

APPLICATION = "hitl-core"
LOCK_CLASS = 0x48544C43  # "HTLC": the first key of the schema's advisory lock

# `{s}` is the schema, quoted. Fixed-width columns come first in each table so that rows
# carry no alignment padding. Times are seconds as double precision; JSON values are
# `json` (kept as written: key order and numbers survive); lists of names are text[]
# with NULL for an empty list. Runs are referenced by their `seq` inside the schema
# (requests, events) and by their text id where a record names them (deliveries, keys).
BASE: tuple[str, ...] = (
    """CREATE TABLE {s}.hitl_meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    )""",
    # Raises the store's own SQLSTATEs from inside a statement: HL409 when a
    # compare-and-set found another version (the engine retries the call), HL500 when
    # a write referred to a run that is not there.
    """CREATE FUNCTION {s}.hitl_check(conflict boolean, broken boolean) RETURNS boolean
        LANGUAGE plpgsql AS $$
    BEGIN
        IF conflict THEN
            RAISE EXCEPTION 'hitl-core: a run was changed by a concurrent transaction'
                USING ERRCODE = 'HL409';
        END IF;
        IF broken THEN
            RAISE EXCEPTION 'hitl-core: a request or event names a run that is not stored'
                USING ERRCODE = 'HL500';
        END IF;
        RETURN true;
    END $$""",
    # A JSON list of names as text[] (NULL for an empty list): how lists travel in the
    # column arrays of a multi-row write.
    """CREATE FUNCTION {s}.hitl_names(names json) RETURNS text[]
        LANGUAGE sql IMMUTABLE AS $$
        SELECT nullif(array(SELECT json_array_elements_text(names)), '{{}}')
    $$""",
    """CREATE TABLE {s}.runs (
        seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        writer            xid8 NOT NULL DEFAULT pg_current_xact_id(),
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
    ) WITH (fillfactor = 90)""",
    # Random ids are looked up by equality only: a hash index is a third of a b-tree's
    # size for them. The engine only inserts fresh ids.
    "CREATE INDEX runs_id ON {s}.runs USING hash (id)",
    "CREATE INDEX runs_by_user ON {s}.runs (user_id, seq) WHERE user_id IS NOT NULL",
    "CREATE INDEX runs_by_status ON {s}.runs (status, seq)",
    "CREATE INDEX runs_due ON {s}.runs (deadline, seq) WHERE deadline IS NOT NULL",
    "CREATE INDEX runs_claimable ON {s}.runs (coalesce(lease_expires, 0), seq) "
    "WHERE status = 'running'",
    "CREATE INDEX runs_ended ON {s}.runs (updated_at, seq) "
    "WHERE status IN ('completed', 'failed', 'cancelled')",
    """CREATE TABLE {s}.requests (
        seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    "CREATE INDEX requests_id ON {s}.requests USING hash (request_id)",
    "CREATE INDEX requests_by_run ON {s}.requests (run_seq, seq)",
    "CREATE INDEX requests_pending ON {s}.requests (seq) WHERE status = 'pending'",
    # Events are ordered by (xid, seq): the writing transaction's id, then insertion
    # order. A reader of the whole log takes only events below the oldest transaction
    # still running, so an event that commits late can never land behind a position a
    # follower has already passed.
    """CREATE TABLE {s}.events (
        xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
        seq        bigint GENERATED ALWAYS AS IDENTITY,
        run_seq    bigint NOT NULL,
        created_at double precision NOT NULL,
        id         text NOT NULL,
        type       text NOT NULL,
        data       json NOT NULL,
        PRIMARY KEY (xid, seq)
    )""",
    "CREATE INDEX events_id ON {s}.events USING hash (id)",
    "CREATE INDEX events_by_run ON {s}.events (run_seq, xid, seq)",
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
    return [sql.SQL(text).format(s=quoted) for text in texts]


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
