"""What a store adapter needs from hitl-core, and nothing more: the store port, the
records it keeps and their row form, the policy-matching helpers, the outbox's constants
and the errors. Adapters import from here (and `hitl_core`), never from `hitl_core._*`.
docs/adapters.md walks through writing one."""

from __future__ import annotations

import json
from typing import Any

from ._engine import open_store
from ._errors import (
    ConflictError,
    HitlError,
    NotFoundError,
    StoreError,
    UnavailableError,
    ValidationError,
)
from ._outbox import BACKOFF, MAX_ATTEMPTS
from ._outbox import CURSOR as OUTBOX_CURSOR
from ._outbox import START as OUTBOX_START
from ._policy import exactly, is_pattern, literal_prefix, matches, prefixes
from ._records import (
    Event,
    IdempotencyKey,
    Lease,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)
from ._rows import RECORDS, field_names, from_row, to_row
from ._store import ChangeListener, Store, Transaction

__all__ = [
    "BACKOFF",
    "MAX_ATTEMPTS",
    "OUTBOX_CURSOR",
    "OUTBOX_START",
    "RECORDS",
    "ChangeListener",
    "ConflictError",
    "Event",
    "HitlError",
    "IdempotencyKey",
    "Lease",
    "NotFoundError",
    "PermissionPolicy",
    "PermissionRequest",
    "RequestStatus",
    "Run",
    "RunStatus",
    "Store",
    "StoreError",
    "Task",
    "Transaction",
    "UnavailableError",
    "ValidationError",
    "WebhookDelivery",
    "WebhookEndpoint",
    "exactly",
    "field_names",
    "from_json",
    "from_row",
    "is_pattern",
    "literal_prefix",
    "matches",
    "open_store",
    "prefixes",
    "to_json",
    "to_row",
]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def to_json(value: Any) -> str:
    """Compact JSON text for a record's JSON value (as `to_row` gives it). Text stays
    UTF-8 rather than escaped, so a string that has no UTF-8 form fails where it is
    stored instead of being altered."""
    return _encode(value)


def from_json(text: str) -> Any:
    """The value `to_json` wrote."""
    return json.loads(text)
