"""The in-memory store behind `memory://`: plain dicts and small indexes under one lock,
with an undo log so a transaction that raises leaves everything as it was. Thread-safe,
not durable. Every lookup the port names is indexed: no call scans the whole store."""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from hitl_core.adapter import (
    ChangeListener,
    ConflictError,
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    RunStatus,
    Store,
    StoreError,
    Task,
    Transaction,
    ValidationError,
    WebhookDelivery,
    WebhookEndpoint,
    is_pattern,
    literal_prefix,
    prefixes,
)

__all__ = ["MemoryStore", "open_store"]

Entry = tuple[float, int, str]  # (time, creation order, id): a heap entry


def open_store(url: str) -> MemoryStore:
    """Entry point for `memory://`: a fresh, empty store on every call."""
    if url.rstrip("/") != "memory:":
        raise ValidationError("invalid_url", f"a memory store URL is 'memory://'; got {url!r}")
    return MemoryStore()


def _append(lists: dict[str, list[Any]], key: str, item: Any) -> None:
    """Append to the list under `key`, making a one-item list first: an empty list that
    grows takes room for four, and most runs are short (memory per paused run counts)."""
    found = lists.get(key)
    if found is None:
        lists[key] = [item]
    else:
        found.append(item)


def _remove(lists: dict[str, list[Any]], key: str, item: Any) -> None:
    """Remove `item` from the list under `key`, dropping the list when it empties."""
    found = lists[key]
    found.remove(item)
    if not found:
        del lists[key]


def _take_due(
    heap: list[Entry], bound: float, limit: int, live: Callable[[Entry], Any]
) -> list[Any]:
    """Up to `limit` distinct live items of `heap` whose time is <= bound, in heap order;
    stale entries (for which `live` gives None) are dropped, live ones stay. O(k log n)."""
    while heap and live(heap[0]) is None:
        heapq.heappop(heap)
    if not heap or heap[0][0] > bound:
        return []
    found: dict[str, Any] = {}
    kept = []
    while heap and heap[0][0] <= bound and len(found) < limit:
        entry = heapq.heappop(heap)
        item = live(entry)
        if item is not None:
            kept.append(entry)
            found.setdefault(entry[2], item)
    for entry in kept:  # a read changes nothing: valid entries go back
        heapq.heappush(heap, entry)
    return list(found.values())


class _Ordered:
    """Ids kept in creation order (by their creation number), for paged listings."""

    __slots__ = ("ids", "order")

    def __init__(self, order: dict[str, int]) -> None:
        self.ids: list[str] = []
        self.order = order

    def add(self, item: str) -> None:
        ids, number = self.ids, self.order[item]
        if not ids or self.order[ids[-1]] < number:
            ids.append(item)  # the usual case: the newest
        else:
            ids.insert(bisect.bisect_left(ids, number, key=self.order.__getitem__), item)

    def discard(self, item: str) -> None:
        ids = self.ids
        index = bisect.bisect_left(ids, self.order[item], key=self.order.__getitem__)
        if index < len(ids) and ids[index] == item:
            del ids[index]

    def after(self, item: str | None) -> int:
        """The position just after `item` (an id in this listing or not)."""
        if item is None:
            return 0
        return bisect.bisect_right(self.ids, self.order[item], key=self.order.__getitem__)


class MemoryStore(Store, Transaction):
    """Everything in process memory. The store is its own transaction object: a
    transaction holds the lock, and writes log their inverse for rollback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._undo: list[Callable[[], None]] | None = None
        self._changed: set[str] = set()
        self._listeners: dict[int, ChangeListener] = {}
        self._listener_ids = itertools.count()
        self._counter = itertools.count()  # creation order of runs, requests, deliveries
        # runs and their indexes
        self._runs: dict[str, Run] = {}
        self._order: dict[str, int] = {}
        self._all_runs = _Ordered(self._order)
        self._by_status: dict[str, _Ordered] = {}
        self._by_user: dict[str, _Ordered] = {}
        self._deadlines: list[Entry] = []  # (deadline, order, id)
        self._claimable: list[Entry] = []  # (lease_expires or 0, order, id) of running runs
        self._ended: list[Entry] = []  # (updated_at, order, id) of terminal runs
        self._keys: dict[str, IdempotencyKey] = {}
        self._run_key: dict[str, str] = {}
        # requests
        self._requests: dict[str, PermissionRequest] = {}
        self._run_requests: dict[str, list[str]] = {}
        self._run_pending: dict[str, list[str]] = {}
        self._pending: dict[str, int] = {}  # pending request id -> creation order
        self._pending_sorted = True
        # policies
        self._policies: dict[str, PermissionPolicy] = {}
        self._policy_order: dict[str, int] = {}
        self._policy_counter = itertools.count()
        self._scope_tools: dict[tuple[str | None, str], str] = {}
        self._scope_policies: dict[str | None, dict[str, None]] = {}
        # scope -> literal prefix -> pattern policy ids (insertion order)
        self._scope_patterns: dict[str | None, dict[str, dict[str, None]]] = {}
        self._tasks: dict[str, Task] = {}
        # events: a list with holes where pruned events were
        self._events: list[Event | None] = []
        self._holes = 0
        self._event_index: dict[str, int] = {}
        self._run_events: dict[str, list[int]] = {}
        # webhooks
        self._cursors: dict[str, str] = {}
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._deliveries: dict[str, WebhookDelivery] = {}
        self._delivery_order: dict[str, int] = {}
        self._endpoint_deliveries: dict[str, _Ordered] = {}
        self._run_deliveries: dict[str, list[str]] = {}
        self._due_deliveries: list[Entry] = []  # (next_retry_at or 0, order, id)

    # -- Store -------------------------------------------------------------------
    def transaction(self, *, write: bool) -> _Transaction:
        """Hold the lock for the block; undo every write if the block raises."""
        return _Transaction(self)

    def close(self) -> None:
        """Nothing to release."""

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener` with the run ids of the events each commit appended."""
        key = next(self._listener_ids)
        self._listeners[key] = listener

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def _notify(self, run_ids: Collection[str]) -> None:
        for listener in list(self._listeners.values()):
            listener(run_ids)

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
        if user_id is not None:
            listing = self._by_user.get(user_id)
        elif status is not None:
            listing = self._by_status.get(status)
        else:
            listing = self._all_runs
        if listing is None:
            return [], False
        chosen: list[Run] = []
        for run_id in itertools.islice(listing.ids, listing.after(starting_after), None):
            run = self._runs[run_id]
            if status is None or run.status == status:
                if len(chosen) == limit:
                    return chosen, True
                chosen.append(run)
        return chosen, False

    def _run_at(self, entry: Entry, value: Callable[[Run], float | None]) -> Run | None:
        run = self._runs.get(entry[2])
        return run if run is not None and value(run) == entry[0] else None

    def due_runs(self, now: float, limit: int) -> list[Run]:
        return _take_due(
            self._deadlines, now, limit, lambda e: self._run_at(e, lambda r: r.deadline)
        )

    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        return _take_due(self._claimable, now, limit, self._claimable_at)

    def _claimable_at(self, entry: Entry) -> Run | None:
        run = self._runs.get(entry[2])
        if run is None or run.status is not RunStatus.RUNNING:
            return None
        return run if (run.lease_expires or 0.0) == entry[0] else None

    def ended_runs(self, before: float, limit: int) -> list[str]:
        # strictly before: take up to the largest float below `before`
        runs = _take_due(self._ended, before, limit + 1, self._ended_at)
        return [run.id for run in runs if run.updated_at < before][:limit]

    def _ended_at(self, entry: Entry) -> Run | None:
        run = self._runs.get(entry[2])
        if run is None or not run.is_terminal:
            return None
        return run if run.updated_at == entry[0] else None

    def insert_run(self, run: Run) -> None:
        if run.id in self._runs:
            raise StoreError("store_constraint", f"a run {run.id!r} is stored already")
        self._order[run.id] = next(self._counter)
        self._put_run(run, None)
        self._log(lambda: self._drop_run(run))

    def update_run(self, run: Run) -> None:
        old = self._runs.get(run.id)
        if old is None or old.version != run.version - 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        self._put_run(run, old)
        self._log(lambda: self._put_run(old, run))

    def _put_run(self, run: Run, old: Run | None) -> None:
        """Store `run` in place of `old` (None: a new run) and keep every index right."""
        self._runs[run.id] = run
        order = self._order[run.id]
        if old is None:
            self._all_runs.add(run.id)
            if run.user_id is not None:
                self._listing(self._by_user, run.user_id).add(run.id)
        if old is None or old.status != run.status:
            if old is not None:
                self._by_status[old.status].discard(run.id)
            self._listing(self._by_status, run.status).add(run.id)
            if run.is_terminal:
                heapq.heappush(self._ended, (run.updated_at, order, run.id))
        if run.deadline is not None and (old is None or old.deadline != run.deadline):
            heapq.heappush(self._deadlines, (run.deadline, order, run.id))
        if run.status is RunStatus.RUNNING and (
            old is None
            or old.status is not RunStatus.RUNNING
            or old.lease_expires != run.lease_expires
        ):
            heapq.heappush(self._claimable, (run.lease_expires or 0.0, order, run.id))

    def _listing(self, listings: dict[str, _Ordered], key: str) -> _Ordered:
        found = listings.get(key)
        if found is None:
            found = listings[key] = _Ordered(self._order)
        return found

    def _drop_run(self, run: Run) -> None:
        """Forget a run entirely (undo of its insert, or deletion)."""
        del self._runs[run.id]
        self._all_runs.discard(run.id)
        self._by_status[run.status].discard(run.id)
        if run.user_id is not None:
            self._by_user[run.user_id].discard(run.id)
        del self._order[run.id]

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            self._delete_run(run_id)
        self._compact_events()

    def _delete_run(self, run_id: str) -> None:
        if run_id not in self._runs:  # deleted before: only finished deliveries may remain
            finished = [
                self._deliveries[did]
                for did in self._run_deliveries.get(run_id, ())
                if self._deliveries[did].status != "pending"
            ]
            for delivery in finished:
                self._forget_delivery(delivery)
            self._log(lambda: self._index_deliveries(finished))
            return
        run = self._runs[run_id]
        order = self._order[run_id]
        requests = [self._requests[rid] for rid in self._run_requests.get(run_id, ())]
        positions = self._run_events.pop(run_id, [])
        events = [self._events[pos] for pos in positions]
        key = self._run_key.pop(run_id, None)
        idempotency = None if key is None else self._keys.pop(key)
        deliveries = [
            self._deliveries[did]
            for did in self._run_deliveries.get(run_id, ())
            if self._deliveries[did].status != "pending"
        ]
        orders = {r.request_id: self._pending[r.request_id] for r in requests if r.is_pending}
        self._drop_run(run)
        for request in requests:
            del self._requests[request.request_id]
            self._pending.pop(request.request_id, None)
        self._run_requests.pop(run_id, None)
        self._run_pending.pop(run_id, None)
        for pos, event in zip(positions, events, strict=True):
            assert event is not None
            self._events[pos] = None
            del self._event_index[event.id]
        self._holes += len(positions)
        for delivery in deliveries:
            self._forget_delivery(delivery)

        def undo() -> None:
            self._order[run_id] = order
            self._put_run(run, None)
            for request in requests:
                self._requests[request.request_id] = request
                _append(self._run_requests, run_id, request.request_id)
                if request.is_pending:
                    self._add_pending(request, orders[request.request_id])
            for pos, event in zip(positions, events, strict=True):
                assert event is not None
                self._events[pos] = event
                self._event_index[event.id] = pos
            if positions:
                self._run_events[run_id] = positions
            self._holes -= len(positions)
            if idempotency is not None:
                self._keys[idempotency.key] = idempotency
                self._run_key[run_id] = idempotency.key
            for delivery in deliveries:
                self._index_delivery(delivery, self._delivery_order[delivery.id])

        self._log(undo)

    # -- idempotency keys ----------------------------------------------------------
    def get_idempotency_key(self, key: str) -> IdempotencyKey | None:
        return self._keys.get(key)

    def insert_idempotency_key(self, key: IdempotencyKey) -> None:
        self._keys[key.key] = key
        self._run_key[key.run_id] = key.key

        def undo() -> None:
            del self._keys[key.key]
            del self._run_key[key.run_id]

        self._log(undo)

    # -- requests ----------------------------------------------------------------
    def get_request(self, request_id: str) -> PermissionRequest | None:
        return self._requests.get(request_id)

    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        ids = (self._run_pending if pending_only else self._run_requests).get(run_id, ())
        return [self._requests[rid] for rid in ids]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        if not self._pending_sorted:  # an undo put a request back out of its place
            self._pending = dict(sorted(self._pending.items(), key=lambda item: item[1]))
            self._pending_sorted = True
        return [self._requests[rid] for rid in itertools.islice(self._pending, limit)]

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        for request in requests:
            rid = request.request_id
            old = self._requests.get(rid)
            self._requests[rid] = request
            if old is None:
                _append(self._run_requests, request.run_id, rid)
                if request.is_pending:
                    self._add_pending(request, next(self._counter))
                self._log(lambda r=request: self._unsave(r))  # type: ignore[misc]
                continue
            if old.run_id != request.run_id:
                self._requests[rid] = old
                raise StoreError("store_constraint", f"request {rid!r} is of another run")
            order = self._pending.get(rid)
            if old.is_pending and not request.is_pending:
                self._drop_pending(old)
            elif request.is_pending and not old.is_pending:
                self._add_pending(request, next(self._counter))
            self._log(lambda o=old, r=request, n=order: self._restore(o, r, n))  # type: ignore[misc]

    def _add_pending(self, request: PermissionRequest, order: int) -> None:
        rid = request.request_id
        if self._pending and order < next(reversed(self._pending.values())):
            self._pending_sorted = False  # an undo puts a request back before newer ones
        self._pending[rid] = order
        _append(self._run_pending, request.run_id, rid)
        listed = self._run_pending[request.run_id]
        if len(listed) > 1 and self._pending[listed[-2]] > order:
            listed.sort(key=self._pending.__getitem__)

    def _drop_pending(self, request: PermissionRequest) -> None:
        del self._pending[request.request_id]
        _remove(self._run_pending, request.run_id, request.request_id)

    def _unsave(self, request: PermissionRequest) -> None:
        """Undo the insertion of a request."""
        del self._requests[request.request_id]
        _remove(self._run_requests, request.run_id, request.request_id)
        if request.is_pending:
            self._drop_pending(request)

    def _restore(self, old: PermissionRequest, new: PermissionRequest, order: int | None) -> None:
        """Undo the replacement of `old` by `new` (`order`: old's place among the pending)."""
        self._requests[old.request_id] = old
        if new.is_pending and not old.is_pending:
            self._drop_pending(new)
        elif old.is_pending and not new.is_pending:
            assert order is not None
            self._add_pending(old, order)

    # -- policies ----------------------------------------------------------------
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        policy_id = self._scope_tools.get((user_id, tool))
        return None if policy_id is None else self._policies[policy_id]

    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        return self._policies.get(policy_id)

    def candidate_policies(self, user_id: str | None, tool_name: str) -> list[PermissionPolicy]:
        found: list[PermissionPolicy] = []
        exact = self.find_policy(user_id, tool_name)
        if exact is not None:
            found.append(exact)
        by_prefix = self._scope_patterns.get(user_id)
        if not by_prefix:
            return found
        ids = [pid for prefix in prefixes(tool_name) for pid in by_prefix.get(prefix, ())]
        if len(ids) > 1:  # creation order across prefixes
            ids.sort(key=self._policy_order.__getitem__)
        found.extend(self._policies[pid] for pid in ids)
        return found

    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        ids = list(self._scope_policies.get(user_id, ()))
        start = 0
        if starting_after is not None:
            policy = self._policies.get(starting_after)
            if policy is None or policy.user_id != user_id:
                return None
            start = ids.index(starting_after) + 1
        chosen = ids[start : start + limit]
        return [self._policies[pid] for pid in chosen], start + limit < len(ids)

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
            self._changed.add(event.run_id)
        if events:
            self._log(lambda: self._drop_events(len(events)))

    def _drop_events(self, count: int) -> None:
        for _ in range(count):
            event = self._events.pop()
            assert event is not None
            del self._event_index[event.id]
            _remove(self._run_events, event.run_id, len(self._events))

    def _compact_events(self) -> None:
        """Close the holes pruning left, once they are half the log (amortised O(1))."""
        if self._holes * 2 <= len(self._events):
            return
        old = (self._events, self._holes, self._event_index, self._run_events)
        kept = [event for event in self._events if event is not None]
        self._events = list(kept)
        self._holes = 0
        self._event_index = {event.id: pos for pos, event in enumerate(kept)}
        self._run_events = {}
        for pos, event in enumerate(kept):
            _append(self._run_events, event.run_id, pos)

        def undo() -> None:
            self._events, self._holes, self._event_index, self._run_events = old

        self._log(undo)

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        start = 0
        if after is not None:
            if after not in self._event_index:
                return None
            start = self._event_index[after] + 1
        if run_id is None:
            found = []
            for event in itertools.islice(self._events, start, None):
                if event is not None:
                    found.append(event)
                    if len(found) == limit:
                        break
            return found
        positions = self._run_events.get(run_id, [])
        first = bisect.bisect_left(positions, start)
        return [self._events[pos] for pos in positions[first : first + limit]]  # type: ignore[misc]

    def last_event_id(self) -> str | None:
        for event in reversed(self._events):
            if event is not None:
                return event.id
        return None

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
        ids = list(self._endpoints)
        start = 0
        if starting_after is not None:
            if starting_after not in self._endpoints:
                return None
            start = ids.index(starting_after) + 1
        chosen = ids[start : start + limit]
        return [self._endpoints[eid] for eid in chosen], start + limit < len(ids)

    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._endpoints[endpoint.id] = endpoint
        self._log(lambda: self._endpoints.__delitem__(endpoint.id))

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        old = self._endpoints[endpoint.id]
        self._endpoints[endpoint.id] = endpoint
        self._log(lambda: self._endpoints.__setitem__(endpoint.id, old))

    def delete_endpoint(self, endpoint_id: str) -> None:
        endpoints = dict(self._endpoints)  # endpoints are few: the undo restores the order
        del self._endpoints[endpoint_id]
        listing = self._endpoint_deliveries.get(endpoint_id)
        deliveries = [self._deliveries[did] for did in (listing.ids if listing else ())]
        for delivery in deliveries:
            self._forget_delivery(delivery)

        def undo() -> None:
            self._endpoints = endpoints
            for delivery in deliveries:
                self._index_delivery(delivery, self._delivery_order[delivery.id])

        self._log(undo)

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self._deliveries.get(delivery_id)

    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            old = self._deliveries.get(delivery.id)
            if old is None:
                order = next(self._counter)
                self._index_delivery(delivery, order)
                self._log(lambda d=delivery: self._forget_delivery(d))  # type: ignore[misc]
            else:
                self._replace_delivery(delivery)
                self._log(lambda o=old: self._replace_delivery(o))  # type: ignore[misc]

    def _index_delivery(self, delivery: WebhookDelivery, order: int) -> None:
        self._deliveries[delivery.id] = delivery
        self._delivery_order[delivery.id] = order
        self._endpoint_listing(delivery.endpoint_id).add(delivery.id)
        _append(self._run_deliveries, delivery.run_id, delivery.id)
        self._watch_delivery(delivery)

    def _endpoint_listing(self, endpoint_id: str) -> _Ordered:
        found = self._endpoint_deliveries.get(endpoint_id)
        if found is None:
            found = self._endpoint_deliveries[endpoint_id] = _Ordered(self._delivery_order)
        return found

    def _index_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            self._index_delivery(delivery, self._delivery_order[delivery.id])

    def _forget_delivery(self, delivery: WebhookDelivery) -> None:
        del self._deliveries[delivery.id]
        listing = self._endpoint_deliveries[delivery.endpoint_id]
        listing.discard(delivery.id)
        if not listing.ids:
            del self._endpoint_deliveries[delivery.endpoint_id]
        _remove(self._run_deliveries, delivery.run_id, delivery.id)
        # the creation number stays: an undo puts the delivery back in its place

    def _replace_delivery(self, delivery: WebhookDelivery) -> None:
        self._deliveries[delivery.id] = delivery
        self._watch_delivery(delivery)

    def _watch_delivery(self, delivery: WebhookDelivery) -> None:
        if delivery.status == "pending":
            entry = (delivery.next_retry_at or 0.0, self._delivery_order[delivery.id], delivery.id)
            heapq.heappush(self._due_deliveries, entry)

    def _due_at(self, entry: Entry) -> WebhookDelivery | None:
        delivery = self._deliveries.get(entry[2])
        if delivery is None or delivery.status != "pending":
            return None
        return delivery if (delivery.next_retry_at or 0.0) == entry[0] else None

    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        return _take_due(self._due_deliveries, now, limit, self._due_at)

    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        listing = self._endpoint_deliveries.get(endpoint_id)
        if starting_after is not None:
            found = self._deliveries.get(starting_after)
            if found is None or found.endpoint_id != endpoint_id or listing is None:
                return None
        if listing is None:
            return [], False
        chosen: list[WebhookDelivery] = []
        for delivery_id in itertools.islice(listing.ids, listing.after(starting_after), None):
            delivery = self._deliveries[delivery_id]
            if status is None or delivery.status == status:
                if len(chosen) == limit:
                    return chosen, True
                chosen.append(delivery)
        return chosen, False


class _Transaction:
    """One transaction of a MemoryStore. Transactions do not nest."""

    __slots__ = ("store",)

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __enter__(self) -> MemoryStore:
        store = self.store
        if store._owner == threading.get_ident():
            raise StoreError("store_nested", "memory store transactions do not nest")
        store._lock.acquire()
        store._owner = threading.get_ident()
        store._undo = []
        store._changed = set()
        return store

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        store = self.store
        undo = store._undo
        assert undo is not None
        changed: Iterable[str] = ()
        try:
            if kind is not None:
                for step in reversed(undo):
                    step()
            else:
                changed = store._changed
        finally:
            store._undo = None
            store._changed = set()
            store._owner = None
            store._lock.release()
        if changed and store._listeners:
            store._notify(frozenset(changed))
