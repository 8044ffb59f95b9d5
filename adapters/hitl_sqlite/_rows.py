"""Row shapes of the SQLite store: the SQL it runs (prepared once, as module constants)
and the conversions between rows and hitl-core records (`*_params`, `*_from_row`)."""

from __future__ import annotations

import functools
import json
from typing import Any

from hitl_core._policy import is_pattern, literal_prefix
from hitl_core._records import (
    Event,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    fresh,
)

__all__ = [
    "delivery_from_row",
    "delivery_params",
    "endpoint_from_row",
    "endpoint_params",
    "event_from_row",
    "event_params",
    "policy_from_row",
    "policy_params",
    "request_from_row",
    "request_params",
    "run_from_row",
    "run_params",
    "scope",
    "task_from_row",
    "task_params",
]

# ensure_ascii off: text is stored as UTF-8, so a string that has no UTF-8 form (one
# holding surrogates) is refused here as in plain columns, never silently altered
# (JSON would merge an escaped surrogate pair into one character).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.loads
_EMPTY = "[]"

Row = tuple[Any, ...]


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value)


def _from_json(text: str | None) -> Any:
    return None if text is None else _decode(text)


def _names(names: frozenset[str]) -> str:
    return _encode(sorted(names)) if names else _EMPTY


def _name_set(text: str) -> frozenset[str]:
    return frozenset() if text == _EMPTY else frozenset(_decode(text))


def scope(user_id: str | None) -> str:
    """The stored scope key of a policy: the user id, or '' for the account scope."""
    return "" if user_id is None else user_id


# -- runs -------------------------------------------------------------------------------

_RUN_COLUMNS = (
    "id, status, human_in_the_loop, permission_mode, user_id, task_id, metadata, "
    "input_timeout, suspended, created_at, updated_at, plan_approved, plan_revisions, "
    "remembered_allow, remembered_deny, deadline, output, error, version"
)
INSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES "
    "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
)
# Compare-and-set: ?20 is the version the caller read.
UPDATE_RUN = (
    # id, user_id and created_at never change (the port says so): SET on user_id would
    # rewrite runs_by_user on every update
    "UPDATE runs SET status = ?2, human_in_the_loop = ?3, permission_mode = ?4, "
    "task_id = ?6, metadata = ?7, input_timeout = ?8, suspended = ?9, "
    "updated_at = ?11, plan_approved = ?12, plan_revisions = ?13, "
    "remembered_allow = ?14, remembered_deny = ?15, "
    "deadline = ?16, output = ?17, error = ?18, version = ?19 "
    "WHERE id = ?1 AND version = ?20"
)
GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?"
RUN_SEQ = "SELECT seq FROM runs WHERE id = ?"
DUE_RUNS = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE deadline IS NOT NULL AND deadline <= ? "
    "ORDER BY deadline, seq LIMIT ?"
)
# list_runs by (has user filter, has status filter); parameters: seq, [user], [status], limit
LIST_RUNS = {
    (False, False): f"SELECT {_RUN_COLUMNS} FROM runs WHERE seq > ? ORDER BY seq LIMIT ?",
    (True, False): (
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE seq > ? AND user_id = ? ORDER BY seq LIMIT ?"
    ),
    (False, True): (
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE seq > ? AND status = ? ORDER BY seq LIMIT ?"
    ),
    (True, True): (
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE seq > ? AND user_id = ? AND status = ? "
        "ORDER BY seq LIMIT ?"
    ),
}


def run_params(run: Run) -> tuple[Any, ...]:
    """The parameters ?1..?19 of INSERT_RUN and UPDATE_RUN."""
    return (
        run.id,
        run.status.value,
        run.human_in_the_loop,
        run.permission_mode,
        run.user_id,
        run.task_id,
        _json(run._metadata),  # the record's own dicts, read without a copy: encoded at once
        run.input_timeout,
        run.suspended,
        run.created_at,
        run.updated_at,
        run.plan_approved,
        run.plan_revisions,
        _names(run.remembered_allow),
        _names(run.remembered_deny),
        run.deadline,
        _json(run._output),
        run.error,
        run.version,
    )


def run_from_row(row: Row) -> Run:
    """A Run from a row of `_RUN_COLUMNS` (decoded JSON is fresh: no converter copies it)."""
    return fresh(
        Run,
        id=row[0],
        status=RunStatus(row[1]),
        human_in_the_loop=bool(row[2]),
        permission_mode=row[3],
        user_id=row[4],
        task_id=row[5],
        metadata=_from_json(row[6]),
        input_timeout=row[7],
        suspended=bool(row[8]),
        created_at=row[9],
        updated_at=row[10],
        plan_approved=bool(row[11]),
        plan_revisions=row[12],
        remembered_allow=_name_set(row[13]),
        remembered_deny=_name_set(row[14]),
        deadline=row[15],
        output=_from_json(row[16]),
        error=row[17],
        version=row[18],
    )


# -- requests ---------------------------------------------------------------------------

