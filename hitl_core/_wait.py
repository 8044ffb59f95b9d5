"""Waking waiters: who is waiting on which run (`Agent.wait`, in threads or in asyncio
tasks), and what wakes them: the store's change feed (a commit of any engine, thread or
process), this engine's own commits when the store has no feed, and a clock that moves
only when told (`ManualClock.advance`). A waiter woken re-reads what it waits for; the
decision whether its wait is over is the caller's, not this module's.

This is the facade's one piece that blocks, on a `threading.Event` or an asyncio future.
The state machine itself never waits, sleeps or reads a clock."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from ._clock import Clock, reading
from ._store import Store

__all__ = ["ANY_RUN", "POLL_FIRST", "POLL_MAX", "Look", "Waiter", "Waiters"]

T = TypeVar("T")
Look = tuple[T, bool, float | None]
"""What one look finds: the value to return, whether the wait is over, and the clock time
at which it will be over by itself if nothing happens (a deadline; None: none)."""

ANY_RUN = ""
"""The run id a waiter registers under to be woken by a change to any run."""

POLL_FIRST = 0.01
"""With a store that has no change feed: the first pause before a waiter looks again."""
POLL_MAX = 1.0
"""... and the longest (the pause doubles while nothing changes)."""
MAX_BLOCK = 3600.0
"""The longest a waiter blocks before it looks again, whatever its timeout: timers of
the platform have limits, and an hourly look costs nothing."""
SIGNAL_SLICE = 0.2
"""The main thread blocks in slices this long (real seconds; it does not look again
between them): Python runs signal handlers (Ctrl-C, SIGTERM) only in the main thread and
only once its blocking call returns, and a signal the kernel delivers to another thread,
or just before the main thread blocks, does not cut that call short."""


class Waiter:
    """One wait in progress on one run. `woken` is set when something it may care about
    changed; the waiter clears it before each look, so no change is missed between a
    look and the next block."""

    __slots__ = ("_future", "_loop", "event", "run_id")

    def __init__(self, run_id: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.run_id = run_id
        self.event = threading.Event()
        self._loop = loop
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Mark the waiter woken (from any thread)."""
        self.event.set()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def block(self, seconds: float | None) -> None:
        """Wait (in a thread) until woken or `seconds` pass (None: no time limit); in the
        main thread, in slices of SIGNAL_SLICE so that signal handlers run promptly."""
        if threading.current_thread() is not threading.main_thread():
            self.event.wait(seconds)
            return
        left = seconds
        while left is None or left > 0:
            part = SIGNAL_SLICE if left is None else min(left, SIGNAL_SLICE)
            if self.event.wait(part):
                return
            if left is not None:
                left -= part

    async def block_async(self, seconds: float | None) -> None:
        """Wait (in an asyncio task, holding no thread) until woken or `seconds` pass."""
        if self.event.is_set():
            return
        assert self._loop is not None
        self._future = self._loop.create_future()
        if self.event.is_set():  # woken between the check and the future
            return
        try:
            await asyncio.wait_for(self._future, seconds)
        except TimeoutError:
            pass
        finally:
            self._future = None


