"""Clocks: the one place time enters hitl-core. The engine reads its clock once per call
and passes the reading down as a plain number."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ._errors import ValidationError

__all__ = ["Clock", "ManualClock", "SystemClock", "reading"]


class Clock(Protocol):
    """Anything with a `now()` that returns seconds as a float."""

    def now(self) -> float:
        """The current time in seconds."""
        ...


def reading(clock: Clock) -> float:
    """`clock.now()`, checked: a finite number of seconds (422 invalid_config if not; a
    NaN would make every deadline and wait meaningless)."""
    now = clock.now()
    if type(now) is not float:
        if isinstance(now, bool) or not isinstance(now, int | float):
            raise ValidationError(
                "invalid_config", f"the clock's now() gave {now!r}, not a number of seconds"
            )
        try:
            now = float(now)
        except OverflowError:  # an int beyond any float
            now = math.inf
    if now - now != 0.0:  # NaN or an infinity
        raise ValidationError(
            "invalid_config", f"the clock's now() gave {now!r}, not a finite number of seconds"
        )
    return now


class SystemClock:
    """Wall-clock time (`time.time()`), the default."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to: for tests and simulations. Waits on an
    engine with this clock (`Agent.wait`) take no real time: they end when `advance`
    moves the clock past their deadline or timeout, or when what they wait for happens."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = _seconds(start, "start")
        self._listeners: dict[int, Callable[[float], None]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        """The clock's current reading."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by `seconds` (>= 0) and return the new reading."""
        step = _seconds(seconds, "seconds")
        if step < 0:
            raise ValidationError("invalid_request", "a clock cannot go backwards")
        with self._lock:
            self._now += step
            now = self._now
            listeners = list(self._listeners.values())
        for listener in listeners:
            listener(now)
        return now

    def subscribe(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Call `listener(now)` after every `advance`, until the returned function is
        called. Engines use it to end waits whose time has come."""
        key = next(self._ids)
        with self._lock:
            self._listeners[key] = listener

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.pop(key, None)

        return unsubscribe

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"


def _seconds(value: object, name: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValidationError("invalid_request", f"{name} must be a finite number of seconds")
    return number
