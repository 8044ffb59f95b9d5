"""The PostgreSQL store: opening (schema check and creation), the connection pool, write
transactions that buffer their writes and send them as one statement, read
transactions, and the port's reads; psycopg errors end here (see _errors)."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from hitl_core.adapter import (
    ChangeListener,
    Event,
    HitlError,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Store,
    StoreError,
    Task,
    Transaction,
    UnavailableError,
    WebhookDelivery,
    WebhookEndpoint,
    prefixes,
)

from . import _sql as q
from ._config import Config, parse_url
from ._errors import connect_error, is_connection_error, statement_error
from ._listen import Listener, channel_name
from ._schema import ensure_schema

__all__ = ["PostgresStore", "PostgresTransaction", "open_store"]

Conn = psycopg.Connection[tuple[Any, ...]]

CHECK_IDLE = 5.0
"""A pooled connection that has been idle for longer is pinged before it is used."""
STALE_RETRIES = 2
"""How many fresh connections a transaction tries when its first statement finds the
connection dead (a server restart leaves every pooled connection dead at once)."""

# Connections handed back by forked parents: never closed or collected in the child,
# whose copy of their sockets belongs to the parent.
_INHERITED: list[object] = []


def open_store(url: str) -> PostgresStore:
    """Entry point for `postgresql://` and `postgres://` URLs (see `parse_url`)."""
    return PostgresStore(parse_url(url))


def _usable(text: str) -> bool:
    """Whether `text` can be sent to PostgreSQL: UTF-8 encodable and without NUL. A lookup
    by any other string finds nothing."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class PostgresStore(Store):
    """A hitl-core store in a PostgreSQL schema, shared by any number of processes.

    Every transaction takes a pooled connection and gives it back at its end. A write
    transaction reads in autocommit mode and buffers its writes; at commit they go to the
    server as one statement (one implicit transaction, one round trip) whose
    compare-and-sets raise inside the statement when they fail. Only a write transaction
    that must read its own writes, or lock rows, opens an explicit transaction."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.schema = config.schema
        self.where = f"{config.target} (schema {config.schema})"
        self.statements = q.Statements(config.schema)
        self.channel = channel_name(config.schema)
        self._closed = False
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._idle_since: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()
        conn = self._connect()
        try:
            ensure_schema(conn, self.schema, self.where)
        except psycopg.Error as error:
            raise statement_error(error, conn, self.where, committing=False) from error
        finally:
            conn.close()
        self._pool = self._new_pool()

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where}>"

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> Conn:
        """A connection of its own (not pooled), configured like the pool's."""
        try:
            conn = psycopg.connect(self.config.conninfo, autocommit=True)
        except psycopg.Error as error:
            raise connect_error(error, self.where) from error
        try:
            self._configure(conn)
        except psycopg.Error as error:
            conn.close()
            raise statement_error(error, conn, self.where, committing=False) from error
        return conn

    def _configure(self, conn: Conn) -> None:
        """Set up a new connection: synchronous_commit as asked, else at least on."""
        wanted = self.config.synchronous_commit
        if wanted is None:
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                wanted = "on"
        if wanted is not None:  # one of parse_url's known values
            conn.execute(sql.SQL("SET synchronous_commit = {}").format(sql.Literal(wanted)))

    def _new_pool(self) -> ConnectionPool[Conn]:
        config = self.config
        return ConnectionPool(
            config.conninfo,
            kwargs={"autocommit": True, "cursor_factory": psycopg.RawCursor},
            min_size=config.pool_min_size,
            max_size=config.pool_max_size,
            timeout=config.pool_timeout,
            max_lifetime=config.pool_max_lifetime,
            max_idle=config.pool_max_idle,
            configure=self._configure,
            name=f"hitl {self.where}",
            open=True,
        )

    def acquire(self) -> Conn:
        """A pooled connection, pinged first when it has been idle for CHECK_IDLE."""
        if os.getpid() != self._pid:
            self._after_fork()
        if self._closed:
            raise StoreError("store_closed", f"the PostgreSQL store at {self.where} is closed")
        for _ in range(self.config.pool_max_size + 1):
            try:
                conn = self._pool.getconn()
            except PoolTimeout as error:
                raise self._no_connection(error) from error
            except PoolClosed as error:
                raise StoreError(
                    "store_closed", f"the PostgreSQL store at {self.where} is closed"
                ) from error
            idle = self._idle_since.get(conn)
            if idle is None or time.monotonic() - idle < CHECK_IDLE:
                return conn
            try:
                conn.execute("")
                return conn
            except psycopg.Error:
                self.release(conn, broken=True)
        raise UnavailableError(
            "store_unavailable", f"every pooled connection to {self.where} is broken; try again"
        )

    def _no_connection(self, error: PoolTimeout) -> HitlError:
        """Why no connection came in time: the server's own answer when it refuses us."""
        try:
            probe = psycopg.connect(self.config.conninfo, autocommit=True)
        except psycopg.Error as refused:
            return connect_error(refused, self.where)
        probe.close()
        return UnavailableError(
            "store_busy",
            f"all {self.config.pool_max_size} connections to {self.where} stayed busy for "
            f"{self.config.pool_timeout:g}s (pool_max_size, pool_timeout); try again",
        )

    def release(self, conn: Conn, *, broken: bool = False) -> None:
        """Give a connection back. A broken one is dropped by the pool, and the other idle
        connections are checked at once: after a server restart they are all dead."""
        if broken or conn.broken:
            with suppress(Exception):
                conn.close()
        else:
            self._idle_since[conn] = time.monotonic()
        try:
            self._pool.putconn(conn)
        except Exception:  # the pool was closed meanwhile
            with suppress(Exception):
                conn.close()
            return
        if broken:
            with suppress(Exception):
                self._pool.check()

    def _after_fork(self) -> None:
        """In a forked child: new connections; the parent's are kept, never closed."""
        _INHERITED.append((self._pool, self._listener))
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle_since = weakref.WeakKeyDictionary()
        self._listener = None
        if not self._closed:
            self._pool = self._new_pool()

    # -- the port ----------------------------------------------------------------------
    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
        """A write transaction (buffered writes, one statement at commit) or a read one
        (statements in autocommit mode: each sees what was committed when it ran)."""
        return _Scope(self, write)

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Tell `listener` which runs had events committed by any process: notifications
        sent by the writing transactions, received on one LISTEN connection per store.
        Returns at once; the listener is told None whenever the LISTEN (re)starts."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            if self._closed:
                raise StoreError("store_closed", f"the PostgreSQL store at {self.where} is closed")
            if self._listener is None:
                self._listener = Listener(self.config.conninfo, self.channel, self.where)
            listener_thread = self._listener
        # No waiting for the LISTEN to be in place: once it is, the listener is told None
        # ("look again"), so a commit made before then is not missed, and a caller (an
        # event loop, a wait with a short timeout) is not held up by a slow server.
        return listener_thread.add(listener)

    def close(self) -> None:
        """Stop the change feed and close every connection; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if os.getpid() == self._pid:
            with suppress(Exception):
                self._pool.close(timeout=5.0)


class _Scope(AbstractContextManager[Transaction]):
    """One `with store.transaction(...)` block."""

    __slots__ = ("_store", "_tx", "_write")

    def __init__(self, store: PostgresStore, write: bool) -> None:
        self._store = store
        self._write = write
        self._tx: PostgresTransaction | None = None

    def __enter__(self) -> Transaction:
        self._tx = PostgresTransaction(self._store, self._write)
        return self._tx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx = self._tx
        assert tx is not None
        if exc is None:
            tx.commit()
        else:
            tx.rollback()
            if isinstance(exc, psycopg.Error | PoolTimeout | UnicodeEncodeError):
                raise statement_error(exc, tx.conn, self._store.where, committing=False) from exc


class PostgresTransaction(Transaction):
    """The port's reads and writes inside one transaction of a PostgresStore."""

    __slots__ = (
        "_began",
        "_cursor",
        "_read_versions",
        "_requests",
        "_run_requests",
        "_store",
        "_writes",
        "conn",
        "sql",
        "write",
    )

    def __init__(self, store: PostgresStore, write: bool) -> None:
        self._store = store
        self.sql = store.statements
        self.write = write
        self.conn: Conn | None = store.acquire()
        self._cursor: psycopg.Cursor[Any] | None = None
        self._began = False
        self._writes = q.Writes()
        self._read_versions: dict[str, int] = {}
        # requests that came with their runs: by id, and per run (pending ones, all of
        # them when they all came); forgotten when this transaction writes the run's
        self._requests: dict[str, PermissionRequest] = {}
        self._run_requests: dict[
            str, tuple[list[PermissionRequest], list[PermissionRequest] | None]
        ] = {}

    # -- statements --------------------------------------------------------------------
    def _execute(self, query: str, params: Any, *, committing: bool = False) -> psycopg.Cursor[Any]:
        """Run one statement. A dead connection met before anything of this transaction
        reached the server is replaced (a restarted server kills every pooled connection)
        and the statement sent again; later, it is a HitlError."""
        store = self._store
        for attempt in range(STALE_RETRIES + 1):
            conn = self.conn
            if conn is None:
                raise StoreError("store_closed", "this transaction has ended")
            cursor = self._cursor
            if cursor is None:
                cursor = self._cursor = conn.cursor()
            try:
                return cursor.execute(query, params)
            except psycopg.Error as error:
                retry = (
                    not self._began
                    and not committing
                    and attempt < STALE_RETRIES
                    and is_connection_error(error, conn)
                )
                if not retry:
                    raise statement_error(
                        error, conn, store.where, committing=committing
                    ) from error
                self.conn = self._cursor = None
                store.release(conn, broken=True)
                self.conn = store.acquire()
        raise AssertionError("unreachable")

    def _rows(self, query: str, params: Any) -> list[Any]:
        return self._execute(query, params).fetchall()

    def _one(self, query: str, params: Any) -> Any:
        return self._execute(query, params).fetchone()

    def _begin(self) -> None:
        """Open an explicit transaction (for row locks, or to read our own writes)."""
        if not self._began:
            self._execute("BEGIN", None)
            self._began = True

    def _flush(self) -> None:
        """Send the buffered writes now, inside an explicit transaction."""
        if self._writes:
            self._begin()
            self._send_writes(committing=False)

    def _send_writes(self, *, committing: bool) -> None:
        writes, self._writes = self._writes, q.Writes()
        self._execute(self.sql.write, writes.arguments(self._store.channel), committing=committing)

    def _reading(self, table: str) -> None:
        """Before a read of `table`: send what this transaction wrote to it."""
        if self.write and self._writes.touches(table):
            self._flush()

    def _writing(self) -> q.Writes:
        """The buffer, after sending a buffered delete (deletes go alone)."""
        if self._writes.has_deletes():
            self._flush()
        return self._writes

    def _locking(self) -> str:
        """The row-lock clause for this transaction (none when reading)."""
        if not self.write:
            return ""
        self._begin()
        return " FOR UPDATE"

    # -- the end -------------------------------------------------------------------------
    def commit(self) -> None:
        """Send the buffered writes and commit: one statement when nothing else was
        sent in a transaction, else the last writes then COMMIT."""
        conn = self.conn
        try:
            if self._began:
                if self._writes:
                    self._send_writes(committing=False)
                self._execute("COMMIT", None, committing=True)
            elif self._writes:
                self._send_writes(committing=True)
        except BaseException:
            self._end(rollback=True)
            raise
        assert conn is not None
        self._end(rollback=False)

    def rollback(self) -> None:
        """Drop the buffered writes and roll back whatever was sent."""
        self._writes = q.Writes()
        self._end(rollback=True)

    def _end(self, *, rollback: bool) -> None:
        conn, self.conn = self.conn, None
        self._cursor = None
        if conn is None:
            return
        broken = conn.broken
        if rollback and self._began and not broken:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                broken = True
        self._began = False
        self._store.release(conn, broken=broken)

    # -- runs ----------------------------------------------------------------------------
    def _run_from(self, row: Any) -> Run:
        run: Run = q.RUN.decode(row)
        self._read_versions[run.id] = run.version
        return run

    def get_run(self, run_id: str) -> Run | None:
        if self.write:
            mine = self._writes.run(run_id)
            if mine is not None:
                return mine
        if not _usable(run_id):
            return None
        row = self._one(self.sql.get_run, (run_id,))
        if row is None:
            return None
        width = len(q.RUN.names)
        run = self._run_from(row[:width])
        complete, found = row[width], row[width + 1]
        requests = [q.REQUEST.decode(tuple(fields)) for fields in found or ()]
        self._requests.update((r.request_id, r) for r in requests)
        pending = [r for r in requests if r.is_pending]
        self._run_requests[run.id] = (pending, requests if complete else None)
        return run

    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        self._reading("runs")
        after = 0
        if starting_after is not None:
            found = (
                self._one(self.sql.run_seq, (starting_after,)) if _usable(starting_after) else None
            )
            if found is None:
                return None
            after = found[0]
        if user_id is not None and not _usable(user_id):
            return [], False
        params: list[Any] = [after]
        if user_id is not None:
            params.append(user_id)
        params.append(limit + 1)
        query = self.sql.list_runs[(user_id is not None, None if status is None else str(status))]
        rows = self._rows(query, params)
        return [self._run_from(row) for row in rows[:limit]], len(rows) > limit

    def due_runs(self, now: float, limit: int) -> list[Run]:
        self._reading("runs")
        return [self._run_from(row) for row in self._rows(self.sql.due_runs, (now, limit))]

    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        self._reading("runs")
        rows = self._rows(self.sql.claimable_runs, (now, limit))
        return [self._run_from(row) for row in rows]

    def ended_runs(self, before: float, limit: int) -> list[str]:
        self._reading("runs")
        return [row[0] for row in self._rows(self.sql.ended_runs, (before, limit))]

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        self._requests.clear()
        self._run_requests.clear()
        if self._writes:
            self._flush()
        self._writes.runs_del.extend(run_id for run_id in run_ids if _usable(run_id))

    def insert_run(self, run: Run) -> None:
        self._writing().runs_new[run.id] = run

    def update_run(self, run: Run) -> None:
        self._writing().update_run(run, self._read_versions.get(run.id))

    # -- idempotency keys ------------------------------------------------------------------
    def get_idempotency_key(self, key: str) -> IdempotencyKey | None:
        mine = self._writes.keys_new.get(key)
        if mine is not None:
            return mine
        if not _usable(key):
            return None
        row = self._one(self.sql.get_key, (key,))
        return None if row is None else q.KEY.decode(row)

    def insert_idempotency_key(self, key: IdempotencyKey) -> None:
        self._writing().keys_new[key.key] = key

    # -- requests --------------------------------------------------------------------------
    def get_request(self, request_id: str) -> PermissionRequest | None:
        mine = self._writes.requests.get(request_id) or self._requests.get(request_id)
        if mine is not None:
            return mine
        if not _usable(request_id):
            return None
        row = self._one(self.sql.get_request, (request_id,))
        return None if row is None else q.REQUEST.decode(row)

    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        came = self._run_requests.get(run_id)
        if came is not None:
            found = came[0] if pending_only else came[1]
            if found is not None:
                return list(found)
        self._reading("requests")
        if not _usable(run_id):
            return []
        query = self.sql.run_pending_requests if pending_only else self.sql.run_requests
        return [q.REQUEST.decode(row) for row in self._rows(query, (run_id,))]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        self._reading("requests")
        rows = self._rows(self.sql.pending_requests, (limit,))
        return [q.REQUEST.decode(row) for row in rows]

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        buffered = self._writing().requests
        for request in requests:
            buffered[request.request_id] = request
            self._requests.pop(request.request_id, None)
            self._run_requests.pop(request.run_id, None)

    # -- policies --------------------------------------------------------------------------
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        self._reading("policies")
        if not _usable(tool) or (user_id is not None and not _usable(user_id)):
            return None
        row = self._one(self.sql.find_policy, (q.scope(user_id), tool))
        return None if row is None else q.POLICY.decode(row)

    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        self._reading("policies")
        if not _usable(policy_id):
            return None
        row = self._one(self.sql.get_policy, (policy_id,))
        return None if row is None else q.POLICY.decode(row)

    def candidate_policies(self, user_id: str | None, tool_name: str) -> list[PermissionPolicy]:
        self._reading("policies")
        if not _usable(tool_name) or (user_id is not None and not _usable(user_id)):
            return []
        key = q.scope(user_id)
        rows = self._rows(self.sql.candidate_policies, (key, tool_name, key, prefixes(tool_name)))
        return [q.POLICY.decode(row[2:]) for row in rows]

    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        self._reading("policies")
        if user_id is not None and not _usable(user_id):
            return None if starting_after is not None else ([], False)
        key = q.scope(user_id)
        after = 0
        if starting_after is not None:
            found = (
                self._one(self.sql.policy_seq, (starting_after, key))
                if _usable(starting_after)
                else None
            )
            if found is None:
                return None
            after = found[0]
        rows = self._rows(self.sql.list_policies, (key, after, limit + 1))
        return [q.POLICY.decode(row) for row in rows[:limit]], len(rows) > limit

    def insert_policy(self, policy: PermissionPolicy) -> None:
        self._writing().policies_new[policy.id] = policy

    def delete_policy(self, policy_id: str) -> None:
        if self._writes:
            self._flush()
        self._writes.policies_del.append(policy_id)

    # -- tasks -----------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        mine = self._writes.tasks_new.get(task_id)
        if mine is not None:
            return mine
        if not _usable(task_id):
            return None
        row = self._one(self.sql.get_task, (task_id,))
        return None if row is None else q.TASK.decode(row)

    def insert_task(self, task: Task) -> None:
        self._writing().tasks_new[task.id] = task

    # -- events ----------------------------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> None:
        self._writing().events.extend(events)

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        self._reading("events")
        start = 0
        if after is not None:
            found = self._one(self.sql.event_seq, (after,)) if _usable(after) else None
            if found is None:
                return None
            start = found[0]
        if run_id is None:
            rows = self._rows(self.sql.list_events, (start, limit))
        elif not _usable(run_id):
            return []
        else:
            rows = self._rows(self.sql.list_run_events, (run_id, start, limit))
        return [q.EVENT.decode(row) for row in rows]

    def last_event_id(self) -> str | None:
        self._reading("events")
        row = self._one(self.sql.last_event, ())
        return None if row is None else str(row[0])

    # -- webhooks --------------------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        mine = self._writes.cursors.get(name)
        if mine is not None:
            return mine
        if not _usable(name):
            return None
        row = self._one(self.sql.get_cursor + self._locking(), (name,))
        return None if row is None else str(row[0])

    def set_cursor(self, name: str, event_id: str) -> None:
        self._writing().cursors[name] = event_id

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        self._reading("webhook_endpoints")
        if not _usable(endpoint_id):
            return None
        lock = " FOR SHARE" if self._locking() else ""
        row = self._one(self.sql.get_endpoint + lock, (endpoint_id,))
        return None if row is None else q.ENDPOINT.decode(row)

    def list_endpoints(
        self, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool] | None:
        self._reading("webhook_endpoints")
        after = 0
        if starting_after is not None:
            found = (
                self._one(self.sql.endpoint_seq, (starting_after,))
                if _usable(starting_after)
                else None
            )
            if found is None:
                return None
            after = found[0]
        lock = " FOR SHARE" if self._locking() else ""
        rows = self._rows(self.sql.list_endpoints + lock, (after, limit + 1))
        return [q.ENDPOINT.decode(row) for row in rows[:limit]], len(rows) > limit

    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._writing().endpoints_new[endpoint.id] = endpoint

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        writes = self._writing()
        if endpoint.id in writes.endpoints_new:
            writes.endpoints_new[endpoint.id] = endpoint
        else:
            writes.endpoints_upd[endpoint.id] = endpoint

    def delete_endpoint(self, endpoint_id: str) -> None:
        if self._writes:
            self._flush()
        self._writes.endpoints_del.append(endpoint_id)

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        mine = self._writes.deliveries.get(delivery_id)
        if mine is not None:
            return mine
        self._reading("webhook_deliveries")
        if not _usable(delivery_id):
            return None
        row = self._one(self.sql.get_delivery + self._locking(), (delivery_id,))
        return None if row is None else q.DELIVERY.decode(row)

    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        buffered = self._writing().deliveries
        for delivery in deliveries:
            buffered[delivery.id] = delivery

    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        self._reading("webhook_deliveries")
        lock = self._locking()
        query = self.sql.due_deliveries + (lock + " SKIP LOCKED" if lock else "")
        return [q.DELIVERY.decode(row) for row in self._rows(query, (now, limit))]

    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        self._reading("webhook_deliveries")
        if not _usable(endpoint_id):
            return None if starting_after is not None else ([], False)
        after = 0
        if starting_after is not None:
            found = (
                self._one(self.sql.delivery_seq, (starting_after, endpoint_id))
                if _usable(starting_after)
                else None
            )
            if found is None:
                return None
            after = found[0]
        if status is None:
            rows = self._rows(self.sql.list_deliveries[False], (endpoint_id, after, limit + 1))
        else:
            rows = self._rows(
                self.sql.list_deliveries[True], (endpoint_id, after, status, limit + 1)
            )
        return [q.DELIVERY.decode(row) for row in rows[:limit]], len(rows) > limit