class Waiters:
    """The waiters of one engine, by run id, and the feeds that wake them."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        """Nobody waits, nothing is subscribed: a new engine, or a forked child (whose
        copy of the parent's waiters and feed threads is of no use)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._by_run: dict[str, set[Waiter]] = {}
        self._started = False
        self._starting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._has_feed = False
        self._stops: list[Callable[[], None]] = []

    @property
    def clock_driven(self) -> bool:
        """True when the clock moves only when told (it tells us): waits then take no
        real time, only its readings."""
        return callable(getattr(self._clock, "subscribe", None))

    @property
    def polls(self) -> bool:
        """True when the store has no change feed, so waiters must look at intervals."""
        return not self._has_feed

    def add(self, run_id: str, loop: asyncio.AbstractEventLoop | None = None) -> Waiter:
        """Register a waiter on `run_id` (before its first look)."""
        waiter = Waiter(run_id, loop)
        self.start()
        with self._lock:
            self._by_run.setdefault(run_id, set()).add(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Forget a waiter whose wait is over."""
        with self._lock:
            found = self._by_run.get(waiter.run_id)
            if found is not None:
                found.discard(waiter)
                if not found:
                    del self._by_run[waiter.run_id]

    @property
    def started(self) -> bool:
        """True once this process subscribed to the store's feed and the clock."""
        return self._started and self._pid == os.getpid()

    def start(self) -> None:
        """Subscribe to the store's feed and the clock, once per process (a forked child
        starts again): the first wait does it."""
        if self._pid != os.getpid():
            self._reset()
        if not self._started:
            with self._start_lock:  # not the waiters' lock: a store may connect here
                if not self._started:
                    self._start()

    async def _start_off_loop(self) -> None:
        """`start` in a thread, once for all the waits of a loop that begin before it is
        done: a thousand waits begun together share one call (and one thread of the
        loop's executor) instead of each asking for one."""
        loop = asyncio.get_running_loop()
        starting = self._starting.get(loop)
        if starting is None or (starting.done() and not self.started):
            starting = self._starting[loop] = loop.run_in_executor(None, self.start)
        await asyncio.shield(starting)  # one wait cancelled does not cancel the others'

    def _start(self) -> None:
        stop = self._store.subscribe(self._changed)
        if stop is not None:
            self._has_feed = True
            self._stops.append(stop)
        subscribe: Any = getattr(self._clock, "subscribe", None)
        if callable(subscribe):
            self._stops.append(subscribe(self._wake_all))
        self._started = True

    def _changed(self, run_ids: Collection[str] | None) -> None:
        """The store's feed: these runs had events committed (None: maybe any run)."""
        if run_ids is None:
            self._wake_all()
            return
        with self._lock:
            woken = [w for run_id in run_ids for w in self._by_run.get(run_id, ())]
            woken.extend(self._by_run.get(ANY_RUN, ()))
        for waiter in woken:
            waiter.wake()

    def _wake_all(self, *_: object) -> None:
        with self._lock:
            woken = [w for waiters in self._by_run.values() for w in waiters]
        for waiter in woken:
            waiter.wake()

    def committed(self) -> None:
        """This engine committed a write: without a store feed, every waiter looks."""
        if self._started and not self._has_feed and self._by_run:
            self._wake_all()

    def close(self) -> None:
        """Stop listening and wake every waiter (their next look finds the engine closed)."""
        with self._lock:
            stops, self._stops = self._stops, []
        for stop in stops:
            stop()
        self._wake_all()

    def pause(self, now: float, marks: tuple[float | None, ...], pause: float) -> float | None:
        """How long (real seconds) a waiter may block before it must look again: until
        the earliest of `marks` (clock times: its timeout, a deadline), by the clock;
        never longer than the polling `pause` when the store cannot wake it. None: until
        woken."""
        seconds: float | None = None  # a clock that moves only when told wakes us itself
        if not self.clock_driven:
            times = [t for t in marks if t is not None]
            seconds = max(0.0, min(times) - now) if times else None
        if self.polls:
            seconds = pause if seconds is None else min(seconds, pause)
        if seconds is not None and not math.isfinite(seconds):
            seconds = None
        if seconds is not None:
            seconds = min(seconds, MAX_BLOCK)
        return seconds

    def wait(self, key: str, timeout: float | None, look: Callable[[], Look[T]]) -> T:
        """Look (`look()`) until a look says the wait is over, or `timeout` seconds of the
        clock pass; between looks, block until woken about run `key` (ANY_RUN: any run)
        or until the next time worth a look. Returns the last look's value."""
        waiter = self.add(key)
        try:
            end = None if timeout is None else reading(self._clock) + timeout
            pause = POLL_FIRST
            while True:
                waiter.event.clear()
                value, over, deadline = look()
                now = reading(self._clock)
                if over or (end is not None and now >= end):
                    return value
                waiter.block(self.pause(now, (end, deadline), pause))
                pause = min(pause * 2, POLL_MAX)
        finally:
            self.remove(waiter)

    async def wait_async(
        self, key: str, timeout: float | None, look: Callable[[], Awaitable[Look[T]]]
    ) -> T:
        """`wait` for asyncio: the same looks, awaited; blocking holds no thread."""
        if not self.started:  # subscribing may touch the store: off the event loop
            await self._start_off_loop()
        waiter = self.add(key, asyncio.get_running_loop())
        try:
            end = None if timeout is None else reading(self._clock) + timeout
            pause = POLL_FIRST
            while True:
                waiter.event.clear()
                value, over, deadline = await look()
                now = reading(self._clock)
                if over or (end is not None and now >= end):
                    return value
                await waiter.block_async(self.pause(now, (end, deadline), pause))
                pause = min(pause * 2, POLL_MAX)
        finally:
            self.remove(waiter)
