"""The wire format of `hitl serve`: integer ids for hitl-core's string ids (a stateless
bijection), ISO times, and the hosted API's JSON shapes for runs, requests, policies,
tasks, webhook endpoints and deliveries."""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

from hitl_core import (
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "DELIVERY",
    "POLICY",
    "RUN",
    "TASK",
    "WEBHOOK",
    "Unmappable",
    "WireIds",
    "core_id",
    "delivery",
    "iso",
    "policy",
    "request",
    "run",
    "task",
    "webhook",
    "wire_id",
    "wire_safe_ids",
]

RUN, POLICY, TASK, WEBHOOK, DELIVERY = "run", "pol", "task", "whk", "dlv"

_HEX = re.compile(r"[0-9a-f]{24}")
_DECIMAL = re.compile(r"[0-9]{1,29}")
_LIMIT = 1 << 96
_JS_SAFE = (1 << 53) - 1


class Unmappable(Exception):
    """A stored id that is not `prefix_<24 hex digits>` (made with `connect(ids=...)`),
    which the HTTP API cannot express as an integer."""


_NUMBERED = frozenset({RUN, POLICY, TASK, WEBHOOK, DELIVERY})


def wire_safe_ids(prefix: str) -> str:
    """The id source of the server's engine: `prefix_` and 24 hex digits like the core's
    own ids. Ids shown as integers are drawn below 2**53, so they are exact in JavaScript
    too; the rest (requests, events) keep the core's full 96 random bits."""
    if prefix in _NUMBERED:
        return f"{prefix}_{secrets.randbelow(_JS_SAFE) + 1:024x}"
    return f"{prefix}_{secrets.token_hex(12)}"


class WireIds:
    """`wire_safe_ids` as the server's engine's id source, remembering in each thread the
    last run id it made: after `runs.create` returns, the run is new exactly when its id
    is that one (a run an Idempotency-Key already made was not made in this call)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, prefix: str) -> str:
        made = wire_safe_ids(prefix)
        if prefix == RUN:
            self._local.run = made
        return made

    def forget(self) -> None:
        """Forget this thread's last run id (call before creating a run)."""
        self._local.run = None

    def made(self, run_id: str) -> bool:
        """Whether this thread's last run id, since `forget`, is `run_id`."""
        return getattr(self._local, "run", None) == run_id


def wire_id(core: str) -> int:
    """The integer the API shows for a core id: its 24 hex digits read as a number."""
    _, _, digits = core.partition("_")
    if not _HEX.fullmatch(digits):
        raise Unmappable(f"the id {core!r} has no integer form on the wire")
    return int(digits, 16)


def optional_wire_id(core: str | None) -> int | None:
    """`wire_id`, passing None through."""
    return None if core is None else wire_id(core)


def core_id(prefix: str, raw: object) -> str | None:
    """The core id a path or cursor names: a decimal wire id, or the core id itself
    (webhook bodies carry core ids). None when it names nothing of this kind."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    if _DECIMAL.fullmatch(raw):
        number = int(raw)
        return f"{prefix}_{number:024x}" if 0 < number < _LIMIT else None
    head, _, digits = raw.partition("_")
    return raw if head == prefix and _HEX.fullmatch(digits) else None


def iso(seconds: float | None) -> str | None:
    """An ISO 8601 UTC time with milliseconds, as the hosted API writes them."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def run(record: Run, *, teammate_id: int | None = None) -> dict[str, Any]:
    """A run as the SDK's `Run` reads it, plus hitl-core's `human_in_the_loop`,
    `suspended` and `input_timeout`. `teammate_id` is the one it was created with."""
    return {
        "id": wire_id(record.id),
        "teammate_id": teammate_id,
        "status": record.status.value,
        "output": _text(record.output),
        "error": record.error,
        "user_id": record.user_id,
        "metadata": record.metadata,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "started_at": iso(record.created_at),
        "permission_mode": record.permission_mode,
        "task_id": optional_wire_id(record.task_id),
        "human_in_the_loop": record.human_in_the_loop,
        "suspended": record.suspended,
        "input_timeout": record.input_timeout,
    }


def request(
    record: PermissionRequest,
    *,
    input_timeout: float,
    resumed: bool | None = None,
    remembered: bool | None = None,
    applied: bool | None = None,
) -> dict[str, Any]:
    """A request as the SDK's `PermissionRequest` reads it. Answered questions and plans
    carry their answers in `tool_input["answers"]`, as the hosted API does. `applied`
    (decisions only) is False when the request already had that decision: `actor`,
    `reason` and `resolved_at` then say who decided first."""
    tool_input = record.tool_input
    if record.answers is not None:
        tool_input["answers"] = record.answers
    if remembered is None and record.kind == "tool" and record.resolved_at is not None:
        remembered = record.status is RequestStatus.ALLOWED and record.remember
    return {
        "request_id": record.request_id,
        "run_id": wire_id(record.run_id),
        "kind": record.kind,
        "tool_name": record.tool_name,
        "tool_input": tool_input,
        "status": record.status.value,
        "created_at": iso(record.created_at),
        "resolved_at": iso(record.resolved_at),
        "decision": record.decision,
        "reason": record.reason,
        "remember": record.remember,
        "actor": record.actor,
        "source": record.source,
        "is_plan_approval": record.is_plan_approval,
        "resumed": resumed,
        "remembered": remembered,
        "applied": applied,
        "auto_resolved": False,
        "can_remember": record.kind == "tool",
        "timeout_seconds": math.ceil(input_timeout),
    }


def policy(record: PermissionPolicy) -> dict[str, Any]:
    """A pre-approval policy as the SDK's `PermissionPolicy` reads it."""
    return {
        "id": wire_id(record.id),
        "user_id": record.user_id,
        "tool_name": record.tool_name,
        "source": record.source,
        "created_at": iso(record.created_at),
    }


def task(record: Task, extras: dict[str, Any] | None) -> dict[str, Any]:
    """A task as the SDK's `Task` reads it; `extras` holds what the core does not keep
    (instructions, teammate, tools, expected output, goals)."""
    more = extras or {}
    return {
        "id": wire_id(record.id),
        "teammate_id": more.get("teammate_id"),
        "name": record.name,
        "instructions": more.get("instructions", record.name),
        "tools": more.get("tools", []),
        "expected_output": more.get("expected_output"),
        "goals": more.get("goals"),
        "user_id": record.user_id,
        "status": "enabled",
        "created_at": iso(record.created_at),
        "updated_at": iso(record.created_at),
        "permission_mode": record.permission_mode,
        "human_in_the_loop": record.human_in_the_loop,
    }


def webhook(record: WebhookEndpoint) -> dict[str, Any]:
    """A webhook endpoint as the SDK's `Webhook` reads it (the secret as the core gives
    it: whole on create and rotation, masked elsewhere)."""
    return {
        "id": wire_id(record.id),
        "url": record.url,
        "events": list(record.events),
        "secret": record.secret,
        "active": record.active,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "user_id": None,
    }


def delivery(record: WebhookDelivery) -> dict[str, Any]:
    """A delivery as the SDK's `WebhookDelivery` reads it, plus `error`."""
    return {
        "id": wire_id(record.id),
        "webhook_endpoint_id": wire_id(record.endpoint_id),
        "event_type": record.event_type,
        "event_id": record.event_id,
        "run_id": wire_id(record.run_id),
        "status": record.status,
        "response_status_code": record.response_status_code,
        "response_body": record.response_body,
        "attempts": record.attempts,
        "error": record.error,
        "next_retry_at": iso(record.next_retry_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }
