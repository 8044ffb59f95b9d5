"""Row shapes of the SQLite store: the SQL it runs (module constants, so each is prepared
once per connection and then found in the `sqlite3` statement cache) and the compiled
conversions between rows and hitl-core records (`hitl_core.adapter.row_writer` and
`row_reader`): a record's fields are its columns, JSON values are JSON text, and
requests and events name their run by its seq."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from hitl_core.adapter import (
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    StoreError,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    field_names,
    from_json,
    is_pattern,
    literal_prefix,
    record_maker,
    row_reader,
    row_writer,
    to_json,
)

from ._schema import EVENT_SHAPES

__all__ = ["Codec", "scope"]

Row = tuple[Any, ...]


class Codec:
    """One record class's columns (`names`, in this order) and its conversions: `encode`
    a record to the parameters of an INSERT, `decode` a row of `seq, <names>` (the
    store's seq first, which `decode` skips). The fields in `json` are JSON text."""

    __slots__ = ("cls", "columns", "decode", "encode", "names")

    def __init__(self, cls: type[Any], names: Sequence[str], json: frozenset[str]) -> None:
        self.cls = cls
        self.names = tuple(names)
        self.columns = ", ".join(self.names)
        self.encode: Callable[[Any], Row] = row_writer(cls, self.names, json, int_bools=True)
        self.decode: Callable[[Row], Any] = row_reader(cls, self.names, json, offset=1)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def scope(user_id: str | None) -> str:
    """The stored scope key of a policy: the user id, or '' for the account scope."""
    return "" if user_id is None else user_id


# -- runs -------------------------------------------------------------------------------

RUN_JSON = frozenset({"metadata", "remembered_allow", "remembered_deny", "output", "checkpoint"})
# the table's column order: the large JSON values last
RUN = Codec(
    Run,
    [name for name in field_names(Run) if name not in RUN_JSON]
    + ["remembered_allow", "remembered_deny", "metadata", "output", "checkpoint"],
    RUN_JSON,
)
RUN_COLUMNS = f"seq, {RUN.columns}"
INSERT_RUN = f"INSERT INTO runs ({RUN.columns}) VALUES ({_marks(len(RUN.names))})"
GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"
RUN_SEQ = "SELECT seq FROM runs WHERE id = ?"
# id, user_id and created_at never change (the port says so)
RUN_UNCHANGING = frozenset({"id", "user_id", "created_at"})
RUN_POSITION = {name: index for index, name in enumerate(RUN.names)}
RUN_CHANGING_AT = tuple(RUN_POSITION[name] for name in RUN.names if name not in RUN_UNCHANGING)


@functools.lru_cache(maxsize=256)
def update_run(columns: tuple[str, ...]) -> str:
    """A compare-and-set of these columns: parameters are their values, then the run's
    seq and the version the caller read. Only changed columns are set, so SQLite
    rewrites no index whose columns did not change."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    return f"UPDATE runs SET {assignments} WHERE seq = ? AND version = ?"


UPDATE_RUN_BY_ID = (
    "UPDATE runs SET "
    + ", ".join(f"{name} = ?" for name in RUN.names if name not in RUN_UNCHANGING)
    + " WHERE id = ? AND version = ?"
)
RUN_CHANGING = tuple(name for name in RUN.names if name not in RUN_UNCHANGING)
ANY_DUE = "SELECT seq FROM runs WHERE deadline IS NOT NULL AND deadline <= ? LIMIT 1"
DUE_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE deadline IS NOT NULL AND deadline <= ? "
    "ORDER BY deadline, seq LIMIT ?"
)
CLAIMABLE_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_claimable "
    "WHERE status = 'running' AND ifnull(lease_expires, 0.0) <= ? "
    "ORDER BY ifnull(lease_expires, 0.0), seq LIMIT ?"
)
_TERMINAL = "(status = 'completed' OR status = 'failed' OR status = 'cancelled')"
ENDED_RUNS = (
    f"SELECT id FROM runs INDEXED BY runs_ended WHERE {_TERMINAL} AND updated_at < ? "
    "ORDER BY updated_at LIMIT ?"
)
# list_runs by (has user filter, has status filter); parameters: seq, [user], [status], limit
LIST_RUNS = {
    (False, False): f"SELECT {RUN_COLUMNS} FROM runs WHERE seq > ? ORDER BY seq LIMIT ?",
    (True, False): (
        f"SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_by_user "
        "WHERE seq > ? AND user_id = ? ORDER BY seq LIMIT ?"
    ),
    (False, True): (
        f"SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_by_status "
        "WHERE seq > ? AND status = ? ORDER BY seq LIMIT ?"
    ),
    (True, True): (
        f"SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_by_user "
        "WHERE seq > ? AND user_id = ? AND status = ? ORDER BY seq LIMIT ?"
    ),
}


@functools.lru_cache(maxsize=64)
def delete_runs(count: int) -> tuple[str, ...]:
    """The statements that delete `count` runs (named by id) and what belongs to them."""
    seqs = f"SELECT seq FROM runs WHERE id IN ({_marks(count)})"
    return (
        f"DELETE FROM requests WHERE run_seq IN ({seqs})",
        f"DELETE FROM events WHERE run_seq IN ({seqs})",
        f"DELETE FROM idempotency_keys WHERE run_id IN ({_marks(count)})",
        f"DELETE FROM webhook_deliveries WHERE run_id IN ({_marks(count)}) "
        "AND status != 'pending'",
        f"DELETE FROM runs WHERE id IN ({_marks(count)})",
    )


# -- idempotency keys -------------------------------------------------------------------

KEY = Codec(IdempotencyKey, field_names(IdempotencyKey), frozenset())
INSERT_KEY = f"INSERT INTO idempotency_keys ({KEY.columns}) VALUES ({_marks(len(KEY.names))})"
GET_KEY = f"SELECT 0, {KEY.columns} FROM idempotency_keys WHERE key = ?"

# -- requests ---------------------------------------------------------------------------

REQUEST_JSON = frozenset({"tool_input", "answers"})
_REQUEST_NAMES = [name for name in field_names(PermissionRequest) if name not in REQUEST_JSON]
REQUEST = Codec(PermissionRequest, [*_REQUEST_NAMES, "tool_input", "answers"], REQUEST_JSON)
# stored columns: run_seq in place of run_id
_STORED = ["run_seq" if name == "run_id" else name for name in REQUEST.names]
REQUEST_RUN = REQUEST.names.index("run_id")
INSERT_REQUEST = f"INSERT INTO requests ({', '.join(_STORED)}) VALUES ({_marks(len(_STORED))})"
# what a decision may change: the request's place and its run never change
REQUEST_UNCHANGING = frozenset({"request_id", "run_id", "kind", "tool_name", "created_at"})
REQUEST_POSITION = {name: index for index, name in enumerate(REQUEST.names)}


@functools.lru_cache(maxsize=64)
def update_request(columns: tuple[str, ...]) -> str:
    """Set these columns of the request whose seq is the last parameter."""
    return f"UPDATE requests SET {', '.join(f'{c} = ?' for c in columns)} WHERE seq = ?"


REQUEST_CHANGING = tuple(name for name in REQUEST.names if name not in REQUEST_UNCHANGING)
REQUEST_CHANGING_AT = tuple(REQUEST_POSITION[name] for name in REQUEST_CHANGING)
_REQUEST_SELECT = "q.seq, " + ", ".join(
    "r.id" if name == "run_id" else f"q.{name}" for name in REQUEST.names
)
_REQUESTS_OF = f"SELECT {_REQUEST_SELECT} FROM requests AS q JOIN runs AS r ON r.seq = q.run_seq"
GET_REQUEST = f"{_REQUESTS_OF} WHERE q.request_id = ?"
RUN_REQUESTS = f"{_REQUESTS_OF} WHERE r.id = ? ORDER BY q.seq"
RUN_PENDING_REQUESTS = f"{_REQUESTS_OF} WHERE r.id = ? AND q.status = 'pending' ORDER BY q.seq"
PENDING_REQUESTS = (
    f"SELECT {_REQUEST_SELECT} FROM requests AS q INDEXED BY requests_pending "
    "JOIN runs AS r ON r.seq = q.run_seq WHERE q.status = 'pending' ORDER BY q.seq LIMIT ?"
)

# -- policies ---------------------------------------------------------------------------

POLICY = Codec(PermissionPolicy, field_names(PermissionPolicy), frozenset())
EXACT_POLICY = row_reader(PermissionPolicy, POLICY.names, offset=2)
_POLICY_SELECT = "seq, id, nullif(scope, ''), tool_name, source, created_at"
INSERT_POLICY = (
    "INSERT INTO policies (id, scope, tool_name, source, created_at, is_pattern, prefix) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
DELETE_POLICY = "DELETE FROM policies WHERE id = ?"
GET_POLICY = f"SELECT {_POLICY_SELECT} FROM policies WHERE id = ?"
FIND_POLICY = f"SELECT {_POLICY_SELECT} FROM policies WHERE scope = ? AND tool_name = ?"


# candidate_policies: the exact policy of a scope and tool (parameters 1 and 2), and a
# marker row (0, 0) when the scope has any pattern policy at all, so that the lookup of
# patterns by prefix (an IN list, which makes SQLite build a temporary index) runs only
# for scopes that have patterns.
EXACT_POLICY_AND_PATTERNS = (
    f"SELECT 1, {_POLICY_SELECT} FROM policies WHERE scope = ?1 AND tool_name = ?2 "
    "UNION ALL SELECT 0, 0, NULL, NULL, NULL, NULL, NULL WHERE EXISTS ("
    "SELECT 1 FROM policies INDEXED BY policies_patterns WHERE scope = ?1 AND is_pattern = 1)"
)


@functools.lru_cache(maxsize=300)
def pattern_policies(count: int) -> str:
    """The pattern policies of a scope (parameter 1) whose literal prefix is among `count`
    more parameters, in creation order."""
    marks = ", ".join(f"?{index}" for index in range(2, count + 2))
    return (
        # INDEXED BY: it probes one index entry per prefix, never every pattern of the
        # scope (the planner would walk policies_by_scope for the ORDER BY), then sorts
        f"SELECT {_POLICY_SELECT} FROM policies INDEXED BY policies_patterns "
        f"WHERE scope = ?1 AND is_pattern = 1 AND prefix IN ({marks}) ORDER BY seq"
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


# -- tasks ------------------------------------------------------------------------------

TASK = Codec(Task, field_names(Task), frozenset())
INSERT_TASK = f"INSERT INTO tasks ({TASK.columns}) VALUES ({_marks(len(TASK.names))})"
GET_TASK = f"SELECT seq, {TASK.columns} FROM tasks WHERE id = ?"

# -- events -----------------------------------------------------------------------------

INSERT_EVENT = "INSERT INTO events (id, type, run_seq, created_at, data) VALUES (?, ?, ?, ?, ?)"
EVENT_SEQ = "SELECT seq FROM events WHERE id = ?"
LAST_EVENT = "SELECT seq, id FROM events ORDER BY seq DESC LIMIT 1"
_EVENT_SELECT = "SELECT e.id, e.type, r.id, e.created_at, e.data FROM events AS e"
LIST_EVENTS = (
    f"{_EVENT_SELECT} JOIN runs AS r ON r.seq = e.run_seq WHERE e.seq > ? ORDER BY e.seq LIMIT ?"
)
LIST_RUN_EVENTS = (
    f"{_EVENT_SELECT} JOIN runs AS r ON r.seq = e.run_seq "
    "WHERE r.id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?"
)
_SHAPE_NUMBERS = {shape: number for number, shape in enumerate(EVENT_SHAPES, start=1)}
_new_event = record_maker(Event)
_event_values = row_writer(Event, ("id", "type", "run_id", "created_at", "data"))


def event_params(event: Event) -> Row:
    """(id, type, run id, created_at, data) of an event: INSERT_EVENT's parameters but
    the run's seq in place of its id. Data of a usual shape (EVENT_SHAPES) is stored as
    a JSON array led by the shape's number; {} as NULL."""
    event_id, type_, run_id, at, data = _event_values(event)
    if not data:
        text = None
    else:
        number = _SHAPE_NUMBERS.get(tuple(data))
        text = to_json(data) if number is None else to_json([number, *data.values()])
    return event_id, type_, run_id, at, text


def _bad_event(value: object, what: str) -> StoreError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return StoreError("store_corrupt", f"a stored Event has {what}={shown}")


def event_from_row(row: Row) -> Event:
    """An Event from a row of (id, type, run id, created_at, data), every value checked."""
    event_id, type_, run_id, at, text = row
    if not isinstance(event_id, str) or not isinstance(type_, str) or not isinstance(run_id, str):
        raise _bad_event(row[:3], "id, type, run_id")
    if type(at) is not float:
        if not isinstance(at, int) or isinstance(at, bool):
            raise _bad_event(at, "created_at")
        at = float(at)
    if text is None:
        data: Any = {}
    else:
        data = from_json(text) if isinstance(text, str) else None
        if isinstance(data, list):
            number = data[0] if data else None
            shape = (
                EVENT_SHAPES[number - 1]
                if type(number) is int and 0 < number <= len(EVENT_SHAPES)
                else None
            )
            if shape is None or len(data) != len(shape) + 1:
                raise _bad_event(text, "data")
            data = dict(zip(shape, data[1:], strict=True))
        elif not isinstance(data, dict):
            raise _bad_event(text, "data")
    return _new_event(id=event_id, type=type_, run_id=run_id, created_at=at, data=data)


# -- webhooks ---------------------------------------------------------------------------

GET_CURSOR = "SELECT event_id FROM webhook_cursors WHERE name = ?"
SET_CURSOR = (
    "INSERT INTO webhook_cursors (name, event_id) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id"
)

ENDPOINT = Codec(WebhookEndpoint, field_names(WebhookEndpoint), frozenset({"events"}))
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
GET_ENDPOINT = f"SELECT seq, {ENDPOINT.columns} FROM webhook_endpoints WHERE id = ?"
ENDPOINT_SEQ = "SELECT seq FROM webhook_endpoints WHERE id = ?"
LIST_ENDPOINTS = (
    f"SELECT seq, {ENDPOINT.columns} FROM webhook_endpoints WHERE seq > ? ORDER BY seq LIMIT ?"
)
DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE id = ?"
DELETE_ENDPOINT_DELIVERIES = "DELETE FROM webhook_deliveries WHERE endpoint_id = ?"

DELIVERY = Codec(WebhookDelivery, field_names(WebhookDelivery), frozenset())
SAVE_DELIVERY = (
    f"INSERT INTO webhook_deliveries ({DELIVERY.columns}) "
    f"VALUES ({_marks(len(DELIVERY.names))}) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in DELIVERY.names if name != "id")
)
_DELIVERY_COLUMNS = f"seq, {DELIVERY.columns}"
GET_DELIVERY = f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?"
DUE_DELIVERIES = (
    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "
    "WHERE status = 'pending' AND ifnull(next_retry_at, 0.0) <= ? "
    "ORDER BY ifnull(next_retry_at, 0.0), seq LIMIT ?"
)
DELIVERY_SEQ = "SELECT seq FROM webhook_deliveries WHERE id = ? AND endpoint_id = ?"
LIST_DELIVERIES = (
    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "
    "WHERE endpoint_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
LIST_DELIVERIES_OF_STATUS = (
    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "
    "WHERE endpoint_id = ? AND seq > ? AND status = ? ORDER BY seq LIMIT ?"
)
