"""The SQLite store: its URL, safe opening, a connection per thread, transactions (BEGIN
IMMEDIATE writers, busy retry) and the port's reads and writes; sqlite3 errors end here."""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from hitl_core.adapter import (
    ChangeListener,
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
    UnavailableError,
    ValidationError,
    WebhookDelivery,
    WebhookEndpoint,
    prefixes,
)

from . import _rows as q
from ._schema import (
    SCHEMA_VERSION,
    create_schema,
    inspect_file,
    is_wal,
    read_header,
    read_schema,
    upgrade_schema,
)
from ._watch import Watcher, tell, watch

__all__ = ["SqliteStore", "open_store", "parse_url"]

PREFIX = "sqlite:///"
MEMORY = ":memory:"
SYNCHRONOUS = ("FULL", "NORMAL")

BUSY_TIMEOUT = 0.5
"""Seconds SQLite itself waits for a lock (its busy handler) before reporting busy."""
BUSY_ATTEMPTS = 8
"""How many times a busy BEGIN IMMEDIATE is tried before StoreError('store_busy')."""
BACKOFF_FIRST = 0.002
BACKOFF_MAX = 0.2
DECODED_CACHE = 4096
"""Records per connection kept with the row they were decoded from (see `_decode`)."""
STATEMENT_CACHE = 1024
"""Prepared statements kept per connection (the pattern-policy lookup has one per tool
name length, up to 257, beside the store's fixed statements)."""
LOCK_WAIT = 60.0
"""Seconds a thread waits for its own process's writer lock before 'store_busy'."""

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CODES = {
    sqlite3.SQLITE_BUSY: "store_busy",
    sqlite3.SQLITE_LOCKED: "store_busy",
    sqlite3.SQLITE_READONLY: "store_read_only",
    sqlite3.SQLITE_CANTOPEN: "store_unavailable",
    sqlite3.SQLITE_PERM: "store_unavailable",
    sqlite3.SQLITE_AUTH: "store_unavailable",
    sqlite3.SQLITE_FULL: "store_full",
    sqlite3.SQLITE_IOERR: "store_io_error",
    sqlite3.SQLITE_CORRUPT: "store_corrupt",
    sqlite3.SQLITE_NOTADB: "not_a_database",
    sqlite3.SQLITE_CONSTRAINT: "store_constraint",
}


def parse_url(url: str) -> tuple[str, str]:
    """The path (or ':memory:') and the synchronous setting of an sqlite:/// URL."""
    if not isinstance(url, str) or not url.startswith(PREFIX):
        raise ValidationError(
            "invalid_url",
            f"an SQLite store URL is 'sqlite:///relative.db', 'sqlite:////absolute.db' or "
            f"'sqlite:///:memory:'; got {url!r}",
        )
    path, _, query = url[len(PREFIX) :].partition("?")
    if not path:
        raise ValidationError("invalid_url", f"no file path in {url!r}")
    synchronous = "FULL"
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as error:
            raise ValidationError("invalid_url", f"cannot read the query of {url!r}") from error
        for key, value in pairs:
            if key != "synchronous":
                raise ValidationError(
                    "invalid_url", f"unknown option {key!r} in {url!r} (known: synchronous)"
                )
            if value.upper() not in SYNCHRONOUS:
                raise ValidationError(
                    "invalid_url", f"synchronous must be FULL or NORMAL; got {value!r} in {url!r}"
                )
            synchronous = value.upper()
    return path, synchronous


def open_store(url: str) -> SqliteStore:
    """Entry point for `sqlite:///path.db` (see `parse_url`): open or create the file."""
    path, synchronous = parse_url(url)
    return SqliteStore(path, synchronous=synchronous)


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(error) or "busy" in str(error)


def store_error(error: sqlite3.Error, doing: str, path: str) -> StoreError:
    """The StoreError for an sqlite3 error met while `doing` something with `path`
    (UnavailableError, 503, when the file was only busy: worth trying again)."""
    code = getattr(error, "sqlite_errorcode", None)
    name = _CODES.get(code & 0xFF, "store_error") if code is not None else "store_error"
    if name == "store_error" and _is_busy(error):
        name = "store_busy"
    if isinstance(error, sqlite3.ProgrammingError) and "closed" in str(error):
        name = "store_closed"
    kind = UnavailableError if name == "store_busy" else StoreError
    return kind(name, f"SQLite store {path!r}: {doing} failed: {error}")


