"""The PostgreSQL store's SQL: the reads it runs, the conversions between rows and
hitl-core records (on the public `to_row` / `from_row`), and `Writes`, the buffer of a
write transaction that goes to the server as one data-modifying statement."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from psycopg import sql

from hitl_core.adapter import (
    ConflictError,
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    field_names,
    from_row,
    is_pattern,
    literal_prefix,
    to_json,
    to_row,
)

__all__ = ["NOTIFY_LIMIT", "RECORD_TABLES", "Codec", "Statements", "Writes", "scope"]

Row = tuple[Any, ...]

NOTIFY_LIMIT = 7900
"""Bytes of run ids per notification (PostgreSQL's payload limit is 8000)."""

# The SQL type of each kind of field, read off the record's annotation ("names" are
# lists of strings, stored as text[] with NULL for an empty list).
_KINDS = {
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
    "frozenset[str]": "names",
    "tuple[str, ...]": "names",
    "RunStatus": "text",
    "RequestStatus": "text",
}


class Codec:
    """One record class: its fields (the table's columns, in order), their SQL kinds,
    the record from a row, and the column arrays of a multi-row write."""

    __slots__ = ("cls", "kinds", "names")

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        self.names = field_names(cls)
        self.kinds = {
            (field.alias or field.name): _KINDS[str(field.type)] for field in attrs.fields(cls)
        }

    def decode(self, row: Row) -> Any:
        """The record of a row that lists the fields in order (lists of names as
        text[] or NULL, JSON values already parsed)."""
        values = dict(zip(self.names, row, strict=True))
        for name, kind in self.kinds.items():
            if kind == "names" and values[name] is None:
                values[name] = []
        return from_row(self.cls, values)

    def arrays(self, records: Iterable[Any], prefix: str) -> dict[str, list[Any]]:
        """One list per field (parameters `{prefix}_{field}`), in SQL-ready form."""
        rows = [to_row(record) for record in records]
        params: dict[str, list[Any]] = {}
        for name, kind in self.kinds.items():
            values = [row[name] for row in rows]
            if kind == "json":
                values = [None if v is None else to_json(v) for v in values]
            elif kind == "names":
                values = [to_json(list(v)) for v in values]
            elif kind == "double precision":
                values = [None if v is None else float(v) for v in values]
            params[f"{prefix}_{name}"] = values
        return params

    def unnest(self, prefix: str, extra: tuple[str, str] | None = None) -> str:
        """`unnest(...) WITH ORDINALITY AS v(<fields>, n)` over the arrays of `arrays`;
        `extra` (name, SQL type) adds one more array `{prefix}_{name}` as column `name`."""
        casts = [f"%({prefix}_{name})s::{self._array_type(name)}" for name in self.names]
        names = list(self.names)
        if extra is not None:
            casts.append(f"%({prefix}_{extra[0]})s::{extra[1]}[]")
            names.append(extra[0])
        return f"unnest({', '.join(casts)}) WITH ORDINALITY AS v({', '.join(names)}, n)"

    def _array_type(self, name: str) -> str:
        kind = self.kinds[name]
        return ("json" if kind == "names" else kind) + "[]"

    def value(self, name: str) -> str:
        """The expression that stores field `name` of row `v`."""
        if self.kinds[name] == "names":
            return "{s}.hitl_names(v." + name + ")"
        return f"v.{name}"


RUN = Codec(Run)
REQUEST = Codec(PermissionRequest)
POLICY = Codec(PermissionPolicy)
TASK = Codec(Task)
EVENT = Codec(Event)
ENDPOINT = Codec(WebhookEndpoint)
DELIVERY = Codec(WebhookDelivery)
KEY = Codec(IdempotencyKey)

RECORD_TABLES: dict[str, Codec] = {
    "runs": RUN,
    "requests": REQUEST,
    "policies": POLICY,
    "tasks": TASK,
    "events": EVENT,
    "webhook_endpoints": ENDPOINT,
    "webhook_deliveries": DELIVERY,
    "idempotency_keys": KEY,
}
"""Each table that keeps a record, and the record's codec: every field is a column."""


def scope(user_id: str | None) -> str:
    """The stored scope of a policy: the user id, or '' for the account scope."""
    return "" if user_id is None else user_id


def _cols(codec: Codec, alias: str, renames: dict[str, str] | None = None) -> str:
    renames = renames or {}
    return ", ".join(renames.get(name, f"{alias}.{name}") for name in codec.names)


_TERMINAL = "('completed', 'failed', 'cancelled')"
_REQ_FROM = "{s}.requests q JOIN {s}.runs r ON r.seq = q.run_seq"
_EVENT_FROM = "{s}.events e JOIN {s}.runs r ON r.seq = e.run_seq"
# The global event log shows events below the oldest transaction still writing (and this
# transaction's own, when nothing older is running): see the events table in _schema.
_HORIZON = (
    "CROSS JOIN (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS h, "
    "pg_current_xact_id_if_assigned() AS own) z"
)
_BELOW_HORIZON = "e.xid <= z.h AND (e.xid < z.h OR z.own = z.h)"


class Statements:
    """Every statement of the store, for one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._quoted = sql.Identifier(schema).as_string(None)
        run = _cols(RUN, "x")
        req = _cols(REQUEST, "q", {"run_id": "r.id"})
        ev = _cols(EVENT, "e", {"run_id": "r.id"})
        pol = "x.id, nullif(x.scope, ''), x.tool_name, x.source, x.created_at"
        f = self.format
        # runs
        self.get_run = f(f"SELECT {run} FROM {{s}}.runs x WHERE x.id = %s")
        self.run_seq = f("SELECT seq FROM {s}.runs WHERE id = %s")
        self.list_runs = {
            (user, status): f(
                f"SELECT {run} FROM {{s}}.runs x WHERE x.seq > %s"
                + (" AND x.user_id = %s" if user else "")
                + (" AND x.status = %s" if status else "")
                + " ORDER BY x.seq LIMIT %s"
            )
            for user in (False, True)
            for status in (False, True)
        }
        self.due_runs = f(
            f"SELECT {run} FROM {{s}}.runs x WHERE x.deadline <= %s "
            "ORDER BY x.deadline, x.seq LIMIT %s"
        )
        self.claimable_runs = f(
            f"SELECT {run} FROM {{s}}.runs x WHERE x.status = 'running' "
            "AND coalesce(x.lease_expires, 0) <= %s "
            "ORDER BY coalesce(x.lease_expires, 0), x.seq LIMIT %s"
        )
        self.ended_runs = f(
            f"SELECT x.id FROM {{s}}.runs x WHERE x.status IN {_TERMINAL} "
            "AND x.updated_at < %s ORDER BY x.updated_at, x.seq LIMIT %s"
        )
        # requests
        self.get_request = f(f"SELECT {req} FROM {_REQ_FROM} WHERE q.request_id = %s")
        self.run_requests = f(f"SELECT {req} FROM {_REQ_FROM} WHERE r.id = %s ORDER BY q.seq")
        self.run_pending_requests = f(
            f"SELECT {req} FROM {_REQ_FROM} WHERE r.id = %s AND q.status = 'pending' ORDER BY q.seq"
        )
        self.pending_requests = f(
            f"SELECT {req} FROM {_REQ_FROM} WHERE q.status = 'pending' ORDER BY q.seq LIMIT %s"
        )
        # policies
        self.find_policy = f(
            f"SELECT {pol} FROM {{s}}.policies x WHERE x.scope = %s AND x.tool_name = %s"
        )
        self.get_policy = f(f"SELECT {pol} FROM {{s}}.policies x WHERE x.id = %s")
        self.candidate_policies = f(
            f"(SELECT 0 AS k, x.seq, {pol} FROM {{s}}.policies x "
            "WHERE x.scope = %(scope)s AND x.tool_name = %(tool)s) "
            f"UNION ALL (SELECT 1, x.seq, {pol} FROM {{s}}.policies x "
            "WHERE x.scope = %(scope)s AND x.is_pattern AND x.prefix = ANY(%(prefixes)s)) "
            "ORDER BY 1, 2"
        )
        self.policy_seq = f("SELECT seq FROM {s}.policies WHERE id = %s AND scope = %s")
        self.list_policies = f(
            f"SELECT {pol} FROM {{s}}.policies x WHERE x.scope = %s AND x.seq > %s "
            "ORDER BY x.seq LIMIT %s"
        )
        # idempotency keys, tasks
        self.get_key = f(f"SELECT {_cols(KEY, 'x')} FROM {{s}}.idempotency_keys x WHERE x.key = %s")
        self.get_task = f(f"SELECT {_cols(TASK, 'x')} FROM {{s}}.tasks x WHERE x.id = %s")
        # events
        self.event_at = f("SELECT 1 FROM {s}.events WHERE id = %s")
        self.list_events = f(
            f"SELECT {ev} FROM {_EVENT_FROM} {_HORIZON} WHERE {_BELOW_HORIZON} "
            "AND (e.xid, e.seq) > (SELECT c.xid, c.seq FROM {s}.events c WHERE c.id = %s) "
            "ORDER BY e.xid, e.seq LIMIT %s"
        )
        self.list_events_first = f(
            f"SELECT {ev} FROM {_EVENT_FROM} {_HORIZON} WHERE {_BELOW_HORIZON} "
            "ORDER BY e.xid, e.seq LIMIT %s"
        )
        self.list_run_events = f(
            f"SELECT {ev} FROM {_EVENT_FROM} WHERE r.id = %s "
            "AND (e.xid, e.seq) > (SELECT c.xid, c.seq FROM {s}.events c WHERE c.id = %s) "
            "ORDER BY e.xid, e.seq LIMIT %s"
        )
        self.list_run_events_first = f(
            f"SELECT {ev} FROM {_EVENT_FROM} WHERE r.id = %s ORDER BY e.xid, e.seq LIMIT %s"
        )
        self.last_event = f(
            f"SELECT e.id FROM {{s}}.events e {_HORIZON} WHERE {_BELOW_HORIZON} "
            "ORDER BY e.xid DESC, e.seq DESC LIMIT 1"
        )
        # webhooks
        self.get_cursor = f("SELECT event_id FROM {s}.webhook_cursors WHERE name = %s")
        endpoint = _cols(ENDPOINT, "x")
        self.get_endpoint = f(f"SELECT {endpoint} FROM {{s}}.webhook_endpoints x WHERE x.id = %s")
        self.endpoint_seq = f("SELECT seq FROM {s}.webhook_endpoints WHERE id = %s")
        self.list_endpoints = f(
            f"SELECT {endpoint} FROM {{s}}.webhook_endpoints x WHERE x.seq > %s "
            "ORDER BY x.seq LIMIT %s"
        )
        delivery = _cols(DELIVERY, "x")
        self.get_delivery = f(f"SELECT {delivery} FROM {{s}}.webhook_deliveries x WHERE x.id = %s")
        self.due_deliveries = f(
            f"SELECT {delivery} FROM {{s}}.webhook_deliveries x WHERE x.status = 'pending' "
            "AND coalesce(x.next_retry_at, 0) <= %s "
            "ORDER BY coalesce(x.next_retry_at, 0), x.seq LIMIT %s"
        )
        self.delivery_seq = f(
            "SELECT seq FROM {s}.webhook_deliveries WHERE id = %s AND endpoint_id = %s"
        )
        self.list_deliveries = {
            with_status: f(
                f"SELECT {delivery} FROM {{s}}.webhook_deliveries x "
                "WHERE x.endpoint_id = %s AND x.seq > %s"
                + (" AND x.status = %s" if with_status else "")
                + " ORDER BY x.seq LIMIT %s"
            )
            for with_status in (False, True)
        }
        self._flush_cache: dict[tuple[str, ...], str] = {}

    def format(self, text: str) -> str:
        """`text` with `{s}` replaced by the quoted schema."""
        return text.replace("{s}", self._quoted)

    def flush(self, parts: tuple[str, ...]) -> str:
        """The one statement that writes the given parts (see `Writes.parts`)."""
        found = self._flush_cache.get(parts)
        if found is None:
            found = self._flush_cache[parts] = self.format(_compose(parts))
        return found


# -- the write statement ------------------------------------------------------------------
#
# Each part is a data-modifying CTE over column arrays (unnest ... WITH ORDINALITY, so
# that rows go in in the order given). The final SELECT checks the compare-and-sets and
# raises inside the statement when one failed (hitl_check), so that nothing of it
# commits, then sends the change notification, which PostgreSQL delivers on commit.

_UNCHANGING_RUN = {"id", "user_id", "created_at"}
_UNCHANGING_REQUEST = {"request_id", "run_id", "kind", "created_at"}


def _run_update() -> str:
    # The compare-and-set: the version read, and no newer writer than this transaction
    # (so that a run's events are ordered as its changes were; see the events table).
    sets = ", ".join(f"{n} = {RUN.value(n)}" for n in RUN.names if n not in _UNCHANGING_RUN)
    return (
        f"upd_runs AS (UPDATE {{s}}.runs AS r SET {sets}, writer = pg_current_xact_id() "
        f"FROM {RUN.unnest('ru', ('expected', 'integer'))} "
        "WHERE r.id = v.id AND r.version = v.expected "
        "AND r.writer <= pg_current_xact_id() RETURNING r.id, r.seq)"
    )


def _run_refs(with_new: bool) -> str:
    lookup = "SELECT id, seq FROM {s}.runs WHERE id = ANY(%(refs)s::text[])"
    if with_new:
        lookup = f"SELECT id, seq FROM new_runs UNION ALL {lookup}"
    return f"run_refs AS ({lookup})"


def _request_parts() -> list[str]:
    names = [n for n in REQUEST.names if n != "run_id"]
    sets = ", ".join(
        f"{n} = {REQUEST.value(n)}" for n in REQUEST.names if n not in _UNCHANGING_REQUEST
    )
    unnest = REQUEST.unnest("q")
    return [
        f"upd_requests AS (UPDATE {{s}}.requests AS x SET {sets} FROM {unnest} "
        "WHERE x.request_id = v.request_id RETURNING 1)",
        f"new_requests AS (INSERT INTO {{s}}.requests (run_seq, {', '.join(names)}) "
        f"SELECT m.seq, {', '.join(REQUEST.value(n) for n in names)} FROM {unnest} "
        "JOIN run_refs m ON m.id = v.run_id WHERE NOT EXISTS "
        "(SELECT 1 FROM {s}.requests x WHERE x.request_id = v.request_id) "
        "ORDER BY v.n RETURNING 1)",
    ]


def _event_insert() -> str:
    names = [n for n in EVENT.names if n != "run_id"]
    return (
        f"new_events AS (INSERT INTO {{s}}.events (run_seq, {', '.join(names)}) "
        f"SELECT m.seq, {', '.join(EVENT.value(n) for n in names)} FROM {EVENT.unnest('e')} "
        "JOIN run_refs m ON m.id = v.run_id ORDER BY v.n RETURNING 1)"
    )


def _insert(name: str, table: str, codec: Codec, prefix: str, extra: str = "") -> str:
    return (
        f"{name} AS (INSERT INTO {{s}}.{table} ({', '.join(codec.names)}) "
        f"SELECT {', '.join(codec.value(n) for n in codec.names)} FROM {codec.unnest(prefix)} "
        f"ORDER BY v.n {extra})"
    )


_POLICY_INSERT = (
    "new_policies AS (INSERT INTO {s}.policies "
    "(id, scope, tool_name, is_pattern, prefix, source, created_at) "
    "SELECT v.id, v.scope, v.tool_name, v.is_pattern, v.prefix, v.source, v.created_at "
    "FROM unnest(%(po_id)s::text[], %(po_scope)s::text[], %(po_tool_name)s::text[], "
    "%(po_is_pattern)s::boolean[], %(po_prefix)s::text[], %(po_source)s::text[], "
    "%(po_created_at)s::double precision[]) WITH ORDINALITY "
    "AS v(id, scope, tool_name, is_pattern, prefix, source, created_at, n) ORDER BY v.n)"
)

_PARTS: dict[str, Callable[[], list[str]]] = {
    "runs_new": lambda: [_insert("new_runs", "runs", RUN, "rn", "RETURNING id, seq")],
    "runs_upd": lambda: [_run_update()],
    "requests": _request_parts,
    "events": lambda: [_event_insert()],
    "policies_del": lambda: [
        "del_policies AS (DELETE FROM {s}.policies WHERE id = ANY(%(pd_ids)s::text[]))"
    ],
    "policies_new": lambda: [_POLICY_INSERT],
    "tasks_new": lambda: [_insert("new_tasks", "tasks", TASK, "t")],
    "keys_new": lambda: [_insert("new_keys", "idempotency_keys", KEY, "k")],
    "cursors": lambda: [
        "set_cursors AS (INSERT INTO {s}.webhook_cursors (name, event_id) "
        "SELECT * FROM unnest(%(c_name)s::text[], %(c_event_id)s::text[]) "
        "ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id)"
    ],
    "endpoints_new": lambda: [_insert("new_endpoints", "webhook_endpoints", ENDPOINT, "wn")],
    "endpoints_upd": lambda: [
        "upd_endpoints AS (UPDATE {s}.webhook_endpoints AS x SET "
        + ", ".join(f"{n} = {ENDPOINT.value(n)}" for n in ENDPOINT.names if n != "id")
        + f" FROM {ENDPOINT.unnest('wu')} WHERE x.id = v.id)"
    ],
    "endpoints_del": lambda: [
        "del_endpoint_deliveries AS (DELETE FROM {s}.webhook_deliveries "
        "WHERE endpoint_id = ANY(%(wd_ids)s::text[]))",
        "del_endpoints AS (DELETE FROM {s}.webhook_endpoints WHERE id = ANY(%(wd_ids)s::text[]))",
    ],
    "deliveries": lambda: [
        _insert(
            "save_deliveries",
            "webhook_deliveries",
            DELIVERY,
            "d",
            "ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{n} = excluded.{n}" for n in DELIVERY.names if n != "id"),
        )
    ],
    "runs_del": lambda: [
        "gone AS (SELECT seq FROM {s}.runs WHERE id = ANY(%(rd_ids)s::text[]))",
        "del_run_requests AS (DELETE FROM {s}.requests WHERE run_seq IN (SELECT seq FROM gone))",
        "del_run_events AS (DELETE FROM {s}.events WHERE run_seq IN (SELECT seq FROM gone))",
        "del_run_keys AS (DELETE FROM {s}.idempotency_keys WHERE run_id = ANY(%(rd_ids)s::text[]))",
        "del_run_deliveries AS (DELETE FROM {s}.webhook_deliveries "
        "WHERE run_id = ANY(%(rd_ids)s::text[]) AND status <> 'pending')",
        "del_runs AS (DELETE FROM {s}.runs WHERE seq IN (SELECT seq FROM gone))",
    ],
}


def _compose(parts: tuple[str, ...]) -> str:
    ctes: list[str] = []
    for part in parts:
        if part == "requests" or (part == "events" and "requests" not in parts):
            ctes.append(_run_refs("runs_new" in parts))
        ctes.extend(_PARTS[part]())
    conflict = "(SELECT count(*) FROM upd_runs) <> %(ru_count)s" if "runs_upd" in parts else "false"
    broken = []
    if "requests" in parts:
        broken.append(
            "(SELECT count(*) FROM upd_requests) + (SELECT count(*) FROM new_requests) "
            "<> %(q_count)s"
        )
    if "events" in parts:
        broken.append("(SELECT count(*) FROM new_events) <> %(e_count)s")
    final = f"SELECT {{s}}.hitl_check({conflict}, {' OR '.join(broken) or 'false'})"
    if "events" in parts:
        final += (
            ", (SELECT count(pg_notify(%(channel)s, p)) FROM unnest(%(payloads)s::text[]) AS p)"
        )
    return "WITH " + ",\n".join(ctes) + "\n" + final


class Writes:
    """The writes of one transaction not yet sent, merged by key (the last write of a
    record wins; a run updated twice is compared with the version it was read at)."""

    __slots__ = (
        "cursors",
        "deliveries",
        "endpoints_del",
        "endpoints_new",
        "endpoints_upd",
        "events",
        "keys_new",
        "policies_del",
        "policies_new",
        "requests",
        "runs_del",
        "runs_new",
        "runs_upd",
        "tasks_new",
    )

    def __init__(self) -> None:
        self.runs_new: dict[str, Run] = {}
        self.runs_upd: dict[str, tuple[Run, int]] = {}
        self.requests: dict[str, PermissionRequest] = {}
        self.events: list[Event] = []
        self.policies_del: list[str] = []
        self.policies_new: dict[str, PermissionPolicy] = {}
        self.tasks_new: dict[str, Task] = {}
        self.keys_new: dict[str, IdempotencyKey] = {}
        self.cursors: dict[str, str] = {}
        self.endpoints_new: dict[str, WebhookEndpoint] = {}
        self.endpoints_upd: dict[str, WebhookEndpoint] = {}
        self.endpoints_del: list[str] = []
        self.deliveries: dict[str, WebhookDelivery] = {}
        self.runs_del: list[str] = []

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in self.__slots__)

    def touches(self, table: str) -> bool:
        """Whether anything buffered writes to `table` (a read of it must flush first)."""
        return any(getattr(self, name) for name in _TABLE_PARTS[table])

    def has_deletes(self) -> bool:
        return bool(self.policies_del or self.endpoints_del or self.runs_del)

    # -- runs ------------------------------------------------------------------------
    def update_run(self, run: Run, read_version: int | None) -> None:
        expected = run.version - 1
        new = self.runs_new.get(run.id)
        if new is not None:
            if new.version != expected:
                raise _conflict(run.id)
            self.runs_new[run.id] = run
            return
        held = self.runs_upd.get(run.id)
        if held is not None:
            if held[0].version != expected:
                raise _conflict(run.id)
            self.runs_upd[run.id] = (run, held[1])
            return
        if read_version is not None and read_version != expected:
            raise _conflict(run.id)
        self.runs_upd[run.id] = (run, expected)

    def run(self, run_id: str) -> Run | None:
        """The run as this transaction wrote it, if it did."""
        found = self.runs_new.get(run_id)
        if found is not None:
            return found
        held = self.runs_upd.get(run_id)
        return None if held is None else held[0]

    # -- the statement ---------------------------------------------------------------
    def statement(self, statements: Statements, channel: str) -> tuple[str, dict[str, Any]]:
        """The SQL and parameters that write everything buffered."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if self.runs_new:
            parts.append("runs_new")
            params.update(RUN.arrays(self.runs_new.values(), "rn"))
        if self.runs_upd:
            parts.append("runs_upd")
            held = list(self.runs_upd.values())
            params.update(RUN.arrays((run for run, _ in held), "ru"))
            params["ru_expected"] = [expected for _, expected in held]
            params["ru_count"] = len(held)
        if self.requests or self.events:
            referenced = {r.run_id for r in self.requests.values()}
            referenced.update(e.run_id for e in self.events)
            params["refs"] = sorted(referenced.difference(self.runs_new))
        if self.requests:
            parts.append("requests")
            params.update(REQUEST.arrays(self.requests.values(), "q"))
            params["q_count"] = len(self.requests)
        if self.events:
            parts.append("events")
            params.update(EVENT.arrays(self.events, "e"))
            params["e_count"] = len(self.events)
            params["channel"] = channel
            params["payloads"] = payloads({event.run_id for event in self.events})
        if self.policies_del:
            parts.append("policies_del")
            params["pd_ids"] = list(self.policies_del)
        if self.policies_new:
            parts.append("policies_new")
            policies = list(self.policies_new.values())
            params["po_id"] = [p.id for p in policies]
            params["po_scope"] = [scope(p.user_id) for p in policies]
            params["po_tool_name"] = [p.tool_name for p in policies]
            params["po_is_pattern"] = [is_pattern(p.tool_name) for p in policies]
            params["po_prefix"] = [
                literal_prefix(p.tool_name) if is_pattern(p.tool_name) else None for p in policies
            ]
            params["po_source"] = [p.source for p in policies]
            params["po_created_at"] = [float(p.created_at) for p in policies]
        if self.tasks_new:
            parts.append("tasks_new")
            params.update(TASK.arrays(self.tasks_new.values(), "t"))
        if self.keys_new:
            parts.append("keys_new")
            params.update(KEY.arrays(self.keys_new.values(), "k"))
        if self.cursors:
            parts.append("cursors")
            params["c_name"] = list(self.cursors)
            params["c_event_id"] = list(self.cursors.values())
        if self.endpoints_new:
            parts.append("endpoints_new")
            params.update(ENDPOINT.arrays(self.endpoints_new.values(), "wn"))
        if self.endpoints_upd:
            parts.append("endpoints_upd")
            params.update(ENDPOINT.arrays(self.endpoints_upd.values(), "wu"))
        if self.endpoints_del:
            parts.append("endpoints_del")
            params["wd_ids"] = list(self.endpoints_del)
        if self.deliveries:
            parts.append("deliveries")
            params.update(DELIVERY.arrays(self.deliveries.values(), "d"))
        if self.runs_del:
            parts.append("runs_del")
            params["rd_ids"] = list(self.runs_del)
        return statements.flush(tuple(parts)), params


_TABLE_PARTS: dict[str, tuple[str, ...]] = {
    "runs": ("runs_new", "runs_upd", "runs_del"),
    "requests": ("requests", "runs_del"),
    "events": ("events", "runs_del"),
    "policies": ("policies_new", "policies_del"),
    "tasks": ("tasks_new",),
    "idempotency_keys": ("keys_new", "runs_del"),
    "webhook_cursors": ("cursors",),
    "webhook_endpoints": ("endpoints_new", "endpoints_upd", "endpoints_del"),
    "webhook_deliveries": ("deliveries", "endpoints_del", "runs_del"),
}


def _conflict(run_id: str) -> ConflictError:
    return ConflictError("concurrent_update", f"run {run_id} was changed concurrently")


def payloads(run_ids: Iterable[str]) -> list[str]:
    """The notification payloads naming `run_ids`: JSON lists of at most NOTIFY_LIMIT
    bytes each; `null` (listeners re-check everything) for an id too long for one."""
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for run_id in sorted(run_ids):
        item = len(to_json(run_id).encode()) + 1
        if item + 2 > NOTIFY_LIMIT:
            chunks.append("null")
            continue
        if current and size + item > NOTIFY_LIMIT:
            chunks.append(to_json(current))
            current, size = [], 2
        current.append(run_id)
        size += item
    if current:
        chunks.append(to_json(current))
    return chunks
