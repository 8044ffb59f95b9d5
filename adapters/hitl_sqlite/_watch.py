"""The SQLite store's change feed across processes: one thread per file and process that
notices commits of other connections (`PRAGMA data_version`) and tells the listeners of
every store of the process on that file which runs had events appended. Commits of this
process's own connections are told at once by the store; the thread covers the rest."""

from __future__ import annotations

import itertools
import logging
import os
import pathlib
import sqlite3
import threading
from collections.abc import Callable

from hitl_core.adapter import ChangeListener

__all__ = ["FIRST_INTERVAL", "MAX_INTERVAL", "RETRY_FIRST", "RETRY_MAX", "Watcher", "tell", "watch"]

log = logging.getLogger("hitl_sqlite.watch")

FIRST_INTERVAL = 0.001
"""Seconds between two looks at `data_version` just after a change was seen."""
MAX_INTERVAL = 0.016
"""The longest pause between two looks, reached after a quiet spell (doubling)."""
RETRY_FIRST = 0.05
"""Seconds before watching again after the watcher's connection failed or could not open."""
RETRY_MAX = 1.0
"""The longest pause between two tries (doubling); listeners look again at each."""
BATCH = 1000
OPEN_TIMEOUT = 0.5
"""The watching connection's busy timeout (it only reads)."""

_LAST = "SELECT seq, id FROM events ORDER BY seq DESC LIMIT 1"
_AT = "SELECT id FROM events WHERE seq = ?"
_SINCE = (
    "SELECT e.seq, e.id, r.id FROM events AS e JOIN runs AS r ON r.seq = e.run_seq "
    "WHERE e.seq > ? ORDER BY e.seq LIMIT ?"
)


_WATCHERS: dict[str, Watcher] = {}
"""This process's watcher of each file, by absolute path."""
_WATCHERS_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child starts with no watchers and a lock of its own: the parent's
    threads do not run in it, and one of them may have held the lock at the fork."""
    global _WATCHERS_LOCK
    _WATCHERS_LOCK = threading.Lock()
    _WATCHERS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


def watch(path: str, listener: ChangeListener) -> Callable[[], None]:
    """Tell `listener` about commits to the SQLite file at `path` (absolute), through this
    process's one watcher of it: started by its first listener, stopped (its thread
    joined, its connection closed) when the last one is removed. Returns the remover."""
    with _WATCHERS_LOCK:
        watcher = _WATCHERS.get(path)
        if watcher is None or watcher.pid != os.getpid():  # the first, or a forked child
            watcher = Watcher(lambda: _open(path), path)
        key = watcher.add_key(listener)  # raises if its thread cannot start: not kept
        _WATCHERS[path] = watcher

    def remove() -> None:
        if watcher.pid != os.getpid():  # the parent's, in a forked child: not running here
            return
        with _WATCHERS_LOCK:
            if not watcher.remove_key(key) or _WATCHERS.get(path) is not watcher:
                return
            del _WATCHERS[path]  # its last listener: nobody watches the file any more
        watcher.stop()

    return remove


def tell(path: str, run_ids: frozenset[str]) -> None:
    """Tell this process's listeners of the file at `path` about a commit of its own."""
    watcher = _WATCHERS.get(path)
    if watcher is not None and watcher.pid == os.getpid():
        watcher.tell(run_ids)


def _open(path: str) -> sqlite3.Connection:
    """A reading connection to the file, which must exist (a watcher never makes one)."""
    return sqlite3.connect(
        f"{pathlib.Path(path).as_uri()}?mode=rw",
        uri=True,
        timeout=OPEN_TIMEOUT,
        isolation_level=None,
        check_same_thread=False,
    )