_REQUEST_COLUMNS = (
    "request_id, run_id, kind, tool_name, tool_input, status, created_at, resolved_at, "
    "answers, decision, reason, remember, actor, source, resumed"
)
SAVE_REQUEST = (
    f"INSERT INTO requests ({_REQUEST_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    # only what a decision changes: SET on run_id would rewrite requests_by_run needlessly
    "ON CONFLICT (request_id) DO UPDATE SET tool_input = excluded.tool_input, "
    "status = excluded.status, resolved_at = excluded.resolved_at, answers = excluded.answers, "
    "decision = excluded.decision, reason = excluded.reason, remember = excluded.remember, "
    "actor = excluded.actor, source = excluded.source, resumed = excluded.resumed"
)
GET_REQUEST = f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?"
RUN_REQUESTS = f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE run_id = ? ORDER BY seq"
RUN_PENDING_REQUESTS = (
    f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE run_id = ? AND status = 'pending' ORDER BY seq"
)
PENDING_REQUESTS = (
    f"SELECT {_REQUEST_COLUMNS} FROM requests INDEXED BY requests_pending "
    "WHERE status = 'pending' ORDER BY seq LIMIT ?"
)


def request_params(request: PermissionRequest) -> tuple[Any, ...]:
    """The parameters of SAVE_REQUEST."""
    return (
        request.request_id,
        request.run_id,
        request.kind,
        request.tool_name,
        _encode(request._tool_input),
        request.status.value,
        request.created_at,
        request.resolved_at,
        _json(request._answers),
        request.decision,
        request.reason,
        request.remember,
        request.actor,
        request.source,
        request.resumed,
    )


def request_from_row(row: Row) -> PermissionRequest:
    """A PermissionRequest from a row of `_REQUEST_COLUMNS`."""
    return fresh(
        PermissionRequest,
        request_id=row[0],
        run_id=row[1],
        kind=row[2],
        tool_name=row[3],
        tool_input=_decode(row[4]),
        status=RequestStatus(row[5]),
        created_at=row[6],
        resolved_at=row[7],
        answers=_from_json(row[8]),
        decision=row[9],
        reason=row[10],
        remember=bool(row[11]),
        actor=row[12],
        source=row[13],
        resumed=bool(row[14]),
    )


# -- policies ---------------------------------------------------------------------------