class _Session:
    """One connection, its transaction object, and whether a transaction is open on it.
    `lock` is held while a transaction uses the connection: `close` closes only the
    connections it can lock, and a transaction ending on a closed store closes its own
    (closing a connection another thread runs a statement on crashes the process)."""

    __slots__ = ("active", "control", "db", "holds_writer", "lock", "thread", "tx")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.lock = threading.Lock()
        self.control = db.cursor()  # BEGIN, COMMIT, ROLLBACK (no new cursor for each)
        self.tx = SqliteTransaction(db)
        self.active = False
        self.holds_writer = False
        self.thread = threading.current_thread()


class SqliteStore(Store):
    """A hitl-core store in one SQLite file (WAL mode), or in memory for ':memory:'.

    File stores give each thread its own connection; a write transaction is a short
    BEGIN IMMEDIATE, so writers of every process take turns, and threads of this process
    queue on a lock first. The memory store has one connection that every thread shares
    under a lock."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValidationError(
                "invalid_url", f"synchronous must be FULL or NORMAL, not {synchronous!r}"
            )
        self._memory = path == MEMORY
        self.path = path if self._memory else os.path.abspath(path)
        self.synchronous = synchronous
        self._closed = False
        self._pid = os.getpid()
        self._registry_lock = threading.Lock()
        self._sessions: list[_Session] = []
        self._local = threading.local()
        self._writer = threading.RLock() if self._memory else threading.Lock()
        self._shared: _Session | None = None
        self._watcher: Watcher | None = None  # ':memory:' only: its own commits
        self._removers: dict[int, Callable[[], None]] = {}  # this store's file listeners
        self._remover_ids = itertools.count()
        if self._memory:
            self._shared = self._register(self._open_memory())
        else:
            self._local.session = self._register(self._open_file())

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} synchronous={self.synchronous}>"

    def _closed_error(self) -> StoreError:
        return StoreError("store_closed", f"the SQLite store {self.path!r} is closed")

    # -- opening -----------------------------------------------------------------------
    def _open_memory(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            MEMORY, isolation_level=None, check_same_thread=False, cached_statements=STATEMENT_CACHE
        )
        try:
            db.execute("BEGIN IMMEDIATE")
            create_schema(db)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            db.close()
            raise store_error(error, "creating the schema", self.path) from error
        return db

    def _open_file(self) -> sqlite3.Connection:
        """Check the file, then open it read-write and make sure our schema is there."""
        path = self.path
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise StoreError(
                "store_unavailable", f"cannot open {path!r}: directory {directory!r} does not exist"
            )
        if os.path.isdir(path):
            raise StoreError("store_unavailable", f"cannot open {path!r}: it is a directory")
        version: int | None = None
        wal = False
        if os.path.exists(path) and os.path.getsize(path) > 0:
            header = read_header(path)
            wal = is_wal(header)
            version = inspect_file(path, header)
        elif not os.access(directory, os.W_OK):
            raise StoreError(
                "store_unavailable",
                f"cannot create {path!r}: directory {directory!r} is not writable",
            )
        db = self._connect()
        try:
            self._prepare(db, version, wal)
        except sqlite3.Error as error:
            db.close()
            raise store_error(error, "opening", path) from error
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection, version: int | None, wal: bool) -> None:
        """Switch to WAL and create the schema (a new file), or prove that the file can be
        used (an existing one). Retried while another process holds a lock, as happens
        when several processes create the same file at once."""
        delay = BACKOFF_FIRST
        for attempt in range(BUSY_ATTEMPTS):
            try:
                if version is None or not wal:
                    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StoreError(
                            "store_unavailable",
                            f"{self.path!r} cannot use write-ahead logging (journal mode {mode!r})",
                        )
                if version is None or version < SCHEMA_VERSION:
                    self._create(db)
                else:
                    # A plain read on the read-write connection: proves the -wal and -shm
                    # files can be opened (a read-only directory fails here, not later).
                    read_schema(db, self.path)
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or attempt == BUSY_ATTEMPTS - 1:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    def _create(self, db: sqlite3.Connection) -> None:
        """Create the schema, or upgrade an older one of ours, in one transaction, unless
        another process just did."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = read_schema(db, self.path)
            if version is None:
                create_schema(db)
            elif version < SCHEMA_VERSION:
                upgrade_schema(db, version)
            db.execute("COMMIT")
        except BaseException:
            _quiet(db, "ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=STATEMENT_CACHE,
            )
        except sqlite3.Error as error:
            raise StoreError(
                "store_unavailable",
                f"cannot open {self.path!r}: {error} (is the directory writable?)",
            ) from error
        try:
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as error:
            db.close()
            raise store_error(error, "configuring", self.path) from error
        return db

    def _register(self, db: sqlite3.Connection) -> _Session:
        session = _Session(db)
        with self._registry_lock:
            if self._closed:
                db.close()
                raise self._closed_error()
            alive = []
            for old in self._sessions:
                if old.thread.is_alive():
                    alive.append(old)
                else:  # its thread has ended: nobody can use that connection again
                    old.db.close()
            alive.append(session)
            self._sessions = alive
        return session

    def _session(self) -> _Session:
        if self._shared is not None:
            return self._shared
        if os.getpid() != self._pid:  # forked: the parent's connections must not be used
            self._pid = os.getpid()
            self._local = threading.local()
            self._sessions = []
            self._writer = threading.Lock()
            self._registry_lock = threading.Lock()
        try:
            session: _Session = self._local.session
            return session
        except AttributeError:
            pass
        if self._closed:
            raise self._closed_error()
        session = self._register(self._connect())
        self._local.session = session
        return session

    # -- transactions ------------------------------------------------------------------
    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
        """A write transaction is BEGIN IMMEDIATE (retried with backoff while the file is
        busy); a read one is a deferred BEGIN, one consistent snapshot."""
        return _Scope(self, write)

    def _begin_immediate(self, db: sqlite3.Cursor) -> None:
        delay = BACKOFF_FIRST
        for attempt in range(BUSY_ATTEMPTS):
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    raise
                if attempt == BUSY_ATTEMPTS - 1:
                    raise UnavailableError(
                        "store_busy",
                        f"SQLite store {self.path!r} stayed locked by another writer "
                        f"through {BUSY_ATTEMPTS} attempts; try again",
                    ) from error
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Tell `listener` which runs had events committed, by any connection of any
        process: the process's watcher thread of the file (one for all its stores on
        it) reads `PRAGMA data_version` (which changes when another connection commits)
        every 1-16 ms and then the new events' run ids. Closing the store removes its
        listeners."""
        with self._registry_lock:
            if self._closed:
                raise self._closed_error()
            if self._memory:  # nothing else can write to it: only this store's commits
                if self._watcher is None:
                    self._watcher = Watcher(None, self.path)
                return self._watcher.add(listener)
            remove = watch(self.path, listener)
            key = next(self._remover_ids)
            self._removers[key] = remove

        def removed() -> None:
            with self._registry_lock:
                found = self._removers.pop(key, None)
            if found is not None:
                found()

        return removed

    def _committed(self, run_ids: frozenset[str]) -> None:
        """Tell this process's listeners at once about a commit of its own."""
        if self._memory:
            if self._watcher is not None:
                self._watcher.tell(run_ids)
        else:
            tell(self.path, run_ids)

    def close(self) -> None:
        """Close every connection this store opened (in every thread); safe twice."""
        with self._registry_lock:
            if self._closed:
                return
            self._closed = True
            sessions, self._sessions = self._sessions, []
            self._watcher = None
            removers, self._removers = list(self._removers.values()), {}
        for remove in removers:
            remove()
        for session in sessions:
            if session.lock.acquire(blocking=False):  # else its transaction closes it
                try:
                    with suppress(sqlite3.Error):
                        session.db.close()
                finally:
                    session.lock.release()
        self._local = threading.local()