class Watcher:
    """Polls one connection's `data_version` (a few microseconds a look) and reads the
    events committed since it last looked. Listeners are called on this thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection] | None, path: str) -> None:
        """`connect` opens the watching connection; None: there are no other connections
        to watch (an in-memory database), only `tell` calls."""
        self.path = path
        self.pid = os.getpid()
        """The process it watches for: a forked child makes a watcher of its own."""
        self._connect = connect
        self._listeners: dict[int, ChangeListener] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._delay = RETRY_FIRST  # the pause before the next try, while failing
        self._failing = False  # the last try failed (logged once until one works)

    def add(self, listener: ChangeListener) -> Callable[[], None]:
        """Start telling `listener`; returns the function that stops it."""
        key = self.add_key(listener)

        def remove() -> None:
            self.remove_key(key)

        return remove

    def add_key(self, listener: ChangeListener) -> int:
        """Start telling `listener` (and the thread, with the first); returns its key."""
        key = next(self._ids)
        with self._lock:
            if self._thread is None and self._connect is not None:
                thread = threading.Thread(
                    target=self._run, name=f"hitl-sqlite-watch {self.path}", daemon=True
                )
                thread.start()  # may fail (no threads left): then nothing was added
                self._thread = thread
            self._listeners[key] = listener
        return key

    def remove_key(self, key: int) -> bool:
        """Stop telling the listener of `key`; True when no listener is left."""
        with self._lock:
            self._listeners.pop(key, None)
            return not self._listeners

    def stop(self) -> None:
        """End the thread (it closes its connection)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def tell(self, run_ids: frozenset[str] | None) -> None:
        """Call every listener with `run_ids`."""
        with self._lock:
            listeners = list(self._listeners.values())
        for listener in listeners:
            try:
                listener(run_ids)
            except Exception:  # a listener's bug must not end the feed
                log.exception("a change listener of %s failed", self.path)

    def _run(self) -> None:
        """Watch until stopped. When the connection cannot be opened (no files left, say)
        or fails, try again after a pause (doubling up to RETRY_MAX) and meanwhile tell
        the listeners to look for themselves: waits stay bounded by the pause, never
        sleep through a decision because nobody watches. A try counts as a success once
        it has read its starting point; a failure is logged once until then."""
        assert self._connect is not None
        while not self._stopped.is_set():
            try:
                db = self._connect()
            except Exception as error:
                self._failed(f"cannot watch {self.path} for changes", error)
            else:
                try:
                    self._loop(db)
                    return  # stopped
                except Exception as error:  # the file went, the disk failed, a bug
                    if self._stopped.is_set():  # the store was closed under us
                        return
                    self._failed(f"watching {self.path} failed", error)
                finally:
                    db.close()
            self.tell(None)  # what happened meanwhile is not told otherwise
            if self._stopped.wait(self._delay):
                return
            self._delay = min(self._delay * 2, RETRY_MAX)

    def _failed(self, what: str, error: Exception) -> None:
        if not self._failing:
            log.warning("%s (trying again): %s", what, error)
        self._failing = True

    def _loop(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA data_version").fetchone()[0]
        last = db.execute(_LAST).fetchone() or (0, None)
        if self._failing:
            log.info("watching %s for changes again", self.path)
        self._delay, self._failing = RETRY_FIRST, False
        # What was committed before this starting point is never told: the listeners
        # that looked while this thread was starting must look again.
        self.tell(None)
        interval = MAX_INTERVAL
        while not self._stopped.wait(interval):
            now = db.execute("PRAGMA data_version").fetchone()[0]
            if now == version:
                interval = min(interval * 2, MAX_INTERVAL)
                continue
            version, interval = now, FIRST_INTERVAL
            last = self._read(db, last)

    def _read(self, db: sqlite3.Connection, last: tuple[int, str | None]) -> tuple[int, str | None]:
        """Tell the listeners about the events after `last` (seq, id); return the new last."""
        seq, event_id = last
        if event_id is not None:
            at = db.execute(_AT, (seq,)).fetchone()
            if at is None or at[0] != event_id:
                # pruning removed the newest events and SQLite may reuse their numbers:
                # start again from the end and let every listener look for itself
                self.tell(None)
                return db.execute(_LAST).fetchone() or (0, None)
        while True:
            rows = db.execute(_SINCE, (seq, BATCH)).fetchall()
            if not rows:
                return seq, event_id
            seq, event_id = rows[-1][0], rows[-1][1]
            self.tell(frozenset(row[2] for row in rows))
            if len(rows) < BATCH:
                return seq, event_id
