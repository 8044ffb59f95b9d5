"""The store port: the small interface every storage adapter implements.

The engine opens one transaction per public call, reads what it needs, and writes the
whole result before the transaction ends; an adapter makes that all-or-nothing and keeps
concurrent writers from losing each other's work (see `Store.transaction`). Adapters
raise only HitlError subclasses: StoreError for what cannot work, UnavailableError for
what may work if tried again (busy, unreachable, connection lost)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager

from ._records import (
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = ["ChangeListener", "Store", "Transaction"]

ChangeListener = Callable[[Collection[str] | None], None]
"""Called by a store after a transaction of any process committed events: with the ids
of the runs those events belong to, or with None when the store cannot tell which."""


class Transaction(abc.ABC):
    """Reads and writes inside one all-or-nothing transaction.

    Lists are oldest first (insertion order). Writes are visible to later reads of the
    same transaction. `limit` arguments are already validated (1..1000). The engine only
    inserts fresh ids and only updates or deletes what it has just read in the same
    transaction; a record's `id`, `run_id`, `user_id` and `created_at` never change
    after insertion."""

    # runs
    @abc.abstractmethod
    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None."""

    @abc.abstractmethod
    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        """Up to `limit` runs after the run `starting_after` (None: from the first), filtered
        by user (None: every user) and status; with whether more follow. None when the
        cursor names no run."""

    @abc.abstractmethod
    def due_runs(self, now: float, limit: int) -> list[Run]:
        """Up to `limit` runs whose `deadline` is set and <= now, earliest deadline first,
        equal deadlines in the order the runs were created."""

    @abc.abstractmethod
    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        """Up to `limit` runs with status `running` whose lease is absent or has lapsed
        (`lease_expires` is None or <= now): runs that need a worker. Earliest
        `lease_expires` first (None counting as 0), ties in the order the runs were
        created."""

    @abc.abstractmethod
    def ended_runs(self, before: float, limit: int) -> list[str]:
        """The ids of up to `limit` runs in a terminal status (completed, failed,
        cancelled) whose `updated_at` is < `before`, earliest `updated_at` first."""

    @abc.abstractmethod
    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Remove these runs with their requests, events and idempotency keys, and those
        of their webhook deliveries that are no longer pending. An id of a run no longer
        stored is allowed: its remaining finished deliveries go (a delivery that was still
        pending when its run was deleted goes this way once it is over)."""

    @abc.abstractmethod
    def insert_run(self, run: Run) -> None:
        """Store a new run."""

    @abc.abstractmethod
    def update_run(self, run: Run) -> None:
        """Replace a stored run whose stored version is `run.version - 1`; raise
        ConflictError('concurrent_update') when it is not (optimistic concurrency)."""

    # requests
    @abc.abstractmethod
    def get_request(self, request_id: str) -> PermissionRequest | None:
        """The request with this id, or None."""

    @abc.abstractmethod
    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        """The run's requests (or only its pending ones), oldest first."""

    @abc.abstractmethod
    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        """Up to `limit` pending requests across all runs, oldest first."""

    @abc.abstractmethod
    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        """Insert new requests or replace stored ones with the same request_id."""

    # policies
    @abc.abstractmethod
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        """The policy of this scope for exactly this tool name or pattern, or None."""

    @abc.abstractmethod
    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        """The policy with this id, or None."""

    @abc.abstractmethod
    def candidate_policies(self, user_id: str | None, tool_name: str) -> list[PermissionPolicy]:
        """Policies of this scope that may cover `tool_name`: the exact one first, then,
        in creation order, every pattern policy (`is_pattern`) whose literal prefix
        (`literal_prefix`) is a prefix of `tool_name`. The engine does the matching, so a
        store may also return other pattern policies of the scope."""

    @abc.abstractmethod
    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        """A page of this scope's policies, as `list_runs` (None: unknown cursor)."""

    @abc.abstractmethod
    def insert_policy(self, policy: PermissionPolicy) -> None:
        """Store a new policy (its scope and tool are known not to be stored yet)."""

    @abc.abstractmethod
    def delete_policy(self, policy_id: str) -> None:
        """Remove a stored policy."""

    # idempotency keys of runs.create
    @abc.abstractmethod
    def get_idempotency_key(self, key: str) -> IdempotencyKey | None:
        """The stored key, or None."""

    @abc.abstractmethod
    def insert_idempotency_key(self, key: IdempotencyKey) -> None:
        """Store a new key (the engine has just seen that it is not stored)."""

    # tasks
    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task | None:
        """The task with this id, or None."""

    @abc.abstractmethod
    def insert_task(self, task: Task) -> None:
        """Store a new task."""

    # events
    @abc.abstractmethod
    def append_events(self, events: Sequence[Event]) -> None:
        """Append events after every stored one, in the order given."""

    @abc.abstractmethod
    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        """Up to `limit` events recorded after the event `after` (None: from the first),
        optionally of one run, in recording order. None when `after` names no event."""

    @abc.abstractmethod
    def last_event_id(self) -> str | None:
        """The id of the newest event, or None when there is none."""

    # webhooks
    @abc.abstractmethod
    def get_cursor(self, name: str) -> str | None:
        """A named position in the event log (the webhook outbox's), or None."""

    @abc.abstractmethod
    def set_cursor(self, name: str, event_id: str) -> None:
        """Store a named position in the event log."""

    @abc.abstractmethod
    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The webhook endpoint with this id (secret whole), or None."""

    @abc.abstractmethod
    def list_endpoints(
        self, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool] | None:
        """A page of endpoints, oldest first (None: unknown cursor)."""

    @abc.abstractmethod
    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint."""

    @abc.abstractmethod
    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Replace a stored endpoint."""

    @abc.abstractmethod
    def delete_endpoint(self, endpoint_id: str) -> None:
        """Remove an endpoint and every delivery to it."""

    @abc.abstractmethod
    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        """The delivery with this id, or None."""

    @abc.abstractmethod
    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        """Insert new deliveries or replace stored ones with the same id."""

    @abc.abstractmethod
    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        """Up to `limit` pending deliveries with next_retry_at <= now, earliest first, ties
        in creation order (a missing next_retry_at counts as 0)."""

    @abc.abstractmethod
    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        """A page of one endpoint's deliveries (optionally of one status), oldest first
        (None: unknown cursor)."""


class Store(abc.ABC):
    """A storage backend: hands out transactions, one at a time for writers."""

    @abc.abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
        """Open a transaction; it commits when the block ends normally and rolls back
        when it raises (nothing of it stays). A read transaction sees committed data
        only. The engine never nests transactions.

        Write transactions must not lose each other's work. A store may simply let one
        writer in at a time (memory, SQLite). A store that lets writers run at once
        (PostgreSQL) must instead detect every conflict the engine can meet and raise
        ConflictError('concurrent_update') for it, so the engine runs the call again:
        `update_run` compares versions; inserting a policy whose (scope, tool) or a key
        that another transaction stored meanwhile conflicts; and in a write transaction,
        `get_cursor` and `due_deliveries` hold what they return until the end of the
        transaction, so two webhook workers never fan out or claim the same thing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's resources; safe to call twice."""

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        """Call `listener` after every committed transaction of any engine, thread or
        process that appended events (see `ChangeListener`), until the returned function
        is called. None (this default) means the store has no such feed: an engine then
        learns of other processes' decisions by re-reading at intervals. Listeners are
        called from a thread of the store's own; they must return quickly."""
        return None