class _Scope(AbstractContextManager[Transaction]):
    """One `with store.transaction(...)` block. Transactions do not nest."""

    __slots__ = ("_session", "_store", "_write")

    def __init__(self, store: SqliteStore, write: bool) -> None:
        self._store = store
        self._write = write
        self._session: _Session | None = None

    def __enter__(self) -> Transaction:
        store = self._store
        if store._closed:
            raise store._closed_error()
        session = store._session()
        if store._memory:  # one shared session: wait for it (the lock is re-entrant)
            store._writer.acquire()
        if session.active:
            if store._memory:
                store._writer.release()
            raise StoreError("store_nested", "SQLite store transactions do not nest")
        session.lock.acquire()  # only close() ever competes for it, without waiting
        try:
            if store._closed:  # closed since the check above
                raise store._closed_error()
            if self._write and not store._memory:
                self._hold_writer(session)
        except BaseException:
            self._release(session)
            raise
        try:
            if self._write:
                store._begin_immediate(session.control)
            else:
                session.control.execute("BEGIN")
        except BaseException as error:
            self._release(session)
            if isinstance(error, sqlite3.Error):
                raise store_error(error, "starting a transaction", store.path) from error
            raise
        if store._closed:  # closed while this one waited for the writer lock or the file
            _quiet(session.control, "ROLLBACK")
            self._release(session)
            raise store._closed_error()
        session.active = True
        session.tx.begin()
        self._session = session
        return session.tx

    def _hold_writer(self, session: _Session) -> None:
        if not self._store._writer.acquire(timeout=LOCK_WAIT):
            raise UnavailableError(
                "store_busy", f"waited {LOCK_WAIT}s for this process's writer lock; try again"
            )
        session.holds_writer = True

    def _release(self, session: _Session) -> None:
        """End the transaction's hold on the connection (closing it if the store was
        closed meanwhile) and on the writer locks."""
        store = self._store
        try:
            if store._closed:  # close() left this connection to us
                with suppress(sqlite3.Error):
                    session.db.close()
        finally:
            session.lock.release()
            if session.holds_writer:
                session.holds_writer = False
                store._writer.release()
            if store._memory:
                store._writer.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        assert session is not None
        store = self._store
        db = session.control
        changed = session.tx.changed
        try:
            if exc is None:
                try:
                    self._run(db, "COMMIT", "committing")
                except StoreError:
                    _quiet(db, "ROLLBACK")
                    raise
            else:
                _quiet(db, "ROLLBACK")
        finally:
            session.active = False
            self._release(session)
        if exc is None and changed:
            store._committed(frozenset(changed))
        if isinstance(exc, sqlite3.Error):
            raise store_error(exc, "a transaction", store.path) from exc
        if isinstance(exc, UnicodeEncodeError):
            raise ValidationError(
                "invalid_request", f"text that cannot be stored as UTF-8: {exc}"
            ) from exc

    def _run(self, db: sqlite3.Cursor, sql: str, doing: str) -> None:
        try:
            db.execute(sql)
        except sqlite3.Error as error:
            raise store_error(error, doing, self._store.path) from error


