"""hitl-core: human-in-the-loop control of AI-agent runs as an embeddable, framework-free
library. `connect(url)` gives the engine; everything else here is its vocabulary."""

from ._agent import Agent
from ._catalog import Events, Permissions, Tasks
from ._clock import Clock, ManualClock, SystemClock
from ._engine import Hitl, connect
from ._errors import (
    ConflictError,
    HitlError,
    NotFoundError,
    StoreError,
    UnavailableError,
    ValidationError,
)
from ._outbox import Outgoing, Webhooks
from ._person import Runs
from ._records import (
    AnswerResult,
    ApproveResult,
    Event,
    Lease,
    Page,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    Task,
    ToolGate,
    WebhookDelivery,
    WebhookEndpoint,
)
from ._store import Store, Transaction

__all__ = [
    "Agent",
    "AnswerResult",
    "ApproveResult",
    "Clock",
    "ConflictError",
    "Event",
    "Events",
    "Hitl",
    "HitlError",
    "Lease",
    "ManualClock",
    "NotFoundError",
    "Outgoing",
    "Page",
    "PermissionPolicy",
    "PermissionRequest",
    "Permissions",
    "RequestStatus",
    "Run",
    "RunStatus",
    "Runs",
    "Store",
    "StoreError",
    "SystemClock",
    "Task",
    "Tasks",
    "ToolGate",
    "Transaction",
    "UnavailableError",
    "ValidationError",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Webhooks",
    "connect",
]

__version__ = "0.1.0"
