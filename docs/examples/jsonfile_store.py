"""A hitl-core store adapter written the way a third-party package would write one: the
whole state in one JSON file. It is the worked example of docs/adapters.md.

    hitl = hitl_core.connect("jsonfile:///state.json")        # relative to the cwd
    hitl = hitl_core.connect("jsonfile:////var/lib/app.json")  # absolute: a fourth slash

How it keeps the port's promises:

- All or nothing: a write transaction works on its own copy of the tables. Only when the
  block ends normally is the copy written to a temporary file, flushed, and renamed over
  the state file (an atomic replace), then made the store's current state. If the block
  raises, the copy is dropped.
- One writer at a time, across threads and processes: every transaction holds an
  `fcntl.flock` on a lock file beside the state file (exclusive for writes, shared for
  reads) and a thread lock. So this module runs on Unix only.
- Seeing other processes' commits: the state file's first line holds a generation number
  that every commit increases; a transaction that finds a new number reloads the file.

It is deliberately simple, not fast: every lookup scans a table and every commit rewrites
the whole file. A real adapter indexes what the port's docstrings say it looks up.
It imports only public names of hitl_core (`hitl_core.adapter`, the adapter's module).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from hitl_core.adapter import (
    ConflictError,
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Store,
    StoreError,
    Task,
    Transaction,
    ValidationError,
    WebhookDelivery,
    WebhookEndpoint,
    from_row,
    is_pattern,
    to_row,
)

__all__ = ["JsonFileStore", "JsonFileTransaction", "open_store"]

PREFIX = "jsonfile:///"
FORMAT = "hitl-jsonfile"
VERSION = 1

# table name -> the record class it holds (cursors hold plain event ids)
RECORDS: dict[str, type[Any]] = {
    "runs": Run,
    "requests": PermissionRequest,
    "policies": PermissionPolicy,
    "tasks": Task,
    "events": Event,
    "endpoints": WebhookEndpoint,
    "deliveries": WebhookDelivery,
    "keys": IdempotencyKey,
}
TABLES = (*RECORDS, "cursors")

Tables = dict[str, dict[str, Any]]


def open_store(url: str) -> JsonFileStore:
    """Entry point for `jsonfile:///path`: open the file, or start a new one there."""
    if not isinstance(url, str) or not url.startswith(PREFIX) or len(url) == len(PREFIX):
        raise ValidationError(
            "invalid_url", f"a JSON file store URL is 'jsonfile:///path'; got {url!r}"
        )
    path = url[len(PREFIX) :]
    if "?" in path:
        raise ValidationError("invalid_url", f"a JSON file store takes no options; got {url!r}")
    return JsonFileStore(path)


# -- records <-> JSON ----------------------------------------------------------------------


def encode(record: Any) -> dict[str, Any]:
    """A record as a JSON object: its row form (`to_row`), which `json` can write."""
    return to_row(record)


def decode(cls: type[Any], data: dict[str, Any]) -> Any:
    """The record that `encode` wrote (`from_row` checks every field)."""
    return from_row(cls, data)


def empty_tables() -> Tables:
    return {name: {} for name in TABLES}


def key_of(record: Any) -> str:
    if isinstance(record, PermissionRequest):
        return record.request_id
    if isinstance(record, IdempotencyKey):
        return record.key
    return str(record.id)


def dump(tables: Tables) -> dict[str, Any]:
    out: dict[str, Any] = {name: [encode(r) for r in tables[name].values()] for name in RECORDS}
    out["cursors"] = dict(tables["cursors"])
    return out


def load(data: dict[str, Any]) -> Tables:
    tables = empty_tables()
    for name, cls in RECORDS.items():
        for item in data.get(name, []):  # tables added later start empty
            record = decode(cls, item)
            tables[name][key_of(record)] = record
    tables["cursors"] = dict(data["cursors"])
    return tables


def index_after(ids: Sequence[str], cursor: str | None) -> int | None:
    """Where a page starts: 0 without a cursor, just after it, or None if it is unknown."""
    if cursor is None:
        return 0
    try:
        return ids.index(cursor) + 1
    except ValueError:
        return None


def page(items: list[Any], cursor: str | None, limit: int) -> tuple[list[Any], bool] | None:
    """Up to `limit` items after `cursor` and whether more follow (None: unknown cursor)."""
    start = index_after([key_of(item) for item in items], cursor)
    if start is None:
        return None
    rest = items[start:]
    return rest[:limit], len(rest) > limit


# -- the transaction ----------------------------------------------------------------------


class JsonFileTransaction(Transaction):
    """The port's reads and writes over plain dicts kept in insertion order, which is
    creation order: every listing the port asks for is oldest first."""

    def __init__(self, tables: Tables, *, writable: bool) -> None:
        self._tables = tables
        self._writable = writable

    def _read(self, name: str) -> dict[str, Any]:
        return self._tables[name]

    def _write(self, name: str) -> dict[str, Any]:
        if not self._writable:  # a read transaction shares the committed tables
            raise StoreError("read_only_transaction", "a write in a read transaction")
        return self._tables[name]

    # runs
    def get_run(self, run_id: str) -> Run | None:
        run: Run | None = self._read("runs").get(run_id)
        return run

    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        runs = list(self._read("runs").values())
        start = index_after([run.id for run in runs], starting_after)
        if start is None:
            return None
        chosen = [
            run
            for run in runs[start:]
            if (user_id is None or run.user_id == user_id)
            and (status is None or run.status == status)
        ]
        return chosen[:limit], len(chosen) > limit

    def due_runs(self, now: float, limit: int) -> list[Run]:
        due = [
            r for r in self._read("runs").values() if r.deadline is not None and r.deadline <= now
        ]
        due.sort(key=lambda run: run.deadline)  # stable: equal deadlines keep creation order
        return due[:limit]

    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        free = [
            r
            for r in self._read("runs").values()
            if r.status == "running" and (r.lease_expires or 0.0) <= now
        ]
        free.sort(key=lambda run: run.lease_expires or 0.0)  # stable: ties in creation order
        return free[:limit]

    def ended_runs(self, before: float, limit: int) -> list[str]:
        ended = [r for r in self._read("runs").values() if r.is_terminal and r.updated_at < before]
        ended.sort(key=lambda run: run.updated_at)
        return [run.id for run in ended[:limit]]

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        gone = set(run_ids)
        for name in ("requests", "events", "keys"):
            table = self._write(name)
            for key in [k for k, record in table.items() if record.run_id in gone]:
                del table[key]
        deliveries = self._write("deliveries")
        for key in [k for k, d in deliveries.items() if d.run_id in gone and d.status != "pending"]:
            del deliveries[key]
        runs = self._write("runs")
        for run_id in run_ids:
            runs.pop(run_id, None)  # a run deleted before: only its deliveries were left

    def insert_run(self, run: Run) -> None:
        self._write("runs")[run.id] = run

    def update_run(self, run: Run) -> None:
        runs = self._write("runs")
        stored = runs.get(run.id)
        if stored is None or stored.version != run.version - 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        runs[run.id] = run

    # requests
    def get_request(self, request_id: str) -> PermissionRequest | None:
        request: PermissionRequest | None = self._read("requests").get(request_id)
        return request

    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        return [
            request
            for request in self._read("requests").values()
            if request.run_id == run_id and (request.is_pending or not pending_only)
        ]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        pending = (r for r in self._read("requests").values() if r.is_pending)
        return list(itertools.islice(pending, limit))

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        table = self._write("requests")
        for request in requests:
            table[request.request_id] = request  # a replaced key keeps its place

    # policies
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        for policy in self._read("policies").values():
            if policy.user_id == user_id and policy.tool_name == tool:
                found: PermissionPolicy = policy
                return found
        return None

    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        policy: PermissionPolicy | None = self._read("policies").get(policy_id)
        return policy

    def candidate_policies(self, user_id: str | None, tool_name: str) -> list[PermissionPolicy]:
        # The exact policy first, then every pattern policy of the scope in creation
        # order; the port allows returning patterns that cannot match (the engine matches).
        exact = self.find_policy(user_id, tool_name)
        found = [] if exact is None else [exact]
        found.extend(
            policy
            for policy in self._read("policies").values()
            if policy.user_id == user_id and policy is not exact and is_pattern(policy.tool_name)
        )
        return found

    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        scope = [p for p in self._read("policies").values() if p.user_id == user_id]
        return page(scope, starting_after, limit)

    def insert_policy(self, policy: PermissionPolicy) -> None:
        self._write("policies")[policy.id] = policy

    def delete_policy(self, policy_id: str) -> None:
        del self._write("policies")[policy_id]

    # idempotency keys
    def get_idempotency_key(self, key: str) -> IdempotencyKey | None:
        found: IdempotencyKey | None = self._read("keys").get(key)
        return found

    def insert_idempotency_key(self, key: IdempotencyKey) -> None:
        self._write("keys")[key.key] = key

    # tasks
    def get_task(self, task_id: str) -> Task | None:
        task: Task | None = self._read("tasks").get(task_id)
        return task

    def insert_task(self, task: Task) -> None:
        self._write("tasks")[task.id] = task

    # events
    def append_events(self, events: Sequence[Event]) -> None:
        table = self._write("events")
        for event in events:
            table[event.id] = event

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        events = list(self._read("events").values())
        start = index_after([event.id for event in events], after)
        if start is None:
            return None
        chosen = (e for e in events[start:] if run_id is None or e.run_id == run_id)
        return list(itertools.islice(chosen, limit))

    def last_event_id(self) -> str | None:
        return next(reversed(self._read("events")), None)

    # webhooks
    def get_cursor(self, name: str) -> str | None:
        cursor: str | None = self._read("cursors").get(name)
        return cursor

    def set_cursor(self, name: str, event_id: str) -> None:
        self._write("cursors")[name] = event_id

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        endpoint: WebhookEndpoint | None = self._read("endpoints").get(endpoint_id)
        return endpoint

    def list_endpoints(
        self, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool] | None:
        return page(list(self._read("endpoints").values()), starting_after, limit)

    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._write("endpoints")[endpoint.id] = endpoint

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._write("endpoints")[endpoint.id] = endpoint

    def delete_endpoint(self, endpoint_id: str) -> None:
        del self._write("endpoints")[endpoint_id]
        deliveries = self._write("deliveries")
        for delivery in [d for d in deliveries.values() if d.endpoint_id == endpoint_id]:
            del deliveries[delivery.id]

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        delivery: WebhookDelivery | None = self._read("deliveries").get(delivery_id)
        return delivery

    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        table = self._write("deliveries")
        for delivery in deliveries:
            table[delivery.id] = delivery

    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        due = [
            d
            for d in self._read("deliveries").values()
            if d.status == "pending" and (d.next_retry_at or 0.0) <= now
        ]
        due.sort(key=lambda d: d.next_retry_at or 0.0)  # stable: ties keep creation order
        return due[:limit]

    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        mine = [d for d in self._read("deliveries").values() if d.endpoint_id == endpoint_id]
        start = index_after([d.id for d in mine], starting_after)
        if start is None:
            return None
        chosen = [d for d in mine[start:] if status is None or d.status == status]
        return chosen[:limit], len(chosen) > limit


# -- the store ----------------------------------------------------------------------------


class JsonFileStore(Store):
    """The state file, its lock file, and the tables as last loaded or committed."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError("store_unavailable", f"directory {directory!r} does not exist")
        self._tables = empty_tables()
        self._generation = 0
        self._refresh()  # refuse a file that is not ours before creating anything
        self._thread_lock = threading.Lock()  # the engine never nests transactions
        try:
            self._lock_fd: int | None = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StoreError(
                "store_unavailable", f"cannot open {self.path}.lock: {error}"
            ) from error

    def __repr__(self) -> str:
        return f"<JsonFileStore {self.path!r}>"

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        """Hold the locks for the block; a write block that ends normally is committed
        to the file, one that raises leaves the file and the tables as they were."""
        with self._thread_lock:
            fd = self._lock_fd
            if fd is None:
                raise StoreError("store_closed", f"{self!r} is closed")
            self._flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                self._refresh()
                if not write:
                    yield JsonFileTransaction(self._tables, writable=False)
                    return
                work = {name: dict(table) for name, table in self._tables.items()}
                yield JsonFileTransaction(work, writable=True)
                self._commit(work)  # not reached when the block raised
            finally:
                self._flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file; safe to call twice."""
        with self._thread_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- the file ----------------------------------------------------------------------
    def _flock(self, fd: int, how: int) -> None:
        try:
            fcntl.flock(fd, how)
        except OSError as error:
            raise StoreError("store_io_error", f"cannot lock {self.path}.lock: {error}") from error

    def _refresh(self) -> None:
        """Reload the tables if another store object or process committed since."""
        try:
            with open(self.path, encoding="utf-8") as file:
                header = self._header(file.readline())
                if header["generation"] != self._generation:
                    self._tables = load(json.loads(file.readline()))
                    self._generation = header["generation"]
        except FileNotFoundError:
            if self._generation != 0:
                raise StoreError("store_io_error", f"{self.path} disappeared") from None
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError("store_corrupt", f"cannot read {self.path}: {error}") from error

    def _header(self, line: str) -> dict[str, Any]:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise StoreError("not_a_store", f"{self.path} is not a hitl-core JSON file store")
        if header.get("version") != VERSION:
            raise StoreError(
                "unsupported_version", f"{self.path} has format version {header.get('version')}"
            )
        return header

    def _commit(self, tables: Tables) -> None:
        generation = self._generation + 1
        header = {"format": FORMAT, "version": VERSION, "generation": generation}
        temporary = self.path + ".tmp"  # only the holder of the exclusive lock writes it
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(json.dumps(header) + "\n")
                file.write(json.dumps(dump(tables), ensure_ascii=False, separators=(",", ":")))
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            directory = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(directory)  # make the rename itself durable
            finally:
                os.close(directory)
        except OSError as error:
            raise StoreError("store_io_error", f"cannot write {self.path}: {error}") from error
        self._tables, self._generation = tables, generation
