"""The asyncio engine seen as a synchronous one, for tests: `EventLoopThread` runs an
event loop in a thread, and `bridged(engine, loop)` wraps a `hitl_core.aio` engine so
that each coroutine call is made on that loop and awaited from the calling thread. With
it the shared contract suite and the lock-step tests run through the asyncio API."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

from .. import aio

__all__ = ["EventLoopThread", "bridged"]


class EventLoopThread:
    """An asyncio event loop running in a daemon thread until `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the loop and return its result (or raise its error)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


_WRAPPED = (aio.AsyncHitl, aio.AsyncAgent, aio._Part)


class _Bridge:
    """Attribute access passes through; coroutine methods become blocking calls."""

    def __init__(self, target: Any, loop: EventLoopThread) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return self._blocking(value)
        if isinstance(value, _WRAPPED):
            return _Bridge(value, self._loop)
        return value

    def _blocking(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._loop.run(method(*args, **kwargs))
            return _Bridge(result, self._loop) if isinstance(result, _WRAPPED) else result

        return call

    def __enter__(self) -> _Bridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.run(self._target.close())

    def __repr__(self) -> str:
        return f"<bridged {self._target!r}>"


def bridged(engine: aio.AsyncHitl, loop: EventLoopThread) -> Any:
    """`engine` with the synchronous engine's face: `bridged(...).runs.create(...)` runs
    `engine.runs.create(...)` on `loop` and returns its result."""
    return _Bridge(engine, loop)
