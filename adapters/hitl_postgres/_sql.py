"""The PostgreSQL store's SQL: the reads it runs, the conversions between rows and
hitl-core records (on the public `to_row` / `from_row`), and `Writes`, the buffer of a
write transaction, sent at commit as one call of the schema's `hitl_write` function."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from psycopg import sql

from hitl_core.adapter import (
    ConflictError,
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    RunStatus,
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

from ._write import PARAMETERS, column_types

__all__ = ["NOTIFY_LIMIT", "RECENT", "Codec", "Statements", "Writes", "payloads", "scope"]

Row = tuple[Any, ...]

RECENT = 8
"""How many of a run's newest requests come with it (besides its pending ones)."""
NOTIFY_LIMIT = 7900
"""Bytes of run ids per notification (PostgreSQL's payload limit is 8000)."""


class Codec:
    """One record class: its fields (the table's columns, in order), the record from a
    row, and the rows `hitl_write` reads (JSON objects)."""

    __slots__ = ("cls", "json_fields", "names", "names_fields")

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        self.names = field_names(cls)
        types = column_types(cls)
        self.names_fields = tuple(n for n, t in types.items() if t == "text[]")
        self.json_fields = tuple(n for n, t in types.items() if t == "json")

    def decode(self, row: Row) -> Any:
        """The record of a row that lists the fields in order (lists of names as
        text[], NULL for an empty one; JSON values already parsed)."""
        values = dict(zip(self.names, row, strict=True))
        for name in self.names_fields:
            if values[name] is None:
                values[name] = []
        return from_row(self.cls, values)

    def rows(self, records: Iterable[Any]) -> list[dict[str, Any]]:
        """The records as JSON objects: an empty list of names as null, a JSON value as
        its JSON text (a string, so that hitl_write stores it exactly as written)."""
        rows = []
        for record in records:
            row = to_row(record)
            for name in self.names_fields:
                if not row[name]:
                    row[name] = None
            for name in self.json_fields:
                if row[name] is not None:
                    row[name] = to_json(row[name])
            rows.append(row)
        return rows


RUN = Codec(Run)
REQUEST = Codec(PermissionRequest)
POLICY = Codec(PermissionPolicy)
TASK = Codec(Task)
EVENT = Codec(Event)
ENDPOINT = Codec(WebhookEndpoint)
DELIVERY = Codec(WebhookDelivery)
KEY = Codec(IdempotencyKey)


def scope(user_id: str | None) -> str:
    """The stored scope of a policy: the user id, or '' for the account scope."""
    return "" if user_id is None else user_id


def _cols(codec: Codec, alias: str, renames: dict[str, str] | None = None) -> str:
    renames = renames or {}
    return ", ".join(renames.get(name, f"{alias}.{name}") for name in codec.names)


def _same(column: str, value: str = "%(id)s") -> str:
    """Text id `column` equals `value`, through the b-tree on its hash."""
    return f"hashtextextended({column}, 0) = hashtextextended({value}, 0) AND {column} = {value}"


_TERMINAL = ("completed", "failed", "cancelled")
_REQ_FROM = "{s}.requests q JOIN {s}.runs r ON r.seq = q.run_seq"
_EVENT_FROM = "{s}.events e JOIN {s}.runs r ON r.seq = e.run_seq"


