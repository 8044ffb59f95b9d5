"""The PostgreSQL store's change feed: one LISTEN connection per store, on a thread of its
own, that tells local listeners which runs had events committed by any process. The
notifications are sent by the writing transactions themselves (`pg_notify`, delivered
on commit); while the connection is down they are lost, so after every (re)connection
the listeners are told None: look at everything again."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Collection

import psycopg
from psycopg import sql

from hitl_core.adapter import ChangeListener

__all__ = ["Listener", "channel_name"]

log = logging.getLogger("hitl_postgres.listen")

POLL = 0.2
"""Seconds between two looks at the stop flag while no notification arrives."""
RETRY_FIRST = 0.05
RETRY_MAX = 2.0


def channel_name(schema: str) -> str:
    """The notification channel of a schema (one per store schema, so that stores in
    different schemas of one database do not wake each other)."""
    return f"hitl:{schema}"[:63]


class Listener:
    """LISTENs on one channel and calls the listeners on its own thread."""

    def __init__(self, conninfo: str, channel: str, where: str) -> None:
        self._conninfo = conninfo
        self.channel = channel
        self.where = where
        self._listeners: dict[int, ChangeListener] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.listening = threading.Event()
        """Set while the LISTEN is in place."""
        self._thread = threading.Thread(
            target=self._run, name=f"hitl-postgres-listen {where}", daemon=True
        )
        self._thread.start()

    def add(self, listener: ChangeListener) -> Callable[[], None]:
        """Start telling `listener`; returns the function that stops it."""
        key = next(self._ids)
        with self._lock:
            self._listeners[key] = listener

        def remove() -> None:
            with self._lock:
                self._listeners.pop(key, None)

        return remove

    def stop(self) -> None:
        """End the thread and close its connection (waits up to a few seconds)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def tell(self, run_ids: Collection[str] | None) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
        for listener in listeners:
            try:
                listener(run_ids)
            except Exception:  # a listener's bug must not end the feed
                log.exception("a change listener of %s failed", self.where)

    def _run(self) -> None:
        delay = RETRY_FIRST
        while not self._stopped.is_set():
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True)
            except psycopg.Error as error:
                log.warning("cannot listen for changes at %s: %s", self.where, error)
                self._stopped.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.listening.set()
                delay = RETRY_FIRST
                self.tell(None)  # anything may have happened while nobody listened
                self._loop(conn)
            except psycopg.Error as error:
                if not self._stopped.is_set():
                    log.warning("lost the change feed of %s: %s", self.where, error)
            finally:
                self.listening.clear()
                conn.close()

    def _loop(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stopped.is_set():
            for note in conn.notifies(timeout=POLL):
                self.tell(_run_ids(note.payload))


def _run_ids(payload: str) -> frozenset[str] | None:
    """The run ids a notification names; None when it names no list of them."""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None
