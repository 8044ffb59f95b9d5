"""The inbox's one follower of the event log: a thread that reads `hitl.events.list(after=...)`
and fans the changes that matter to a page out to every open server-sent-events stream, so
N browser tabs cost one store read, not N. It reads when the store's change feed says
something was committed (`Store.subscribe`), or every `interval` seconds for a store
without one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

import attrs

import hitl_core
from hitl_core import HitlError
from hitl_core.adapter import ChangeListener

from ._html import visible

__all__ = ["RELEVANT", "Feed", "Subscription"]

log = logging.getLogger("hitl_inbox")

RELEVANT = frozenset(
    {
        "run.awaiting_input",
        "request.resolved",
        "run.suspended",
        "run.resumed",
        "run.cancelled",
        "run.failed",
        "run.completed",
    }
)
"""Event types that can change what the inbox shows."""

QUEUE_SIZE = 256
SAFETY_NET = 2.0
"""With a change feed: the longest pause between two reads all the same (seconds)."""

Changes = Callable[[ChangeListener], Callable[[], None] | None]
"""A store's `subscribe`: registers a listener, returns how to unregister it (or None
when the store has no change feed)."""


@attrs.define(eq=False)
class Subscription:
    """One SSE stream's queue and the event loop that reads it. `None` in the queue means
    the server is closing."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]


def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
    # A stalled tab loses changes; it fetches the whole list again on its next one.
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)


class Feed:
    """Follows the event log from its end and hands each relevant change, as a small
    JSON-ready dict, to every subscription."""

    def __init__(
        self, hitl: hitl_core.Hitl, *, interval: float = 0.2, changes: Changes | None = None
    ) -> None:
        self.hitl = hitl
        self.interval = interval
        self.changes = changes
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        """Set once the follower has found the end of the log."""

    # -- subscribers (called on the event loop) ------------------------------------------
    def subscribe(self) -> Subscription:
        """A new subscription for the running event loop."""
        subscription = Subscription(asyncio.get_running_loop(), asyncio.Queue(QUEUE_SIZE))
        with self._lock:
            self._subscriptions.add(subscription)
            if self._stop.is_set():
                _offer(subscription.queue, None)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (its stream ended)."""
        with self._lock:
            self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        """How many streams are open."""
        with self._lock:
            return len(self._subscriptions)

    # -- the follower thread -------------------------------------------------------------
    def start(self) -> None:
        """Start following on a daemon thread."""
        self._thread = threading.Thread(target=self._follow, name="hitl-inbox-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following and end every stream."""
        self._stop.set()
        self._wake.set()
        self._publish(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _publish(self, item: dict[str, Any] | None) -> None:
        with self._lock:
            targets = list(self._subscriptions)
        for subscription in targets:
            try:
                subscription.loop.call_soon_threadsafe(_offer, subscription.queue, item)
            except RuntimeError:  # its loop has closed
                self.unsubscribe(subscription)

    def _end_of_log(self) -> str | None:
        cursor: str | None = None
        while batch := self.hitl.events.list(after=cursor, limit=1000):
            cursor = batch[-1].id
        return cursor

    def _changed(self, runs: Collection[str] | None) -> None:
        self._wake.set()

    def _follow(self) -> None:
        unsubscribe = self.changes(self._changed) if self.changes is not None else None
        pause = max(self.interval, SAFETY_NET) if unsubscribe is not None else self.interval
        try:
            self._read_forever(pause)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def _read_forever(self, pause: float) -> None:
        cursor: str | None = None
        found = False
        while not self._stop.is_set():
            self._wake.clear()  # before reading, so a commit during the read is not missed
            try:
                if not found:
                    cursor, found = self._end_of_log(), True
                    self.ready.set()
                events = self.hitl.events.list(after=cursor, limit=1000)
            except HitlError as error:
                if error.code == "invalid_cursor":
                    found = False
                elif error.code != "closed":
                    log.warning("reading the event log failed (%s); retrying", error.code)
                self._stop.wait(1.0)
                continue
            except Exception:  # never let live updates die silently
                log.exception("reading the event log failed; retrying")
                self._stop.wait(1.0)
                continue
            for event in events:
                if event.type in RELEVANT:
                    self._publish(self._describe(event))
            if events:
                cursor = events[-1].id
            else:
                self._wake.wait(pause)

    def _describe(self, event: hitl_core.Event) -> dict[str, Any]:
        """What a page needs to know of an event; a resolved request also says who
        resolved it, which the event itself does not carry."""
        data = event.data
        item: dict[str, Any] = {
            "id": event.id,
            "type": event.type,
            "run_id": event.run_id,
            "request_id": data.get("request_id"),
            "kind": data.get("kind"),
            "tool_name": _visible(data.get("tool_name")),
            "status": data.get("status"),
            "decision": data.get("decision"),
            "source": data.get("source"),
            "actor": None,
        }
        if event.type == "request.resolved":
            try:
                for request in self.hitl.runs.permissions(event.run_id):
                    if request.request_id == item["request_id"]:
                        item["actor"] = _visible(request.actor)
                        item["tool_name"] = _visible(request.tool_name)
                        if request.kind == "plan":
                            item["revision"] = request.tool_input.get("revision")
            except HitlError:
                pass
        return item


def _visible(value: Any) -> Any:
    """A text the page shows as it is (not through `escape`), with invisible direction
    and control characters written out; other values unchanged."""
    return visible(value) if isinstance(value, str) else value
