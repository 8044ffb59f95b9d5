"""The in-memory store behind `memory://`: plain dicts under one lock, with an undo log
so a transaction that raises leaves everything as it was. Thread-safe, not durable."""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hitl_core import ConflictError, StoreError, ValidationError
from hitl_core._policy import is_pattern, literal_prefix, prefixes
from hitl_core._records import (
    Event,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)
from hitl_core._store import Store, Transaction

__all__ = ["MemoryStore", "open_store"]


def open_store(url: str) -> MemoryStore:
    """Entry point for `memory://`: a fresh, empty store on every call."""
    if url.rstrip("/") != "memory:":
        raise ValidationError("invalid_url", f"a memory store URL is 'memory://'; got {url!r}")
    return MemoryStore()


def _page(
    ids: Sequence[str], starting_after: str | None, limit: int
) -> tuple[list[str], bool] | None:
    start = 0
    if starting_after is not None:
        try:
            start = ids.index(starting_after) + 1
        except ValueError:
            return None
    chosen = list(ids[start : start + limit])
    return chosen, start + limit < len(ids)


def _append(lists: dict[str, list[Any]], key: str, item: Any) -> None:
    """Append to the list under `key`, making a one-item list first: an empty list that
    grows takes room for four, and most runs are short (memory per paused run counts)."""
    found = lists.get(key)
    if found is None:
        lists[key] = [item]
    else:
        found.append(item)


class _Transaction:
    """One transaction of a MemoryStore (nested ones share the lock and roll back alone)."""

    __slots__ = ("outer", "store")

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __enter__(self) -> MemoryStore:
        store = self.store
        store._lock.acquire()
        self.outer, store._undo = store._undo, []
        return store

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        store = self.store
        inner = store._undo
        assert inner is not None
        try:
            if kind is not None:
                for undo in reversed(inner):
                    undo()
            elif self.outer is not None:
                self.outer.extend(inner)  # a committed inner block still rolls back with its outer
        finally:
            store._undo = self.outer
            store._lock.release()