_POLICY_COLUMNS = "id, scope, tool_name, source, created_at"
INSERT_POLICY = (
    "INSERT INTO policies (id, scope, tool_name, source, created_at, is_pattern, prefix) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
DELETE_POLICY = "DELETE FROM policies WHERE id = ?"
GET_POLICY = f"SELECT {_POLICY_COLUMNS} FROM policies WHERE id = ?"
FIND_POLICY = f"SELECT {_POLICY_COLUMNS} FROM policies WHERE scope = ? AND tool_name = ?"
MAX_PREFIXES = 500  # well under SQLite's host-parameter limit
ALL_PATTERN_POLICIES = (
    f"SELECT {_POLICY_COLUMNS} FROM policies WHERE scope = ? AND is_pattern = 1 ORDER BY seq"
)


@functools.lru_cache(maxsize=MAX_PREFIXES + 1)
def pattern_policies(count: int) -> str:
    """SELECT for the pattern policies whose prefix is among `count` parameters."""
    marks = ", ".join("?" * count)
    return (
        # without INDEXED BY the planner walks policies_by_scope for the ORDER BY: every
        # policy of the scope; this way it probes one index entry per prefix, then sorts
        f"SELECT {_POLICY_COLUMNS} FROM policies INDEXED BY policies_patterns "
        f"WHERE scope = ? AND is_pattern = 1 AND prefix IN ({marks}) ORDER BY seq"
    )


POLICY_SEQ = "SELECT seq FROM policies WHERE id = ? AND scope = ?"
LIST_POLICIES = (
    f"SELECT {_POLICY_COLUMNS} FROM policies WHERE scope = ? AND seq > ? ORDER BY seq LIMIT ?"
)


def policy_params(policy: PermissionPolicy) -> tuple[Any, ...]:
    """The parameters of INSERT_POLICY; the pattern flag uses the engine's own test."""
    return (
        policy.id,
        scope(policy.user_id),
        policy.tool_name,
        policy.source,
        policy.created_at,
        is_pattern(policy.tool_name),
        literal_prefix(policy.tool_name) if is_pattern(policy.tool_name) else None,
    )


def policy_from_row(row: Row) -> PermissionPolicy:
    """A PermissionPolicy from a row of `_POLICY_COLUMNS`."""
    return PermissionPolicy(
        id=row[0],
        user_id=row[1] or None,
        tool_name=row[2],
        source=row[3],
        created_at=row[4],
    )


# -- tasks ------------------------------------------------------------------------------

_TASK_COLUMNS = "id, name, human_in_the_loop, permission_mode, user_id, created_at"
INSERT_TASK = f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
GET_TASK = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?"


def task_params(task: Task) -> tuple[Any, ...]:
    """The parameters of INSERT_TASK."""
    return (
        task.id,
        task.name,
        task.human_in_the_loop,
        task.permission_mode,
        task.user_id,
        task.created_at,
    )


def task_from_row(row: Row) -> Task:
    """A Task from a row of `_TASK_COLUMNS`."""
    return Task(
        id=row[0],
        name=row[1],
        human_in_the_loop=None if row[2] is None else bool(row[2]),
        permission_mode=row[3],
        user_id=row[4],
        created_at=row[5],
    )


# -- events -----------------------------------------------------------------------------

_EVENT_COLUMNS = "id, type, run_id, created_at, data"
INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
EVENT_SEQ = "SELECT seq FROM events WHERE id = ?"
LAST_EVENT_ID = "SELECT id FROM events ORDER BY seq DESC LIMIT 1"
LIST_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
LIST_RUN_EVENTS = (
    f"SELECT {_EVENT_COLUMNS} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)


def event_params(event: Event) -> tuple[Any, ...]:
    """The parameters of INSERT_EVENT."""
    return (event.id, event.type, event.run_id, event.created_at, _encode(event._data))


def event_from_row(row: Row) -> Event:
    """An Event from a row of `_EVENT_COLUMNS`."""
    return fresh(
        Event, id=row[0], type=row[1], run_id=row[2], created_at=row[3], data=_decode(row[4])
    )


# -- webhooks ---------------------------------------------------------------------------

GET_CURSOR = "SELECT event_id FROM webhook_cursors WHERE name = ?"
SET_CURSOR = (
    "INSERT INTO webhook_cursors (name, event_id) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id"
)

_ENDPOINT_COLUMNS = "id, url, events, secret, active, created_at, updated_at"
INSERT_ENDPOINT = (
    f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_ENDPOINT = (
    "UPDATE webhook_endpoints SET url = ?2, events = ?3, secret = ?4, active = ?5, "
    "created_at = ?6, updated_at = ?7 WHERE id = ?1"
)
GET_ENDPOINT = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?"
ENDPOINT_SEQ = "SELECT seq FROM webhook_endpoints WHERE id = ?"
LIST_ENDPOINTS = (
    f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE seq > ? ORDER BY seq LIMIT ?"
)
DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE id = ?"
DELETE_ENDPOINT_DELIVERIES = "DELETE FROM webhook_deliveries WHERE endpoint_id = ?"


def endpoint_params(endpoint: WebhookEndpoint) -> tuple[Any, ...]:
    """The parameters of INSERT_ENDPOINT and UPDATE_ENDPOINT."""
    return (
        endpoint.id,
        endpoint.url,
        _encode(list(endpoint.events)),
        endpoint.secret,
        endpoint.active,
        endpoint.created_at,
        endpoint.updated_at,
    )


def endpoint_from_row(row: Row) -> WebhookEndpoint:
    """A WebhookEndpoint from a row of `_ENDPOINT_COLUMNS`."""
    return WebhookEndpoint(
        id=row[0],
        url=row[1],
        events=_decode(row[2]),
        secret=row[3],
        active=bool(row[4]),
        created_at=row[5],
        updated_at=row[6],
    )


_DELIVERY_COLUMNS = (
    "id, endpoint_id, event_id, event_type, run_id, payload, status, attempts, "
    "response_status_code, response_body, error, next_retry_at, created_at, updated_at"
)
SAVE_DELIVERY = (
    f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET endpoint_id = excluded.endpoint_id, "
    "event_id = excluded.event_id, event_type = excluded.event_type, "
    "run_id = excluded.run_id, payload = excluded.payload, status = excluded.status, "
    "attempts = excluded.attempts, response_status_code = excluded.response_status_code, "
    "response_body = excluded.response_body, error = excluded.error, "
    "next_retry_at = excluded.next_retry_at, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at"
)
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


def delivery_params(delivery: WebhookDelivery) -> tuple[Any, ...]:
    """The parameters of SAVE_DELIVERY."""
    return (
        delivery.id,
        delivery.endpoint_id,
        delivery.event_id,
        delivery.event_type,
        delivery.run_id,
        delivery.payload,
        delivery.status,
        delivery.attempts,
        delivery.response_status_code,
        delivery.response_body,
        delivery.error,
        delivery.next_retry_at,
        delivery.created_at,
        delivery.updated_at,
    )


def delivery_from_row(row: Row) -> WebhookDelivery:
    """A WebhookDelivery from a row of `_DELIVERY_COLUMNS`."""
    return WebhookDelivery(
        id=row[0],
        endpoint_id=row[1],
        event_id=row[2],
        event_type=row[3],
        run_id=row[4],
        payload=row[5],
        status=row[6],
        attempts=row[7],
        response_status_code=row[8],
        response_body=row[9],
        error=row[10],
        next_retry_at=row[11],
        created_at=row[12],
        updated_at=row[13],
    )
