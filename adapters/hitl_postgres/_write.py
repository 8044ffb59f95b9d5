"""The PostgreSQL store's write function, `hitl_write`: what a write transaction buffered
arrives as one JSON list per kind of record and is written by statements in a fixed
order, in one round trip. The order is what makes concurrent writers safe: run
compare-and-sets first (a lost one raises HL409 and nothing of the call stays), events
last, under a lock held until commit, so events are numbered in commit order."""

from __future__ import annotations

from typing import Any

import attrs

from hitl_core.adapter import (
    Event,
    IdempotencyKey,
    PermissionRequest,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    field_names,
)

__all__ = ["PARAMETERS", "WRITE_FUNCTION", "column_types"]

# The SQL type of each kind of field, read off the record's annotation (lists of names
# are text[]; JSON data is json).
_TYPES = {
    "str": "text",
    "str | None": "text",
    "bool": "boolean",
    "bool | None": "boolean",
    "int": "integer",
    "int | None": "integer",
    "float": "double precision",
    "float | None": "double precision",
    "dict[str, Any]": "json",
    "dict[str, Any] | None": "json",
    "Any": "json",
    "frozenset[str]": "text[]",
    "tuple[str, ...]": "text[]",
    "RunStatus": "text",
    "RequestStatus": "text",
}


def column_types(cls: type[Any]) -> dict[str, str]:
    """Each stored field of a record class and its SQL type."""
    return {(f.alias or f.name): _TYPES[str(f.type)] for f in attrs.fields(cls)}


PARAMETERS = (
    "runs_del",
    "policies_del",
    "endpoints_del",
    "runs_new",
    "runs_upd",
    "requests",
    "policies_new",
    "tasks_new",
    "keys_new",
    "cursors",
    "endpoints_new",
    "endpoints_upd",
    "deliveries",
    "events",
    "channel",
    "payloads",
)
"""The function's parameters, in order (`p_` + name in SQL)."""

_ARRAYS = {"runs_del", "policies_del", "endpoints_del", "payloads"}


def _rows(param: str, cls: type[Any], extra: str = "") -> str:
    """FROM items reading the JSON list `p_{param}` as rows `v`, in order `e.n`. JSON
    values arrive as JSON text in a string (see `Codec.rows`): read as text, they keep
    their escapes (json_to_record would refuse a \u0000 inside a nested value)."""
    columns = ", ".join(
        f'"{name}" {"text" if kind == "json" else kind}' for name, kind in column_types(cls).items()
    )
    return (
        f"json_array_elements(p_{param}) WITH ORDINALITY AS e(doc, n) "
        f"CROSS JOIN LATERAL json_to_record(e.doc) AS v({columns}{extra})"
    )


def _same(column: str, value: str) -> str:
    """Text id `column` equals `value`, through the b-tree on its hash."""
    return f"hashtextextended({column}, 0) = hashtextextended({value}, 0) AND {column} = {value}"


def _list(names: Any, prefix: str = "", cls: type[Any] | None = None) -> str:
    """Quoted column names; with `cls`, values of row `v` (JSON text cast to json)."""
    if cls is None:
        return ", ".join(f'{prefix}"{name}"' for name in names)
    kinds = column_types(cls)
    return ", ".join(
        f'{prefix}"{name}"' + ("::json" if kinds[name] == "json" else "") for name in names
    )


def _insert(table: str, param: str, cls: type[Any], extra: str = "") -> str:
    names = field_names(cls)
    return (
        f"INSERT INTO {{s}}.{table} ({_list(names)}) "
        f"SELECT {_list(names, 'v.', cls)} FROM {_rows(param, cls)} ORDER BY e.n {extra};"
    )


def _sets(cls: type[Any], unchanged: set[str], source: str = "v.") -> str:
    kinds = column_types(cls)
    cast = source == "v."
    return ", ".join(
        f'"{n}" = {source}"{n}"' + ("::json" if cast and kinds[n] == "json" else "")
        for n in field_names(cls)
        if n not in unchanged
    )


_RUN_FIXED = {"id", "user_id", "created_at"}
_REQUEST_FIXED = {"request_id", "run_id", "kind", "created_at"}