class MemoryStore(Store, Transaction):
    """Everything in process memory. The store is its own transaction object: a
    transaction holds the lock, and writes log their inverse for rollback."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._undo: list[Callable[[], None]] | None = None
        self._runs: dict[str, Run] = {}
        self._deadlines: list[tuple[float, int, str]] = []  # (deadline, creation index, id)
        self._creation: dict[str, int] = {}
        self._requests: dict[str, PermissionRequest] = {}
        self._run_requests: dict[str, list[str]] = {}
        self._counter = itertools.count()  # creation order of runs and requests
        self._pending: dict[str, int] = {}  # pending request id -> creation order
        self._policies: dict[str, PermissionPolicy] = {}
        self._policy_order: dict[str, int] = {}
        self._policy_counter = itertools.count()
        self._scope_tools: dict[tuple[str | None, str], str] = {}
        self._scope_policies: dict[str | None, dict[str, None]] = {}
        # scope -> literal prefix -> pattern policy ids (insertion order)
        self._scope_patterns: dict[str | None, dict[str, dict[str, None]]] = {}
        self._tasks: dict[str, Task] = {}
        self._events: list[Event] = []
        self._event_index: dict[str, int] = {}
        self._run_events: dict[str, list[int]] = {}
        self._cursors: dict[str, str] = {}
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._deliveries: dict[str, WebhookDelivery] = {}
        self._pending_deliveries: dict[str, None] = {}

    # -- Store -------------------------------------------------------------------
    def transaction(self, *, write: bool) -> _Transaction:
        """Hold the lock for the block; undo every write if the block raises."""
        return _Transaction(self)

    def close(self) -> None:
        """Nothing to release."""

    def _log(self, undo: Callable[[], None]) -> None:
        assert self._undo is not None, "write outside a transaction"
        self._undo.append(undo)

    # -- runs --------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        if starting_after is not None and starting_after not in self._runs:
            return None
        runs = list(self._runs.values())
        if starting_after is not None:
            runs = runs[[run.id for run in runs].index(starting_after) + 1 :]
        chosen = [
            run
            for run in runs
            if (user_id is None or run.user_id == user_id)
            and (status is None or run.status == status)
        ]
        return chosen[:limit], len(chosen) > limit

    def _live(self, entry: tuple[float, int, str]) -> Run | None:
        """The run a heap entry stands for, or None when the entry is stale (the run's
        deadline moved or cleared, or the run's insertion was rolled back)."""
        run = self._runs.get(entry[2])
        return run if run is not None and run.deadline == entry[0] else None

    def due_runs(self, now: float, limit: int) -> list[Run]:
        heap = self._deadlines
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        if not heap or heap[0][0] > now:
            return []
        due: dict[str, Run] = {}
        kept = []
        while heap and heap[0][0] <= now and len(due) < limit:  # O(k log n), not a sort
            entry = heapq.heappop(heap)
            run = self._live(entry)
            if run is not None:
                kept.append(entry)
                due.setdefault(run.id, run)
        for entry in kept:  # a read changes nothing: valid entries go back
            heapq.heappush(heap, entry)
        return list(due.values())

    def insert_run(self, run: Run) -> None:
        if run.id in self._runs:
            raise StoreError("store_constraint", f"a run {run.id!r} is stored already")
        self._runs[run.id] = run
        self._creation[run.id] = next(self._counter)

        def undo() -> None:
            del self._runs[run.id]
            self._run_requests.pop(run.id, None)
            del self._creation[run.id]

        self._log(undo)
        self._watch_deadline(run)

    def update_run(self, run: Run) -> None:
        old = self._runs.get(run.id)
        if old is None or old.version != run.version - 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        self._runs[run.id] = run
        if run.deadline != old.deadline:
            self._watch_deadline(run)

        def undo() -> None:
            self._runs[run.id] = old
            # due_runs may have dropped the old deadline's heap entry as stale meanwhile
            self._watch_deadline(old)

        self._log(undo)

    def _watch_deadline(self, run: Run) -> None:
        if run.deadline is not None and run.id in self._creation:
            heapq.heappush(self._deadlines, (run.deadline, self._creation[run.id], run.id))

    # -- requests ----------------------------------------------------------------
    def get_request(self, request_id: str) -> PermissionRequest | None:
        return self._requests.get(request_id)

    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        ids = self._run_requests.get(run_id, ())
        if pending_only:  # a dict lookup per request of the run: ~30 ns each
            pending = self._pending
            return [self._requests[rid] for rid in ids if rid in pending]
        return [self._requests[rid] for rid in ids]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        oldest = heapq.nsmallest(limit, self._pending.items(), key=lambda item: item[1])
        return [self._requests[rid] for rid, _ in oldest]

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        for request in requests:
            self._save_request(request)

    def _save_request(self, request: PermissionRequest) -> None:
        rid = request.request_id
        old = self._requests.get(rid)
        # a pending request's creation order is kept in _pending, so that an undo puts it
        # back in its place among the pending ones
        order = next(self._counter) if old is None else self._pending.get(rid)
        if old is None:
            _append(self._run_requests, request.run_id, rid)
        self._requests[rid] = request
        if request.is_pending:
            assert order is not None
            self._pending[rid] = order
        else:
            self._pending.pop(rid, None)

        def undo() -> None:
            if old is None:
                del self._requests[rid]
                self._run_requests[request.run_id].remove(rid)
                self._pending.pop(rid, None)
                return
            self._requests[rid] = old
            if old.is_pending and order is not None:
                self._pending[rid] = order

        self._log(undo)

    # -- policies ----------------------------------------------------------------
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        policy_id = self._scope_tools.get((user_id, tool))
        return None if policy_id is None else self._policies[policy_id]

    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        return self._policies.get(policy_id)

    def candidate_policies(self, user_id: str | None, tool_name: str) -> Iterator[PermissionPolicy]:
        exact = self.find_policy(user_id, tool_name)
        if exact is not None:
            yield exact
        by_prefix = self._scope_patterns.get(user_id)
        if not by_prefix:
            return
        found = [
            policy_id for prefix in prefixes(tool_name) for policy_id in by_prefix.get(prefix, ())
        ]
        if len(found) > 1:  # creation order across prefixes
            found.sort(key=self._policy_order.__getitem__)
        for policy_id in found:
            yield self._policies[policy_id]

    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        found = _page(list(self._scope_policies.get(user_id, ())), starting_after, limit)
        if found is None:
            return None
        ids, more = found
        return [self._policies[policy_id] for policy_id in ids], more

    def insert_policy(self, policy: PermissionPolicy) -> None:
        self._index_policy(policy)
        self._log(lambda: self._unindex_policy(policy))

    def delete_policy(self, policy_id: str) -> None:
        policy = self._policies[policy_id]
        self._unindex_policy(policy)
        self._log(lambda: self._restore_policy(policy))

    def _restore_policy(self, policy: PermissionPolicy) -> None:
        """Undo a delete: index the policy again, in its old place in the listings."""
        self._index_policy(policy)
        order = self._policy_order.__getitem__
        scope = self._scope_policies[policy.user_id]
        self._scope_policies[policy.user_id] = dict.fromkeys(sorted(scope, key=order))
        if is_pattern(policy.tool_name):
            by_prefix = self._scope_patterns[policy.user_id]
            prefix = literal_prefix(policy.tool_name)
            by_prefix[prefix] = dict.fromkeys(sorted(by_prefix[prefix], key=order))

    def _index_policy(self, policy: PermissionPolicy) -> None:
        self._policies[policy.id] = policy
        self._policy_order.setdefault(policy.id, next(self._policy_counter))
        self._scope_tools[(policy.user_id, policy.tool_name)] = policy.id
        self._scope_policies.setdefault(policy.user_id, {})[policy.id] = None
        if is_pattern(policy.tool_name):
            by_prefix = self._scope_patterns.setdefault(policy.user_id, {})
            by_prefix.setdefault(literal_prefix(policy.tool_name), {})[policy.id] = None

    def _unindex_policy(self, policy: PermissionPolicy) -> None:
        del self._policies[policy.id]
        del self._scope_tools[(policy.user_id, policy.tool_name)]
        del self._scope_policies[policy.user_id][policy.id]
        if is_pattern(policy.tool_name):
            by_prefix = self._scope_patterns[policy.user_id]
            del by_prefix[literal_prefix(policy.tool_name)][policy.id]

    # -- tasks -------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def insert_task(self, task: Task) -> None:
        self._tasks[task.id] = task
        self._log(lambda: self._tasks.__delitem__(task.id))

    # -- events ------------------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> None:
        for event in events:
            position = len(self._events)
            self._events.append(event)
            self._event_index[event.id] = position
            _append(self._run_events, event.run_id, position)
        if events:
            self._log(lambda: self._drop_events(len(events)))

    def _drop_events(self, count: int) -> None:
        for _ in range(count):
            event = self._events.pop()
            del self._event_index[event.id]
            self._run_events[event.run_id].pop()

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        start = 0
        if after is not None:
            if after not in self._event_index:
                return None
            start = self._event_index[after] + 1
        if run_id is None:
            return self._events[start : start + limit]
        positions = self._run_events.get(run_id, [])
        first = next((i for i, pos in enumerate(positions) if pos >= start), len(positions))
        return [self._events[pos] for pos in positions[first : first + limit]]

    def last_event_id(self) -> str | None:
        return self._events[-1].id if self._events else None

    # -- webhooks ----------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        return self._cursors.get(name)

    def set_cursor(self, name: str, event_id: str) -> None:
        old = self._cursors.get(name)
        self._cursors[name] = event_id

        def undo() -> None:
            if old is None:
                del self._cursors[name]
            else:
                self._cursors[name] = old

        self._log(undo)

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self._endpoints.get(endpoint_id)

    def list_endpoints(
        self, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool] | None:
        found = _page(list(self._endpoints), starting_after, limit)
        if found is None:
            return None
        ids, more = found
        return [self._endpoints[endpoint_id] for endpoint_id in ids], more

    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._endpoints[endpoint.id] = endpoint
        self._log(lambda: self._endpoints.__delitem__(endpoint.id))

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        old = self._endpoints[endpoint.id]
        self._endpoints[endpoint.id] = endpoint
        self._log(lambda: self._endpoints.__setitem__(endpoint.id, old))

    def delete_endpoint(self, endpoint_id: str) -> None:
        snapshot = (dict(self._endpoints), dict(self._deliveries), dict(self._pending_deliveries))
        del self._endpoints[endpoint_id]
        for delivery in [d for d in self._deliveries.values() if d.endpoint_id == endpoint_id]:
            del self._deliveries[delivery.id]
            self._pending_deliveries.pop(delivery.id, None)

        def undo() -> None:
            self._endpoints, self._deliveries, self._pending_deliveries = snapshot

        self._log(undo)

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self._deliveries.get(delivery_id)

    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            old = self._deliveries.get(delivery.id)
            self._deliveries[delivery.id] = delivery
            if delivery.status == "pending":
                self._pending_deliveries[delivery.id] = None
            else:
                self._pending_deliveries.pop(delivery.id, None)
            self._log(functools.partial(self._restore_delivery, delivery.id, old))

    def _restore_delivery(self, delivery_id: str, old: WebhookDelivery | None) -> None:
        if old is None:
            del self._deliveries[delivery_id]
            self._pending_deliveries.pop(delivery_id, None)
            return
        self._deliveries[delivery_id] = old
        if old.status == "pending":
            self._pending_deliveries[delivery_id] = None

    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        due = [
            self._deliveries[delivery_id]
            for delivery_id in self._pending_deliveries
            if (self._deliveries[delivery_id].next_retry_at or 0.0) <= now
        ]
        due.sort(key=lambda d: d.next_retry_at or 0.0)  # stable: ties keep insertion order
        return due[:limit]

    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        deliveries = [d for d in self._deliveries.values() if d.endpoint_id == endpoint_id]
        if starting_after is not None:
            ids = [d.id for d in deliveries]
            if starting_after not in ids:
                return None
            deliveries = deliveries[ids.index(starting_after) + 1 :]
        chosen = [d for d in deliveries if status is None or d.status == status]
        return chosen[:limit], len(chosen) > limit