class Statements:
    """Every statement of the store, for one schema, with numbered placeholders ($1...:
    the store's cursors send queries as they are, without parsing them)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._quoted = sql.Identifier(schema).as_string(None)
        f = self.format
        run = _cols(RUN, "x")
        req = _cols(REQUEST, "q", {"run_id": "r.id"})
        ev = _cols(EVENT, "e", {"run_id": "r.id"})
        pol = "x.id, nullif(x.scope, ''), x.tool_name, x.source, x.created_at"
        # a run comes with its pending requests and its RECENT newest ones (a JSON list
        # of field lists), and whether those are all it has: what the engine's next
        # reads in the same call ask for, without another round trip
        fields = ", ".join("x.id" if n == "run_id" else f"q.{n}" for n in REQUEST.names)
        self.get_run = f(
            f"SELECT {run}, c.cut IS NULL, (SELECT json_agg(json_build_array({fields}) "
            "ORDER BY q.seq) FROM {s}.requests q WHERE q.run_seq = x.seq "
            "AND (q.status = 'pending' OR q.seq > coalesce(c.cut, 0))) "
            "FROM {s}.runs x CROSS JOIN LATERAL (SELECT (SELECT seq FROM {s}.requests "
            f"WHERE run_seq = x.seq ORDER BY seq DESC OFFSET {RECENT} LIMIT 1) AS cut) c "
            f"WHERE {_same('x.id')}"
        )
        self.run_seq = f(f"SELECT x.seq FROM {{s}}.runs x WHERE {_same('x.id')}")
        # runs.list: by user, or through the index of one status (named in the query,
        # so that the planner can use that status's partial index)
        self.list_runs: dict[tuple[bool, str | None], str] = {}
        for status in (None, *(s.value for s in RunStatus)):
            for user in (False, True):
                self.list_runs[(user, status)] = f(
                    f"SELECT {run} FROM {{s}}.runs x WHERE x.seq > %s"
                    + (" AND x.user_id = %s" if user else "")
                    + (f" AND x.status = '{status}'" if status else "")
                    + " ORDER BY x.seq LIMIT %s"
                )
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
        self.get_request = f(f"SELECT {req} FROM {_REQ_FROM} WHERE {_same('q.request_id')}")
        self.run_requests = f(f"SELECT {req} FROM {_REQ_FROM} WHERE {_same('r.id')} ORDER BY q.seq")
        self.run_pending_requests = f(
            f"SELECT {req} FROM {_REQ_FROM} WHERE {_same('r.id')} AND q.status = 'pending' "
            "ORDER BY q.seq"
        )
        self.pending_requests = f(
            f"SELECT {req} FROM {_REQ_FROM} WHERE q.status = 'pending' ORDER BY q.seq LIMIT %s"
        )
        # policies
        self.find_policy = f(
            f"SELECT {pol} FROM {{s}}.policies x WHERE x.scope = %s AND x.tool_name = %s"
        )
        self.get_policy = f(f"SELECT {pol} FROM {{s}}.policies x WHERE x.id = %s")
        # the exact policy first, then the scope's patterns whose literal prefix is a
        # prefix of the name (parameters: scope, tool name, the name's prefixes)
        self.candidate_policies = f(
            f"(SELECT 0 AS k, x.seq, {pol} FROM {{s}}.policies x "
            "WHERE x.scope = %s AND x.tool_name = %s) "
            f"UNION ALL (SELECT 1, x.seq, {pol} FROM {{s}}.policies x "
            "WHERE x.scope = %s AND x.is_pattern AND x.prefix = ANY(%s)) "
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
        # events, in their order (seq: commit order, see hitl_write)
        self.event_seq = f(f"SELECT e.seq FROM {{s}}.events e WHERE {_same('e.id')}")
        self.list_events = f(
            f"SELECT {ev} FROM {_EVENT_FROM} WHERE e.seq > %s ORDER BY e.seq LIMIT %s"
        )
        self.list_run_events = f(
            f"SELECT {ev} FROM {_EVENT_FROM} WHERE {_same('r.id')} AND e.seq > %s "
            "ORDER BY e.seq LIMIT %s"
        )
        self.last_event = f("SELECT id FROM {s}.events ORDER BY seq DESC LIMIT 1")
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
        marks = ", ".join("%s" for _ in PARAMETERS)
        self.write = f(f"SELECT {{s}}.hitl_write({marks})")

    def format(self, text: str) -> str:
        """`text` with `{s}` replaced by the quoted schema and its placeholders numbered
        in order ($1, $2, ...): each `%s` takes the next number, a `%(name)s` takes one
        number for all its uses."""
        numbers: dict[str, int] = {}
        count = 0

        def number(match: re.Match[str]) -> str:
            nonlocal count
            name = match.group(1)
            if name is not None and name in numbers:
                return f"${numbers[name]}"
            count += 1
            if name is not None:
                numbers[name] = count
            return f"${count}"

        return _PLACEHOLDER.sub(number, text.replace("{s}", self._quoted))


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


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
        """Buffer a compare-and-set: refused at once when this transaction read another
        version, else checked by hitl_write."""
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

    # -- the call ------------------------------------------------------------------------
    def arguments(self, channel: str) -> list[Any]:
        """hitl_write's arguments for everything buffered (None for nothing)."""
        args: dict[str, Any] = dict.fromkeys(PARAMETERS)
        if self.runs_del:
            args["runs_del"] = self.runs_del
        if self.policies_del:
            args["policies_del"] = self.policies_del
        if self.endpoints_del:
            args["endpoints_del"] = self.endpoints_del
        if self.runs_new:
            args["runs_new"] = to_json(RUN.rows(self.runs_new.values()))
        if self.runs_upd:
            rows = RUN.rows(run for run, _ in self.runs_upd.values())
            for row, (_, expected) in zip(rows, self.runs_upd.values(), strict=True):
                row["expected"] = expected
            args["runs_upd"] = to_json(rows)
        if self.requests:
            args["requests"] = to_json(REQUEST.rows(self.requests.values()))
        if self.policies_new:
            args["policies_new"] = to_json(
                [
                    {
                        "id": p.id,
                        "scope": scope(p.user_id),
                        "tool_name": p.tool_name,
                        "is_pattern": is_pattern(p.tool_name),
                        "prefix": literal_prefix(p.tool_name) if is_pattern(p.tool_name) else None,
                        "source": p.source,
                        "created_at": p.created_at,
                    }
                    for p in self.policies_new.values()
                ]
            )
        if self.tasks_new:
            args["tasks_new"] = to_json(TASK.rows(self.tasks_new.values()))
        if self.keys_new:
            args["keys_new"] = to_json(KEY.rows(self.keys_new.values()))
        if self.cursors:
            args["cursors"] = to_json(
                [{"name": name, "event_id": event} for name, event in self.cursors.items()]
            )
        if self.endpoints_new:
            args["endpoints_new"] = to_json(ENDPOINT.rows(self.endpoints_new.values()))
        if self.endpoints_upd:
            args["endpoints_upd"] = to_json(ENDPOINT.rows(self.endpoints_upd.values()))
        if self.deliveries:
            args["deliveries"] = to_json(DELIVERY.rows(self.deliveries.values()))
        if self.events:
            args["events"] = to_json(EVENT.rows(self.events))
            args["channel"] = channel
            args["payloads"] = payloads({event.run_id for event in self.events})
        return [args[name] for name in PARAMETERS]


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