def _quiet(db: sqlite3.Connection | sqlite3.Cursor, sql: str) -> None:
    """Run a rollback statement; a failure there must not hide the error being raised."""
    with suppress(sqlite3.Error):
        db.execute(sql)


def _remember(
    decoded: dict[str, tuple[tuple[Any, ...], Any]], row: tuple[Any, ...], record: Any
) -> None:
    """Keep `record` as the decoding of `row` (a row of `seq, id, ...`)."""
    if len(decoded) >= DECODED_CACHE:
        decoded.clear()
    decoded[row[1]] = (row, record)


class SqliteTransaction(Transaction):
    """The port's reads and writes on one connection inside an open transaction.

    Within a transaction it remembers the runs and requests it read or wrote (their seq
    and stored row): the engine updates what it has just read, so an update is found by
    its rowid and sets only the columns that changed, and the rows it inserts for a run
    name the run's seq without looking it up. Forgotten when the next transaction
    begins (`begin`)."""

    __slots__ = (
        "_decoded_requests",
        "_decoded_runs",
        "_execute",
        "_executemany",
        "_requests",
        "_runs",
        "changed",
    )

    def __init__(self, db: sqlite3.Connection) -> None:
        cursor = db.cursor()
        self._execute = cursor.execute
        self._executemany = cursor.executemany
        self.changed: set[str] = set()
        """The runs whose events this transaction appended (told to listeners on commit)."""
        self._runs: dict[str, tuple[int, Run, tuple[Any, ...]]] = {}
        self._requests: dict[str, tuple[int, tuple[Any, ...]]] = {}
        # Across transactions: the records last decoded from (or written as) each row, by
        # id, with that row. A row read again unchanged gives the same immutable record
        # back without decoding it again.
        self._decoded_runs: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self._decoded_requests: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def begin(self) -> None:
        """Forget what the last transaction saw."""
        self.changed = set()
        self._runs.clear()
        self._requests.clear()

    # A string that cannot be encoded as UTF-8 (a lone surrogate) cannot be stored, so a
    # lookup by one finds nothing, as in the memory store; writing one is refused.
    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        try:
            return self._execute(sql, params).fetchone()
        except UnicodeEncodeError:
            return None

    def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._execute(sql, params).fetchall()
        except UnicodeEncodeError:
            return []

    @staticmethod
    def _decode(
        row: tuple[Any, ...],
        decode: Callable[[tuple[Any, ...]], Any],
        decoded: dict[str, tuple[tuple[Any, ...], Any]],
    ) -> Any:
        """The record of a row of `seq, id, ...` (reused while the row is unchanged)."""
        known = decoded.get(row[1])
        if known is not None and known[0] == row:
            return known[1]
        record = decode(row)
        _remember(decoded, row, record)
        return record

    # runs
    def _run(self, row: tuple[Any, ...]) -> Run:
        run: Run = self._decode(row, q.RUN.decode, self._decoded_runs)
        self._runs[run.id] = (row[0], run, row[1:])
        return run

    def _runs_of(self, sql: str, params: Sequence[Any]) -> list[Run]:
        return [self._run(row) for row in self._all(sql, params)]

    def _run_seq(self, run_id: str) -> int | None:
        known = self._runs.get(run_id)
        if known is not None:
            return known[0]
        row = self._one(q.RUN_SEQ, (run_id,))
        return None if row is None else int(row[0])

    def get_run(self, run_id: str) -> Run | None:
        known = self._runs.get(run_id)
        if known is not None:
            return known[1]
        row = self._one(q.GET_RUN, (run_id,))
        return None if row is None else self._run(row)

    def list_runs(
        self, *, user_id: str | None, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[Run], bool] | None:
        after = 0
        if starting_after is not None:
            found = self._run_seq(starting_after)
            if found is None:
                return None
            after = found
        params: list[Any] = [after]
        if user_id is not None:
            params.append(user_id)
        if status is not None:
            params.append(str(status))
        params.append(limit + 1)
        runs = self._runs_of(q.LIST_RUNS[(user_id is not None, status is not None)], params)
        return runs[:limit], len(runs) > limit

    def due_runs(self, now: float, limit: int) -> list[Run]:
        if self._one(q.ANY_DUE, (now,)) is None:  # the usual case, one small column
            return []
        return self._runs_of(q.DUE_RUNS, (now, limit))

    def claimable_runs(self, now: float, limit: int) -> list[Run]:
        return self._runs_of(q.CLAIMABLE_RUNS, (now, limit))

    def ended_runs(self, before: float, limit: int) -> list[str]:
        return [row[0] for row in self._all(q.ENDED_RUNS, (before, limit))]

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        for start in range(0, len(run_ids), 300):
            chunk = tuple(run_ids[start : start + 300])
            for sql in q.delete_runs(len(chunk)):
                self._execute(sql, chunk)
        self._runs.clear()
        self._requests.clear()

    def insert_run(self, run: Run) -> None:
        row = q.RUN.encode(run)
        cursor = self._execute(q.INSERT_RUN, row)
        seq = int(cursor.lastrowid or 0)
        self._runs[run.id] = (seq, run, row)
        _remember(self._decoded_runs, (seq, *row), run)

    def update_run(self, run: Run) -> None:
        known = self._runs.get(run.id)
        row = q.RUN.encode(run)
        if known is None:
            params = [row[q.RUN_POSITION[name]] for name in q.RUN_CHANGING]
            cursor = self._execute(q.UPDATE_RUN_BY_ID, (*params, run.id, run.version - 1))
            if cursor.rowcount != 1:
                raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
            return
        seq, old, stored = known
        if old.version != run.version - 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        changed = [i for i in q.RUN_CHANGING_AT if row[i] != stored[i]]
        columns = tuple(q.RUN.names[i] for i in changed)
        params = [row[i] for i in changed]
        cursor = self._execute(q.update_run(columns), (*params, seq, run.version - 1))
        if cursor.rowcount != 1:
            raise ConflictError("concurrent_update", f"run {run.id} was changed concurrently")
        self._runs[run.id] = (seq, run, row)
        _remember(self._decoded_runs, (seq, *row), run)

    # idempotency keys
    def get_idempotency_key(self, key: str) -> IdempotencyKey | None:
        row = self._one(q.GET_KEY, (key,))
        return None if row is None else q.KEY.decode(row)

    def insert_idempotency_key(self, key: IdempotencyKey) -> None:
        self._execute(q.INSERT_KEY, q.KEY.encode(key))

    # requests
    def _request(self, row: tuple[Any, ...]) -> PermissionRequest:
        request: PermissionRequest = self._decode(row, q.REQUEST.decode, self._decoded_requests)
        self._requests[request.request_id] = (row[0], row[1:])
        return request

    def get_request(self, request_id: str) -> PermissionRequest | None:
        row = self._one(q.GET_REQUEST, (request_id,))
        return None if row is None else self._request(row)

    def list_requests(self, run_id: str, *, pending_only: bool = False) -> list[PermissionRequest]:
        sql = q.RUN_PENDING_REQUESTS if pending_only else q.RUN_REQUESTS
        return [self._request(row) for row in self._all(sql, (run_id,))]

    def pending_requests(self, limit: int) -> list[PermissionRequest]:
        return [self._request(row) for row in self._all(q.PENDING_REQUESTS, (limit,))]

    def save_requests(self, requests: Sequence[PermissionRequest]) -> None:
        for request in requests:
            row = q.REQUEST.encode(request)
            known = self._requests.get(request.request_id)
            if known is None:
                known = self._insert_request(request, row)
                if known is None:
                    continue
            seq, stored = known
            if stored[q.REQUEST_RUN] != request.run_id:
                raise StoreError(
                    "store_constraint", f"request {request.request_id!r} is of another run"
                )
            changed = [i for i in q.REQUEST_CHANGING_AT if row[i] != stored[i]]
            if changed:
                columns = tuple(q.REQUEST.names[i] for i in changed)
                self._execute(q.update_request(columns), (*(row[i] for i in changed), seq))
            self._requests[request.request_id] = (seq, row)
            _remember(self._decoded_requests, (seq, *row), request)

    def _insert_request(
        self, request: PermissionRequest, row: tuple[Any, ...]
    ) -> tuple[int, tuple[Any, ...]] | None:
        """Insert a request this transaction has not seen; None when it was new, else the
        stored one's seq and row (it is then updated)."""
        run_seq = self._run_seq(request.run_id)
        if run_seq is None:
            raise StoreError(
                "store_constraint", f"request {request.request_id!r} names no stored run"
            )
        params = list(row)
        params[q.REQUEST_RUN] = run_seq
        try:
            cursor = self._execute(q.INSERT_REQUEST, params)
        except sqlite3.IntegrityError:
            stored = self._one(q.GET_REQUEST, (request.request_id,))
            if stored is None:
                raise
            return stored[0], stored[1:]
        seq = int(cursor.lastrowid or 0)
        self._requests[request.request_id] = (seq, row)
        _remember(self._decoded_requests, (seq, *row), request)
        return None

    # policies
    def find_policy(self, user_id: str | None, tool: str) -> PermissionPolicy | None:
        row = self._one(q.FIND_POLICY, (q.scope(user_id), tool))
        return None if row is None else q.POLICY.decode(row)

    def get_policy(self, policy_id: str) -> PermissionPolicy | None:
        row = self._one(q.GET_POLICY, (policy_id,))
        return None if row is None else q.POLICY.decode(row)

    def candidate_policies(self, user_id: str | None, tool_name: str) -> list[PermissionPolicy]:
        key = q.scope(user_id)
        found, patterns = [], False
        for row in self._all(q.EXACT_POLICY_AND_PATTERNS, (key, tool_name)):
            if row[0]:
                found.append(q.EXACT_POLICY(row))
            else:
                patterns = True
        if patterns:
            heads = prefixes(tool_name)  # tool names are at most 256 characters long
            rows = self._all(q.pattern_policies(len(heads)), (key, *heads))
            found.extend(q.POLICY.decode(row) for row in rows)
        return found

    def list_policies(
        self, user_id: str | None, *, limit: int, starting_after: str | None
    ) -> tuple[list[PermissionPolicy], bool] | None:
        key = q.scope(user_id)
        after = 0
        if starting_after is not None:
            found = self._one(q.POLICY_SEQ, (starting_after, key))
            if found is None:
                return None
            after = found[0]
        rows = self._all(q.LIST_POLICIES, (key, after, limit + 1))
        return [q.POLICY.decode(row) for row in rows[:limit]], len(rows) > limit

    def insert_policy(self, policy: PermissionPolicy) -> None:
        self._execute(q.INSERT_POLICY, q.policy_params(policy))

    def delete_policy(self, policy_id: str) -> None:
        self._execute(q.DELETE_POLICY, (policy_id,))

    # tasks
    def get_task(self, task_id: str) -> Task | None:
        row = self._one(q.GET_TASK, (task_id,))
        return None if row is None else q.TASK.decode(row)

    def insert_task(self, task: Task) -> None:
        self._execute(q.INSERT_TASK, q.TASK.encode(task))

    # events
    def append_events(self, events: Sequence[Event]) -> None:
        for event in events:
            event_id, type_, run_id, at, data = q.event_params(event)
            run_seq = self._run_seq(run_id)
            if run_seq is None:
                raise StoreError("store_constraint", f"event {event_id!r} names no stored run")
            self._execute(q.INSERT_EVENT, (event_id, type_, run_seq, at, data))
            self.changed.add(run_id)

    def list_events(
        self, *, after: str | None, run_id: str | None, limit: int
    ) -> list[Event] | None:
        start = 0
        if after is not None:
            found = self._one(q.EVENT_SEQ, (after,))
            if found is None:
                return None
            start = found[0]
        if run_id is None:
            rows = self._all(q.LIST_EVENTS, (start, limit))
        else:
            rows = self._all(q.LIST_RUN_EVENTS, (run_id, start, limit))
        return [q.event_from_row(row) for row in rows]

    def last_event_id(self) -> str | None:
        row = self._one(q.LAST_EVENT, ())
        return None if row is None else str(row[1])

    # webhooks
    def get_cursor(self, name: str) -> str | None:
        row = self._one(q.GET_CURSOR, (name,))
        return None if row is None else str(row[0])

    def set_cursor(self, name: str, event_id: str) -> None:
        self._execute(q.SET_CURSOR, (name, event_id))

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        row = self._one(q.GET_ENDPOINT, (endpoint_id,))
        return None if row is None else q.ENDPOINT.decode(row)

    def list_endpoints(
        self, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool] | None:
        after = 0
        if starting_after is not None:
            found = self._one(q.ENDPOINT_SEQ, (starting_after,))
            if found is None:
                return None
            after = found[0]
        rows = self._all(q.LIST_ENDPOINTS, (after, limit + 1))
        return [q.ENDPOINT.decode(row) for row in rows[:limit]], len(rows) > limit

    def insert_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._execute(q.INSERT_ENDPOINT, q.ENDPOINT.encode(endpoint))

    def update_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._execute(q.UPDATE_ENDPOINT, q.ENDPOINT.encode(endpoint))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._execute(q.DELETE_ENDPOINT_DELIVERIES, (endpoint_id,))
        self._execute(q.DELETE_ENDPOINT, (endpoint_id,))

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        row = self._one(q.GET_DELIVERY, (delivery_id,))
        return None if row is None else q.DELIVERY.decode(row)

    def save_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        if len(deliveries) == 1:
            self._execute(q.SAVE_DELIVERY, q.DELIVERY.encode(deliveries[0]))
        elif deliveries:
            self._executemany(q.SAVE_DELIVERY, [q.DELIVERY.encode(d) for d in deliveries])

    def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        return [q.DELIVERY.decode(row) for row in self._all(q.DUE_DELIVERIES, (now, limit))]

    def list_deliveries(
        self, endpoint_id: str, *, status: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookDelivery], bool] | None:
        after = 0
        if starting_after is not None:
            found = self._one(q.DELIVERY_SEQ, (starting_after, endpoint_id))
            if found is None:
                return None
            after = found[0]
        if status is None:
            rows = self._all(q.LIST_DELIVERIES, (endpoint_id, after, limit + 1))
        else:
            rows = self._all(q.LIST_DELIVERIES_OF_STATUS, (endpoint_id, after, status, limit + 1))
        return [q.DELIVERY.decode(row) for row in rows[:limit]], len(rows) > limit