def _body() -> str:
    request_columns = [n for n in field_names(PermissionRequest) if n != "run_id"]
    event_columns = [n for n in field_names(Event) if n != "run_id"]
    gone = (
        "SELECT seq FROM {s}.runs WHERE hashtextextended(id, 0) = ANY "
        "(SELECT hashtextextended(d, 0) FROM unnest(p_runs_del) AS d) AND id = ANY (p_runs_del)"
    )
    return f"""
DECLARE
    found bigint;
    added bigint;
BEGIN
    IF p_runs_del IS NOT NULL THEN
        DELETE FROM {{s}}.requests WHERE run_seq IN ({gone});
        DELETE FROM {{s}}.events WHERE run_seq IN ({gone});
        DELETE FROM {{s}}.idempotency_keys WHERE run_id = ANY (p_runs_del);
        DELETE FROM {{s}}.webhook_deliveries
            WHERE run_id = ANY (p_runs_del) AND status <> 'pending';
        DELETE FROM {{s}}.runs WHERE seq IN ({gone});
    END IF;
    IF p_policies_del IS NOT NULL THEN
        DELETE FROM {{s}}.policies WHERE id = ANY (p_policies_del);
    END IF;
    IF p_endpoints_del IS NOT NULL THEN
        DELETE FROM {{s}}.webhook_deliveries WHERE endpoint_id = ANY (p_endpoints_del);
        DELETE FROM {{s}}.webhook_endpoints WHERE id = ANY (p_endpoints_del);
    END IF;
    IF p_runs_new IS NOT NULL THEN
        {_insert("runs", "runs_new", Run)}
    END IF;
    IF p_runs_upd IS NOT NULL THEN
        -- the compare-and-set: each run as it was read, or nothing of the call stays
        UPDATE {{s}}.runs AS r SET {_sets(Run, _RUN_FIXED)}
            FROM {_rows("runs_upd", Run, ", expected integer")}
            WHERE {_same("r.id", "v.id")} AND r.version = v.expected;
        GET DIAGNOSTICS found = ROW_COUNT;
        IF found <> json_array_length(p_runs_upd) THEN
            RAISE EXCEPTION 'hitl-core: a run was changed by a concurrent transaction'
                USING ERRCODE = 'HL409';
        END IF;
    END IF;
    IF p_requests IS NOT NULL THEN
        UPDATE {{s}}.requests AS q
            SET {_sets(PermissionRequest, _REQUEST_FIXED)}
            FROM {_rows("requests", PermissionRequest)}
            WHERE {_same("q.request_id", "v.request_id")};
        GET DIAGNOSTICS found = ROW_COUNT;
        INSERT INTO {{s}}.requests (run_seq, {_list(request_columns)})
            SELECT r.seq, {_list(request_columns, "v.", PermissionRequest)}
            FROM {_rows("requests", PermissionRequest)}
            JOIN {{s}}.runs AS r ON {_same("r.id", "v.run_id")}
            WHERE NOT EXISTS (SELECT 1 FROM {{s}}.requests AS q
                              WHERE {_same("q.request_id", "v.request_id")})
            ORDER BY e.n;
        GET DIAGNOSTICS added = ROW_COUNT;
        IF found + added <> json_array_length(p_requests) THEN
            RAISE EXCEPTION 'hitl-core: a request names a run that is not stored'
                USING ERRCODE = 'HL500';
        END IF;
    END IF;
    IF p_policies_new IS NOT NULL THEN
        INSERT INTO {{s}}.policies (id, scope, tool_name, is_pattern, prefix, source, created_at)
            SELECT v.id, v.scope, v.tool_name, v.is_pattern, v.prefix, v.source, v.created_at
            FROM json_array_elements(p_policies_new) WITH ORDINALITY AS e(doc, n)
            CROSS JOIN LATERAL json_to_record(e.doc) AS v(id text, scope text,
                tool_name text, is_pattern boolean, prefix text, source text,
                created_at double precision)
            ORDER BY e.n;
    END IF;
    IF p_tasks_new IS NOT NULL THEN
        {_insert("tasks", "tasks_new", Task)}
    END IF;
    IF p_keys_new IS NOT NULL THEN
        {_insert("idempotency_keys", "keys_new", IdempotencyKey)}
    END IF;
    IF p_cursors IS NOT NULL THEN
        INSERT INTO {{s}}.webhook_cursors (name, event_id)
            SELECT v.name, v.event_id
            FROM json_to_recordset(p_cursors) AS v(name text, event_id text)
            ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id;
    END IF;
    IF p_endpoints_new IS NOT NULL THEN
        {_insert("webhook_endpoints", "endpoints_new", WebhookEndpoint)}
    END IF;
    IF p_endpoints_upd IS NOT NULL THEN
        UPDATE {{s}}.webhook_endpoints AS w
            SET {_sets(WebhookEndpoint, {"id"})}
            FROM {_rows("endpoints_upd", WebhookEndpoint)}
            WHERE w.id = v.id;
    END IF;
    IF p_deliveries IS NOT NULL THEN
        {
        _insert(
            "webhook_deliveries",
            "deliveries",
            WebhookDelivery,
            "ON CONFLICT (id) DO UPDATE SET " + _sets(WebhookDelivery, {"id"}, "excluded."),
        )
    }
    END IF;
    IF p_events IS NOT NULL THEN
        -- taken last (after every row lock) and held until commit: event numbers
        -- follow commit order, and no two writers wait for each other in a circle
        PERFORM pg_advisory_xact_lock({{event_lock}});
        INSERT INTO {{s}}.events (run_seq, {_list(event_columns)})
            SELECT r.seq, {_list(event_columns, "v.", Event)}
            FROM {_rows("events", Event)}
            JOIN {{s}}.runs AS r ON {_same("r.id", "v.run_id")}
            ORDER BY e.n;
        GET DIAGNOSTICS added = ROW_COUNT;
        IF added <> json_array_length(p_events) THEN
            RAISE EXCEPTION 'hitl-core: an event names a run that is not stored'
                USING ERRCODE = 'HL500';
        END IF;
        PERFORM pg_notify(p_channel, p) FROM unnest(p_payloads) AS p;
    END IF;
END"""


def _signature() -> str:
    return ", ".join(
        f"p_{name} {'text[]' if name in _ARRAYS else 'text' if name == 'channel' else 'json'}"
        for name in PARAMETERS
    )


WRITE_FUNCTION = (
    f"CREATE FUNCTION {{s}}.hitl_write({_signature()}) RETURNS void LANGUAGE plpgsql "
    f"AS $$ {_body()} $$"
)
"""The CREATE FUNCTION statement, with `{s}` (the schema) and `{event_lock}` (the
event lock's two keys) to fill in."""
