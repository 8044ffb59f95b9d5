"""Row shapes of the SQLite store: the SQL it runs (prepared once, as module constants)
and the conversions between rows and hitl-core records, built on the public row form
(`hitl_core.adapter.to_row` / `from_row`): a record's fields are its columns, JSON
values are stored as JSON text."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hitl_core.adapter import (
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    field_names,
    from_json,
    from_row,
    is_pattern,
    literal_prefix,
    to_json,
    to_row,
)

__all__ = ["Codec", "scope"]

Row = tuple[Any, ...]


class Codec:
    """A record class's columns (its field names, in order) and its conversions; the
    fields in `json` are stored as JSON text (NULL for None)."""

    __slots__ = ("cls", "columns", "decode", "encode", "names")

    def __init__(self, cls: type[Any], json: frozenset[str]) -> None:
        self.cls = cls
        self.names = field_names(cls)
        self.columns = ", ".join(self.names)
        self.encode: Callable[[Any], Row] = _encoder(self.names, json)
        self.decode: Callable[[Row], Any] = _decoder(cls, self.names, json)


def _encoder(names: tuple[str, ...], json: frozenset[str]) -> Callable[[Any], Row]:
    def encode(record: Any) -> Row:
        row = to_row(record)
        return tuple(
            (None if row[name] is None else to_json(row[name])) if name in json else row[name]
            for name in names
        )

    return encode


def _decoder(cls: type[Any], names: tuple[str, ...], json: frozenset[str]) -> Callable[[Row], Any]:
    def decode(row: Row) -> Any:
        return from_row(
            cls,
            {
                name: (None if value is None else from_json(value)) if name in json else value
                for name, value in zip(names, row, strict=True)
            },
        )

    return decode


RUN = Codec(
    Run,
    frozenset({"metadata", "remembered_allow", "remembered_deny", "output", "checkpoint"}),
)
REQUEST = Codec(PermissionRequest, frozenset({"tool_input", "answers"}))
POLICY = Codec(PermissionPolicy, frozenset())
TASK = Codec(Task, frozenset())
EVENT = Codec(Event, frozenset({"data"}))
ENDPOINT = Codec(WebhookEndpoint, frozenset({"events"}))
DELIVERY = Codec(WebhookDelivery, frozenset())
KEY = Codec(IdempotencyKey, frozenset())


def scope(user_id: str | None) -> str:
    """The stored scope key of a policy: the user id, or '' for the account scope."""
    return "" if user_id is None else user_id


def _marks(count: int) -> str:
    return ", ".join("?" * count)


# -- runs -------------------------------------------------------------------------------

INSERT_RUN = f"INSERT INTO runs ({RUN.columns}) VALUES ({_marks(len(RUN.names))})"
# Compare-and-set on the version the caller read (the last parameter). id, user_id and
# created_at never change (the port says so): setting them would rewrite indexes.
_UNCHANGING = {"id", "user_id", "created_at"}
UPDATE_RUN = (
    "UPDATE runs SET "
    + ", ".join(
        f"{name} = ?{index}"
        for index, name in enumerate(RUN.names, start=1)
        if name not in _UNCHANGING
    )
    + f" WHERE id = ?1 AND version = ?{len(RUN.names) + 1}"
)
GET_RUN = f"SELECT {RUN.columns} FROM runs WHERE id = ?"
RUN_SEQ = "SELECT seq FROM runs WHERE id = ?"
DUE_RUNS = (
    f"SELECT {RUN.columns} FROM runs WHERE deadline IS NOT NULL AND deadline <= ? "
    "ORDER BY deadline, seq LIMIT ?"
)
CLAIMABLE_RUNS = (
    f"SELECT {RUN.columns} FROM runs INDEXED BY runs_claimable "
    "WHERE status = 'running' AND ifnull(lease_expires, 0.0) <= ? "
    "ORDER BY ifnull(lease_expires, 0.0), seq LIMIT ?"
)
_TERMINAL = "status IN ('completed', 'failed', 'cancelled')"
ENDED_RUNS = (
    f"SELECT id FROM runs INDEXED BY runs_ended WHERE {_TERMINAL} AND updated_at < ? "
    "ORDER BY updated_at LIMIT ?"
)
# list_runs by (has user filter, has status filter); parameters: seq, [user], [status], limit
LIST_RUNS = {
    (False, False): f"SELECT {RUN.columns} FROM runs WHERE seq > ? ORDER BY seq LIMIT ?",
    (True, False): (
        f"SELECT {RUN.columns} FROM runs WHERE seq > ? AND user_id = ? ORDER BY seq LIMIT ?"
    ),
    (False, True): (
        f"SELECT {RUN.columns} FROM runs INDEXED BY runs_by_status "
        "WHERE seq > ? AND status = ? ORDER BY seq LIMIT ?"
    ),
    (True, True): (
        f"SELECT {RUN.columns} FROM runs WHERE seq > ? AND user_id = ? AND status = ? "
        "ORDER BY seq LIMIT ?"
    ),
}


@functools.lru_cache(maxsize=64)
def delete_runs(count: int) -> tuple[str, ...]:
    """The statements that delete `count` runs and what belongs to them."""
    marks = _marks(count)
    return (
        f"DELETE FROM requests WHERE run_id IN ({marks})",
        f"DELETE FROM events WHERE run_id IN ({marks})",
        f"DELETE FROM idempotency_keys WHERE run_id IN ({marks})",
        f"DELETE FROM webhook_deliveries WHERE run_id IN ({marks}) AND status != 'pending'",
        f"DELETE FROM runs WHERE id IN ({marks})",
    )


# -- idempotency keys -------------------------------------------------------------------

INSERT_KEY = f"INSERT INTO idempotency_keys ({KEY.columns}) VALUES ({_marks(len(KEY.names))})"
GET_KEY = f"SELECT {KEY.columns} FROM idempotency_keys WHERE key = ?"

# -- requests ---------------------------------------------------------------------------

_REQUEST_CHANGES = [
    name for name in REQUEST.names if name not in {"request_id", "run_id", "kind", "created_at"}
]
SAVE_REQUEST = (
    f"INSERT INTO requests ({REQUEST.columns}) VALUES ({_marks(len(REQUEST.names))}) "
    # only what a decision changes: SET on run_id would rewrite requests_by_run needlessly
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _REQUEST_CHANGES)
)
GET_REQUEST = f"SELECT {REQUEST.columns} FROM requests WHERE request_id = ?"
RUN_REQUESTS = f"SELECT {REQUEST.columns} FROM requests WHERE run_id = ? ORDER BY seq"
RUN_PENDING_REQUESTS = (
    f"SELECT {REQUEST.columns} FROM requests WHERE run_id = ? AND status = 'pending' ORDER BY seq"
)
PENDING_REQUESTS = (
    f"SELECT {REQUEST.columns} FROM requests INDEXED BY requests_pending "
    "WHERE status = 'pending' ORDER BY seq LIMIT ?"
)

# -- policies ---------------------------------------------------------------------------

_POLICY_SELECT = "id, scope, tool_name, source, created_at"
INSERT_POLICY = (
    "INSERT INTO policies (id, scope, tool_name, source, created_at, is_pattern, prefix) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
DELETE_POLICY = "DELETE FROM policies WHERE id = ?"
GET_POLICY = f"SELECT {_POLICY_SELECT} FROM policies WHERE id = ?"
FIND_POLICY = f"SELECT {_POLICY_SELECT} FROM policies WHERE scope = ? AND tool_name = ?"


@functools.lru_cache(maxsize=300)
def pattern_policies(count: int) -> str:
    """SELECT for the pattern policies whose prefix is among `count` parameters."""
    return (
        # without INDEXED BY the planner walks policies_by_scope for the ORDER BY: every
        # policy of the scope; this way it probes one index entry per prefix, then sorts
        f"SELECT {_POLICY_SELECT} FROM policies INDEXED BY policies_patterns "
        f"WHERE scope = ? AND is_pattern = 1 AND prefix IN ({_marks(count)}) ORDER BY seq"
    )


POLICY_SEQ = "SELECT seq FROM policies WHERE id = ? AND scope = ?"
LIST_POLICIES = (
    f"SELECT {_POLICY_SELECT} FROM policies WHERE scope = ? AND seq > ? ORDER BY seq LIMIT ?"
)


def policy_params(policy: PermissionPolicy) -> Row:
    """The parameters of INSERT_POLICY; the pattern flag uses the engine's own test."""
    pattern = is_pattern(policy.tool_name)
    return (
        policy.id,
        scope(policy.user_id),
        policy.tool_name,
        policy.source,
        policy.created_at,
        pattern,
        literal_prefix(policy.tool_name) if pattern else None,
    )


def policy_from_row(row: Row) -> PermissionPolicy:
    """A PermissionPolicy from a row of `_POLICY_SELECT` (scope '' is the account)."""
    policy: PermissionPolicy = POLICY.decode((row[0], row[1] or None, *row[2:]))
    return policy


# -- tasks ------------------------------------------------------------------------------

INSERT_TASK = f"INSERT INTO tasks ({TASK.columns}) VALUES ({_marks(len(TASK.names))})"
GET_TASK = f"SELECT {TASK.columns} FROM tasks WHERE id = ?"

# -- events -----------------------------------------------------------------------------

INSERT_EVENT = f"INSERT INTO events ({EVENT.columns}) VALUES ({_marks(len(EVENT.names))})"
EVENT_SEQ = "SELECT seq FROM events WHERE id = ?"
LAST_EVENT = "SELECT seq, id FROM events ORDER BY seq DESC LIMIT 1"
LIST_EVENTS = f"SELECT {EVENT.columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
LIST_RUN_EVENTS = (
    f"SELECT {EVENT.columns} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# the change feed: which runs had events appended after a position in the log
EVENTS_SINCE = "SELECT seq, run_id FROM events WHERE seq > ? ORDER BY seq LIMIT ?"

# -- webhooks ---------------------------------------------------------------------------

GET_CURSOR = "SELECT event_id FROM webhook_cursors WHERE name = ?"
SET_CURSOR = (
    "INSERT INTO webhook_cursors (name, event_id) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id"
)

INSERT_ENDPOINT = (
    f"INSERT INTO webhook_endpoints ({ENDPOINT.columns}) VALUES ({_marks(len(ENDPOINT.names))})"
)
UPDATE_ENDPOINT = (
    "UPDATE webhook_endpoints SET "
    + ", ".join(
        f"{name} = ?{index}" for index, name in enumerate(ENDPOINT.names, start=1) if index > 1
    )
    + " WHERE id = ?1"
)
GET_ENDPOINT = f"SELECT {ENDPOINT.columns} FROM webhook_endpoints WHERE id = ?"
ENDPOINT_SEQ = "SELECT seq FROM webhook_endpoints WHERE id = ?"
LIST_ENDPOINTS = (
    f"SELECT {ENDPOINT.columns} FROM webhook_endpoints WHERE seq > ? ORDER BY seq LIMIT ?"
)
DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE id = ?"
DELETE_ENDPOINT_DELIVERIES = "DELETE FROM webhook_deliveries WHERE endpoint_id = ?"

SAVE_DELIVERY = (
    f"INSERT INTO webhook_deliveries ({DELIVERY.columns}) "
    f"VALUES ({_marks(len(DELIVERY.names))}) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in DELIVERY.names if name != "id")
)
GET_DELIVERY = f"SELECT {DELIVERY.columns} FROM webhook_deliveries WHERE id = ?"
DUE_DELIVERIES = (
    f"SELECT {DELIVERY.columns} FROM webhook_deliveries "
    "WHERE status = 'pending' AND ifnull(next_retry_at, 0.0) <= ? "
    "ORDER BY ifnull(next_retry_at, 0.0), seq LIMIT ?"
)
DELIVERY_SEQ = "SELECT seq FROM webhook_deliveries WHERE id = ? AND endpoint_id = ?"
LIST_DELIVERIES = (
    f"SELECT {DELIVERY.columns} FROM webhook_deliveries "
    "WHERE endpoint_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
LIST_DELIVERIES_OF_STATUS = (
    f"SELECT {DELIVERY.columns} FROM webhook_deliveries "
    "WHERE endpoint_id = ? AND seq > ? AND status = ? ORDER BY seq LIMIT ?"
)
