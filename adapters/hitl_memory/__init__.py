"""The in-memory store behind `memory://`: dicts and small indexes under one lock, with
an undo log so a transaction that raises leaves everything as it was. Thread-safe, not
durable. Every lookup the port names is indexed: no call scans the whole store.

It is also built to be small, since paused runs pile up while people decide: a run's
own indexes live in one slotted entry (one request is held as itself, not in a list),
events are kept in columns with their data packed into tuples (shared when they hold
only common words), and heaps drop their stale entries once those outnumber the live
ones (docs/benchmarks.md measures the bytes per paused run)."""

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
    RequestStatus,
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
    record_maker,
    row_writer,
)

__all__ = ["MemoryStore", "open_store"]

Entry = tuple[float, int, str]  # (time, creation order, id): a heap entry
_PENDING = RequestStatus.PENDING
_RUNNING = RunStatus.RUNNING
_TERMINAL = frozenset(status for status in RunStatus if status.is_terminal)


def open_store(url: str) -> MemoryStore:
    """Entry point for `memory://`: a fresh, empty store on every call."""
    if url.rstrip("/") != "memory:":
        raise ValidationError("invalid_url", f"a memory store URL is 'memory://'; got {url!r}")
    return MemoryStore()


# -- small collections ---------------------------------------------------------------------
# A run usually has one request and one pending request: "few" holds None, one id (a
# string) or a list of ids, so the usual case costs no list at all.

Few = str | list[str] | None


def _few(value: Few) -> Sequence[str]:
    """The ids held, oldest first."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return value


def _with(value: Few, item: str) -> Few:
    """`value` with `item` added last."""
    if value is None:
        return item
    if type(value) is str:
        return [value, item]
    value.append(item)  # type: ignore[union-attr]
    return value


def _without(value: Few, item: str) -> Few:
    """`value` without `item`."""
    if type(value) is str:
        return None if value == item else value
    assert isinstance(value, list)
    value.remove(item)
    return value[0] if len(value) == 1 else value


class _Entry:
    """A stored run and the store's indexes of it: its creation number, its requests and
    its pending requests (ids, oldest first), and the positions of its first and last
    events in the log (each event knows the position of the run's next one). An entry
    can exist before its run when events of an unknown run id are appended."""

    __slots__ = ("first_event", "last_event", "order", "pending", "requests", "run")

    def __init__(self, run: Run | None, order: int) -> None:
        self.run = run
        self.order = order
        self.requests: Few = None
        self.pending: Few = None
        self.first_event: int | None = None
        self.last_event: int | None = None


def _take_due(
    heap: list[Entry], bound: float, limit: int, live: Callable[[Entry], Any]
) -> list[Any]:
    """Up to `limit` distinct live items of `heap` whose time is <= bound, in heap order;
    stale entries (for which `live` gives None) are dropped, live ones stay. O(k log n)."""
    if not heap or heap[0][0] > bound:  # nothing due, stale or not: the usual case
        return []
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


class _Heap:
    """A heap of (time, creation order, id) with lazy deletion: an entry is stale when
    its id no longer has that time (`live` says). Entries are only added; when the stale
    ones outnumber the live ones, the heap is rebuilt from the live ones, so its size
    stays within twice what it indexes."""

    __slots__ = ("entries", "live", "size")

    def __init__(self, live: Callable[[Entry], Any]) -> None:
        self.entries: list[Entry] = []
        self.live = live
        self.size = 0
        """How many ids the heap indexes now (kept by the store)."""

    def push(self, entry: Entry) -> None:
        entries = self.entries
        if len(entries) > 2 * self.size + 64:
            entries[:] = [e for e in entries if self.live(e) is not None]
            heapq.heapify(entries)
        heapq.heappush(entries, entry)

    def due(self, bound: float, limit: int) -> list[Any]:
        return _take_due(self.entries, bound, limit, self.live)


class _Ordered:
    """Ids kept in creation order (by `order(id)`), for paged listings."""

    __slots__ = ("ids", "last", "order")

    def __init__(self, order: Callable[[str], int]) -> None:
        self.ids: list[str] = []
        self.order = order
        self.last = -1  # the creation number of the last id

    def add(self, item: str, number: int) -> None:
        """Add `item`, whose creation number is `number`."""
        if number > self.last:  # the usual case: the newest
            self.ids.append(item)
            self.last = number
        else:
            self.ids.insert(bisect.bisect_left(self.ids, number, key=self.order), item)

    def discard(self, item: str, number: int) -> None:
        """Remove `item` (creation number `number`) if it is listed."""
        ids = self.ids
        if number == self.last:  # the usual case: the newest
            if ids and ids[-1] == item:
                ids.pop()
                self.last = self.order(ids[-1]) if ids else -1
            return
        index = bisect.bisect_left(ids, number, key=self.order)
        if index < len(ids) and ids[index] == item:
            del ids[index]

    def after(self, item: str | None) -> int:
        """The position just after `item` (an id in this listing or not)."""
        if item is None:
            return 0
        return bisect.bisect_right(self.ids, self.order(item), key=self.order)


# -- packed event data ---------------------------------------------------------------------
# An event's data is kept as a tuple (its keys' tuple, then the values) when every value
# is a plain scalar; such a tuple is shared by every event with the same data when its
# values are all common words (modes, kinds, statuses, sources, decisions, None, bools).

_COMMON = frozenset(
    {
        *(status.value for status in RunStatus),
        *(status.value for status in RequestStatus),
        "autonomous",
        "approval",
        "plan",
        "question",
        "tool",
        "human",
        "mode_switch",
        "run_ended",
        "allow",
        "deny",
        "answer",
        "approve",
        "revise",
    }
)
_SCALARS = (str, bool, int, float, type(None))
_SHARED_MAX = 4096


class _Packer:
    """Packs event data into tuples and back into fresh dicts."""

    __slots__ = ("keys", "shared")

    def __init__(self) -> None:
        self.keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.shared: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def pack(self, data: dict[str, Any]) -> Any:
        """`data` (the event's own dict, not to be changed) in its stored form."""
        if not data:
            return None
        common = True
        for value in data.values():
            kind = type(value)
            if kind not in _SCALARS:
                return _copy(data)  # nested data: a copy of the store's own
            if kind is str and value not in _COMMON:
                common = False
        names = tuple(data)
        names = self.keys.setdefault(names, names)
        packed = (names, *data.values())
        if common and (len(self.shared) < _SHARED_MAX or packed in self.shared):
            packed = self.shared.setdefault(packed, packed)
        return packed

    @staticmethod
    def unpack(packed: Any) -> dict[str, Any]:
        if packed is None:
            return {}
        if type(packed) is tuple:
            return dict(zip(packed[0], packed[1:], strict=True))
        copied: dict[str, Any] = _copy(packed)
        return copied


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


class MemoryStore(Store, Transaction):
    """Everything in process memory. The store is its own transaction object: a
    transaction holds the lock, and writes log their inverse for rollback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._undo: list[Callable[[], None]] | None = None
        self._changed: set[str] | None = None
        self._unpend: list[str] | None = None  # resolved in this transaction (see below)
        self._listeners: dict[int, ChangeListener] = {}
        self._listener_ids = itertools.count()
        self._counter = itertools.count()  # creation order of runs and deliveries
        self._scopes = (_Scope(self, True), _Scope(self, False))
        # runs and their indexes
        self._runs: dict[str, _Entry] = {}
        self._all_runs = _Ordered(self._run_order)
        self._by_status: dict[str, _Ordered] = {}
        self._by_user: dict[str, _Ordered] = {}
        self._deadlines = _Heap(lambda e: self._run_at(e, lambda r: r.deadline))
        self._claimable = _Heap(self._claimable_at)  # (lease_expires or 0, ...) if running
        self._ended: list[Entry] = []  # (updated_at, order, id) of terminal runs
        self._keys: dict[str, IdempotencyKey] = {}
        self._run_key: dict[str, str] = {}
        # requests; pending ones across runs, oldest first (an insertion-ordered dict:
        # a request resolved in a transaction leaves it at commit, so a rollback finds
        # it in its old place)
        self._requests: dict[str, PermissionRequest] = {}
        self._pending: dict[str, None] = {}
        # policies
        self._policies: dict[str, PermissionPolicy] = {}
        self._policy_order: dict[str, int] = {}
        self._policy_counter = itertools.count()
        self._scope_tools: dict[tuple[str | None, str], str] = {}
        self._scope_policies: dict[str | None, dict[str, None]] = {}
        # scope -> literal prefix -> pattern policy ids (insertion order)
        self._scope_patterns: dict[str | None, dict[str, dict[str, None]]] = {}
        self._tasks: dict[str, Task] = {}
        # events, in columns by position in the log (None where pruned events were)
        self._event_ids: list[str | None] = []
        self._event_types: list[str | None] = []
        self._event_runs: list[str | None] = []
        self._event_times: list[float | None] = []
        self._event_data: list[Any] = []
        self._event_next: list[int | None] = []  # the position of the run's next event
        self._event_index: dict[str, int] = {}
        self._event_count = 0  # live events (without the holes)
        self._packer = _Packer()
        # webhooks
        self._cursors: dict[str, str] = {}
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._deliveries: dict[str, WebhookDelivery] = {}
        self._delivery_order: dict[str, int] = {}
        self._endpoint_deliveries: dict[str, _Ordered] = {}
        self._run_deliveries: dict[str, list[str]] = {}
        self._due_deliveries: list[Entry] = []  # (next_retry_at or 0, order, id)

    # -- Store -------------------------------------------------------------------
    def transaction(self, *, write: bool) -> _Scope:
        """Hold the lock for the block; undo every write if the block raises."""
        return self._scopes[0 if write else 1]

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
        if self._undo is None:
            if self._owner is None:
                raise AssertionError("write outside a transaction")
            self._undo = []
        self._undo.append(undo)

    # -- runs --------------------------------------------------------------------
    def _run_order(self, run_id: str) -> int:
        return self._runs[run_id].order

    def get_run(self, run_id: str) -> Run | None:
        entry = self._runs.get(run_id)
        return None if entry is None else entry.run

    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        if starting_after is not None and self.get_run(starting_after) is None:
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
            run = self._runs[run_id].run
            assert run is not None
            if status is None or run.status == status:
                if len(chosen) == limit:
                    return chosen, True
                chosen.append(run)
        return chosen, False

    def _run_at(self, entry: Entry, value: Callable[[Run], float | None]) -> Run | None:
        run = self.get_run(entry[2])
        return run if run is not None and value(run) == entry[0] else None

    def due_runs(self, now: float, limit: int) -> list[Run]:
        entries = self._deadlines.entries
        if not entries or entries[0][0] > now:  # nothing due: the usual case
            return []
        return self._deadlines.due(now, limit)

    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        return self._claimable.due(now, limit)

    def _claimable_at(self, entry: Entry) -> Run | None:
        run = self.get_run(entry[2])
        if run is None or run.status is not _RUNNING:
            return None
        return run if (run.lease_expires or 0.0) == entry[0] else None

    def ended_runs(self, before: float, limit: int) -> list[str]:
        # strictly before: take up to the largest float below `before`
        runs = _take_due(self._ended, before, limit + 1, self._ended_at)
        return [run.id for run in runs if run.updated_at < before][:limit]

    def _ended_at(self, entry: Entry) -> Run | None:
        run = self.get_run(entry[2])
        if run is None or not run.is_terminal:
            return None
        return run if run.updated_at == entry[0] else None

    def insert_run(self, run: Run) -> None:
        entry = self._runs.get(run.id)
        if entry is None:
            entry = self._runs[run.id] = _Entry(run, next(self._counter))
        elif entry.run is None:  # its events came first
            entry.run = run
        else:
            raise StoreError("store_constraint", f"a run {run.id!r} is stored already")
        self._index_run(run, None, entry.order)
        self._log(lambda: self._drop_run(run))

    def update_run(self, run: Run) -> None:
        entry = self._runs.get(run.id)
        old = None if entry is None else entry.run
        if old is None or old.version != run.version - 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        assert entry is not None
        entry.run = run
        self._index_run(run, old, entry.order)
        self._log(lambda: self._put_back(old, run))

    def _put_back(self, old: Run, new: Run) -> None:
        """Undo an update: `old` in place of `new`."""
        self._runs[old.id].run = old
        self._index_run(old, new, self._runs[old.id].order)

    def _index_run(self, run: Run, old: Run | None, order: int) -> None:
        """Keep every index of runs right after `run` took the place of `old` (None: a
        new run)."""
        run_id, status = run.id, run.status
        if old is None:
            self._all_runs.add(run_id, order)
            if run.user_id is not None:
                self._listing(self._by_user, run.user_id).add(run_id, order)
            before, was_running = None, False
        else:
            before, was_running = old.deadline, old.status is _RUNNING
        if old is None or old.status is not status:
            if old is not None:
                self._by_status[old.status].discard(run_id, order)
            self._listing(self._by_status, status).add(run_id, order)
            if status in _TERMINAL:
                heapq.heappush(self._ended, (run.updated_at, order, run_id))
        deadline = run.deadline
        if deadline != before:
            self._deadlines.size += (deadline is not None) - (before is not None)
            if deadline is not None:
                self._deadlines.push((deadline, order, run_id))
        running = status is _RUNNING
        if running != was_running:
            self._claimable.size += running - was_running
        if running and (
            not was_running or old.lease_expires != run.lease_expires  # type: ignore[union-attr]
        ):
            self._claimable.push((run.lease_expires or 0.0, order, run_id))

    def _listing(self, listings: dict[str, _Ordered], key: str) -> _Ordered:
        found = listings.get(key)
        if found is None:
            found = listings[key] = _Ordered(self._run_order)
        return found

    def _drop_run(self, run: Run) -> None:
        """Forget a run entirely (undo of its insert, or deletion)."""
        order = self._runs[run.id].order
        self._all_runs.discard(run.id, order)
        self._by_status[run.status].discard(run.id, order)
        if run.user_id is not None:
            self._by_user[run.user_id].discard(run.id, order)
        if run.status is _RUNNING:
            self._claimable.size -= 1
        if run.deadline is not None:
            self._deadlines.size -= 1
        entry = self._runs[run.id]
        if entry.requests is None and entry.first_event is None:
            del self._runs[run.id]
        else:
            entry.run = None

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            self._delete_run(run_id)
        self._compact_events()

    def _delete_run(self, run_id: str) -> None:
        entry = self._runs.get(run_id)
        if entry is None or entry.run is None:  # deleted before: only finished deliveries
            finished = [
                self._deliveries[did]
                for did in self._run_deliveries.get(run_id, ())
                if self._deliveries[did].status != "pending"
            ]
            for delivery in finished:
                self._forget_delivery(delivery)
            self._log(lambda: self._index_deliveries(finished))
            return
        run = entry.run
        kept = (entry.requests, entry.pending, entry.first_event, entry.last_event)
        requests = [self._requests[rid] for rid in _few(entry.requests)]
        positions = list(self._positions(entry.first_event))
        events = [self._event_at(pos) for pos in positions]
        key = self._run_key.pop(run_id, None)
        idempotency = None if key is None else self._keys.pop(key)
        deliveries = [
            self._deliveries[did]
            for did in self._run_deliveries.get(run_id, ())
            if self._deliveries[did].status != "pending"
        ]
        self._drop_run(run)
        self._runs.pop(run_id, None)
        for request in requests:
            del self._requests[request.request_id]
            if request.status is _PENDING:  # leaves self._pending at commit
                self._unpended(request.request_id)
        for pos in positions:
            self._clear_event(pos)
        for delivery in deliveries:
            self._forget_delivery(delivery)

        def undo() -> None:
            entry.run = None
            entry.requests, entry.pending, entry.first_event, entry.last_event = kept
            self._runs[run_id] = entry
            entry.run = run
            self._index_run(run, None, entry.order)
            for request in requests:
                self._requests[request.request_id] = request
            for pos, event in zip(positions, events, strict=True):
                self._put_event(pos, _event_row(event))
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
        entry = self._runs.get(run_id)
        if entry is None:
            return []
        requests = self._requests
        return [requests[rid] for rid in _few(entry.pending if pending_only else entry.requests)]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        found: list[PermissionRequest] = []
        requests = self._requests
        for rid in self._pending:  # those resolved or deleted in this transaction: skipped
            request = requests.get(rid)
            if request is not None and request.status is _PENDING:
                found.append(request)
                if len(found) == limit:
                    break
        return found

    def _unpended(self, rid: str) -> None:
        """Note that `rid` leaves the pending order when this transaction commits."""
        if self._unpend is None:
            self._unpend = []
        self._unpend.append(rid)

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        for request in requests:
            rid = request.request_id
            old = self._requests.get(rid)
            entry = self._runs.get(request.run_id)
            if old is None:
                if entry is None:
                    entry = self._runs[request.run_id] = _Entry(None, next(self._counter))
                self._requests[rid] = request
                entry.requests = _with(entry.requests, rid)
                if request.status is _PENDING:
                    entry.pending = _with(entry.pending, rid)
                    self._pending[rid] = None
                self._log(lambda r=request: self._unsave(r))  # type: ignore[misc]
                continue
            if old.run_id != request.run_id:
                raise StoreError("store_constraint", f"request {rid!r} is of another run")
            assert entry is not None
            self._requests[rid] = request
            self._repend(entry, old, request)
            self._log(lambda o=old, r=request: self._restore(o, r))  # type: ignore[misc]

    def _repend(self, entry: _Entry, old: PermissionRequest, new: PermissionRequest) -> None:
        """Keep the pending indexes right after `new` took the place of `old`."""
        rid = new.request_id
        if old.status is _PENDING and new.status is not _PENDING:
            entry.pending = _without(entry.pending, rid)
            self._unpended(rid)  # leaves self._pending at commit
        elif new.status is _PENDING and old.status is not _PENDING:
            entry.pending = _without(entry.pending, rid) if rid in _few(entry.pending) else None
            entry.pending = _with(entry.pending, rid)
            self._sort_run_pending(entry)
            if rid not in self._pending:
                self._pending[rid] = None

    def _sort_run_pending(self, entry: _Entry) -> None:
        if type(entry.pending) is list:
            place = {rid: index for index, rid in enumerate(_few(entry.requests))}
            entry.pending.sort(key=place.__getitem__)

    def _unsave(self, request: PermissionRequest) -> None:
        """Undo the insertion of a request."""
        rid = request.request_id
        del self._requests[rid]
        entry = self._runs[request.run_id]
        entry.requests = _without(entry.requests, rid)
        if request.status is _PENDING:
            entry.pending = _without(entry.pending, rid)
            self._pending.pop(rid, None)
        if entry.run is None and entry.requests is None and entry.first_event is None:
            del self._runs[request.run_id]

    def _restore(self, old: PermissionRequest, new: PermissionRequest) -> None:
        """Undo the replacement of `old` by `new`."""
        self._requests[old.request_id] = old
        entry = self._runs[old.run_id]
        if old.status is _PENDING and new.status is not _PENDING:
            entry.pending = _with(entry.pending, old.request_id)
            self._sort_run_pending(entry)
        elif new.status is _PENDING and old.status is not _PENDING:
            entry.pending = _without(entry.pending, old.request_id)

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
        if not events:
            return
        start = len(self._event_ids)
        links: list[tuple[str, _Entry, int | None, int | None]] = []
        changed = self._changed
        if changed is None:
            changed = self._changed = set()
        runs, nexts = self._runs, self._event_next
        for event in events:
            row = _event_row(event)
            run_id = row[2]
            entry = runs.get(run_id)
            if entry is None:
                entry = runs[run_id] = _Entry(None, next(self._counter))
            position = len(nexts)
            last = entry.last_event
            links.append((run_id, entry, entry.first_event, last))
            self._put_event(position, row)
            if last is None:
                entry.first_event = position
            else:
                nexts[last] = position
            entry.last_event = position
            changed.add(run_id)
        self._log(lambda: self._drop_events(start, links))

    def _put_event(self, position: int, row: tuple[Any, ...]) -> None:
        """Store an event (its `_event_row`) at `position`: the end of the log, or a hole
        being refilled by an undo."""
        event_id, type_, run_id, at, data = row
        data = self._packer.pack(data)
        if position == len(self._event_ids):
            self._event_ids.append(event_id)
            self._event_types.append(type_)
            self._event_runs.append(run_id)
            self._event_times.append(at)
            self._event_data.append(data)
            self._event_next.append(None)
        else:
            self._event_ids[position] = event_id
            self._event_types[position] = type_
            self._event_runs[position] = run_id
            self._event_times[position] = at
            self._event_data[position] = data
        self._event_index[event_id] = position
        self._event_count += 1

    def _drop_events(
        self, start: int, links: list[tuple[str, _Entry, int | None, int | None]]
    ) -> None:
        """Undo an append: cut the log back to `start` and relink the runs."""
        for event_id in self._event_ids[start:]:
            del self._event_index[event_id]  # type: ignore[arg-type]
        self._event_count -= len(self._event_ids) - start
        for column in (
            self._event_ids,
            self._event_types,
            self._event_runs,
            self._event_times,
            self._event_data,
            self._event_next,
        ):
            del column[start:]
        for run_id, entry, first, last in reversed(links):
            entry.first_event, entry.last_event = first, last
            if last is not None and last < start:  # an event appended here is gone already
                self._event_next[last] = None
            if entry.run is None and entry.requests is None and first is None:
                self._runs.pop(run_id, None)

    def _clear_event(self, position: int) -> None:
        """Make a hole of a deleted run's event (its run's chain goes with the run)."""
        event_id = self._event_ids[position]
        assert event_id is not None
        del self._event_index[event_id]
        self._event_ids[position] = None
        self._event_types[position] = None
        self._event_runs[position] = None
        self._event_times[position] = None
        self._event_data[position] = None
        self._event_count -= 1

    def _compact_events(self) -> None:
        """Close the holes pruning left, once they are half the log (amortised O(1)):
        every position changes, so the index and the runs' chains are rebuilt."""
        size = len(self._event_ids)
        if (size - self._event_count) * 2 <= size:
            return
        columns = (
            self._event_ids,
            self._event_types,
            self._event_runs,
            self._event_times,
            self._event_data,
            self._event_next,
        )
        chains = {
            run_id: (entry.first_event, entry.last_event) for run_id, entry in self._runs.items()
        }
        index = self._event_index
        kept = [pos for pos in range(size) if self._event_ids[pos] is not None]
        self._event_ids = [self._event_ids[pos] for pos in kept]
        self._event_types = [self._event_types[pos] for pos in kept]
        self._event_runs = [self._event_runs[pos] for pos in kept]
        self._event_times = [self._event_times[pos] for pos in kept]
        self._event_data = [self._event_data[pos] for pos in kept]
        self._event_next = [None] * len(kept)
        self._event_index = {}
        for entry in self._runs.values():
            entry.first_event = entry.last_event = None
        for position, event_id in enumerate(self._event_ids):
            assert event_id is not None
            self._event_index[event_id] = position
            entry = self._runs[self._event_runs[position]]  # type: ignore[index]
            if entry.last_event is None:
                entry.first_event = position
            else:
                self._event_next[entry.last_event] = position
            entry.last_event = position

        def undo() -> None:
            (
                self._event_ids,
                self._event_types,
                self._event_runs,
                self._event_times,
                self._event_data,
                self._event_next,
            ) = columns
            self._event_index = index
            for run_id, (first, last) in chains.items():
                self._runs[run_id].first_event, self._runs[run_id].last_event = first, last

        self._log(undo)

    def _event_at(self, position: int) -> Event:
        event_id, type_ = self._event_ids[position], self._event_types[position]
        run_id, at = self._event_runs[position], self._event_times[position]
        assert event_id is not None and type_ is not None and run_id is not None
        assert at is not None
        return _new_event(
            id=event_id,
            type=type_,
            run_id=run_id,
            created_at=at,
            data=self._packer.unpack(self._event_data[position]),
        )

    def _positions(self, position: int | None) -> Iterable[int]:
        """The positions of a run's events from `position` on (following the chain)."""
        nexts = self._event_next
        while position is not None:
            yield position
            position = nexts[position]

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        start = 0
        if after is not None:
            if after not in self._event_index:
                return None
            start = self._event_index[after] + 1
        found: list[Event] = []
        if run_id is None:
            ids = self._event_ids
            for position in range(start, len(ids)):
                if ids[position] is not None:
                    found.append(self._event_at(position))
                    if len(found) == limit:
                        break
            return found
        entry = self._runs.get(run_id)
        if entry is None or entry.last_event is None or entry.last_event < start:
            return found
        for position in self._positions(entry.first_event):
            if position >= start:
                found.append(self._event_at(position))
                if len(found) == limit:
                    break
        return found

    def last_event_id(self) -> str | None:
        for event_id in reversed(self._event_ids):
            if event_id is not None:
                return event_id
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
        self._endpoint_listing(delivery.endpoint_id).add(delivery.id, order)
        self._run_deliveries.setdefault(delivery.run_id, []).append(delivery.id)
        self._watch_delivery(delivery)

    def _endpoint_listing(self, endpoint_id: str) -> _Ordered:
        found = self._endpoint_deliveries.get(endpoint_id)
        if found is None:
            found = self._endpoint_deliveries[endpoint_id] = _Ordered(
                self._delivery_order.__getitem__
            )
        return found

    def _index_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        for delivery in deliveries:
            self._index_delivery(delivery, self._delivery_order[delivery.id])

    def _forget_delivery(self, delivery: WebhookDelivery) -> None:
        del self._deliveries[delivery.id]
        listing = self._endpoint_deliveries[delivery.endpoint_id]
        listing.discard(delivery.id, self._delivery_order[delivery.id])
        if not listing.ids:
            del self._endpoint_deliveries[delivery.endpoint_id]
        of_run = self._run_deliveries[delivery.run_id]
        of_run.remove(delivery.id)
        if not of_run:
            del self._run_deliveries[delivery.run_id]
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


_new_event = record_maker(Event)
_event_row = row_writer(Event, ("id", "type", "run_id", "created_at", "data"))


class _Scope:
    """A transaction of a MemoryStore (one object per kind, reused). Transactions do
    not nest."""

    __slots__ = ("store", "write")

    def __init__(self, store: MemoryStore, write: bool) -> None:
        self.store = store
        self.write = write

    def __enter__(self) -> MemoryStore:
        store = self.store
        me = threading.get_ident()
        if store._owner == me:
            raise StoreError("store_nested", "memory store transactions do not nest")
        store._lock.acquire()
        store._owner = me
        return store

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        store = self.store
        undo, changed, unpend = store._undo, store._changed, store._unpend
        store._undo = store._changed = store._unpend = None
        try:
            if kind is not None:
                changed = None
                if undo is not None:
                    for step in reversed(undo):
                        step()
            elif unpend is not None:
                pending, requests = store._pending, store._requests
                for rid in unpend:
                    request = requests.get(rid)
                    if request is None or request.status is not _PENDING:
                        pending.pop(rid, None)
        finally:
            store._owner = None
            store._lock.release()
        if changed and store._listeners:
            store._notify(frozenset(changed))
