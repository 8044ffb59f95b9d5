"""The engine for asyncio hosts (SPEC 14): `hitl_core.aio.connect(url)` gives the same
engine with every call a coroutine of the same name, arguments, result and errors.

Store calls run on a small pool of threads of the engine's own (a transaction may wait
for a file lock or a server; the event loop never does), so no call blocks the loop.
Waits (`agent.wait`, `events.wait`) hold no thread at all: a waiting task is an asyncio
future that the store's change feed (or a `ManualClock`) resolves, and each wake costs
one store read. A thousand concurrent waits are a thousand futures."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import _validate as check
from ._agent import Agent, wait_is_over, wait_timeout
from ._clock import Clock
from ._engine import Hitl, check_options, store_opener
from ._engine import connect as connect_sync
from ._errors import ConflictError
from ._outbox import BACKOFF, MAX_ATTEMPTS, Outgoing
from ._records import (
    AnswerResult,
    ApproveResult,
    Event,
    Lease,
    Page,
    PermissionPolicy,
    PermissionRequest,
    Run,
    Task,
    ToolGate,
    WebhookDelivery,
    WebhookEndpoint,
)
from ._store import Store
from ._wait import ANY_RUN

__all__ = [
    "AsyncAgent",
    "AsyncEvents",
    "AsyncHitl",
    "AsyncPermissions",
    "AsyncRuns",
    "AsyncTasks",
    "AsyncWebhooks",
    "connect",
]

T = TypeVar("T")

THREADS = 4
"""Threads per engine that run store calls (a waiting call holds none)."""


def connect(
    url: str | Store = "memory://",
    *,
    clock: Clock | None = None,
    remember_scope: str = "user",
    ids: Callable[[str], str] | None = None,
    threads: int = THREADS,
) -> AsyncHitl:
    """Open the store at `url` and return the asyncio engine on it; the keyword arguments
    are those of `hitl_core.connect`, and `threads` is the size of the engine's pool for
    store calls. Use it as `async with hitl_core.aio.connect(url) as hitl:`."""
    size = check.limit(threads, 64)
    check_options(clock, remember_scope, ids)
    if not isinstance(url, Store):
        store_opener(url)  # a URL no installed store takes is refused now (422 invalid_url)
    opener = functools.partial(
        connect_sync, url, clock=clock, remember_scope=remember_scope, ids=ids
    )
    return AsyncHitl(opener, size)


class AsyncHitl:
    """An asyncio engine: `hitl_core.Hitl`'s calls as coroutines. Make one with
    `hitl_core.aio.connect()`. The store is opened on the engine's threads by the first
    call (or `async with`): opening one may mean connecting to a server, which must not
    hold up the event loop."""

    def __init__(self, engine: Hitl | Callable[[], Hitl], threads: int = THREADS) -> None:
        self._sync: Hitl | None = engine if isinstance(engine, Hitl) else None
        self._opener = None if isinstance(engine, Hitl) else engine
        self._open_lock = threading.Lock()  # one opening, whichever thread asks first
        self._opening: asyncio.Future[Hitl] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hitl-aio")
        self._closed = False
        self.runs = AsyncRuns(self)
        self.permissions = AsyncPermissions(self)
        self.tasks = AsyncTasks(self)
        self.events = AsyncEvents(self)
        self.webhooks = AsyncWebhooks(self)

    @property
    def sync(self) -> Hitl:
        """The synchronous engine underneath (for code that is not async); opened here,
        in this thread, if no call opened it yet."""
        return self._sync if self._sync is not None else self._open()

    def _open(self) -> Hitl:
        """Open the store (once; in whichever thread asks first) and keep the engine, so
        that an opening is never lost: not when the call that began it is cancelled, nor
        when `close` runs meanwhile (it then closes what was opened)."""
        with self._open_lock:
            if self._sync is None:
                if self._closed:
                    raise ConflictError("closed", "this hitl-core engine is closed")
                assert self._opener is not None
                self._sync = self._opener()
            return self._sync

    async def _opened(self) -> Hitl:
        """The synchronous engine, its store opened on the engine's threads if needed.
        The calls of a loop that ask before it is open share one opening."""
        if self._sync is not None:
            return self._sync
        if self._closed:
            raise ConflictError("closed", "this hitl-core engine is closed")
        opening = self._opening
        if opening is None or opening.done():  # the first, or after a failed opening
            loop = asyncio.get_running_loop()
            opening = self._opening = loop.run_in_executor(self._pool, self._open)
        return await asyncio.shield(opening)  # a cancelled call does not cancel it

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a synchronous engine call on the pool, so the loop goes on meanwhile."""
        if self._closed:
            raise ConflictError("closed", "this hitl-core engine is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    async def agent(self, run_id: str, *, lease: Lease | None = None) -> AsyncAgent:
        """The agent side of run `run_id` (404 run_not_found if there is none)."""
        agent = await self._call((await self._opened()).agent, run_id, lease=lease)
        return AsyncAgent(self, agent)

    async def tick(self) -> list[Event]:
        """Apply every deadline that has passed; the events recorded."""
        return await self._call((await self._opened()).tick)

    async def close(self) -> None:
        """Close the engine and its store; later calls raise ConflictError('closed').
        An opening still under way is waited for, and what it opened closed too. The
        closing goes on if this call is cancelled; a later call waits for it."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        if not self._closing.done():  # done: closed (perhaps in another loop)
            await asyncio.shield(self._closing)

    async def _close(self) -> None:
        opening = self._opening
        if opening is not None and not opening.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(opening)
        with self._open_lock:
            engine = self._sync
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, engine.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncHitl:
        await self._opened()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncHitl {self._sync!r}>"


class _Part:
    def __init__(self, engine: AsyncHitl) -> None:
        self._engine = engine
        self._call = engine._call
        self._hitl = engine._opened


class AsyncRuns(_Part):
    """`hitl.runs` as coroutines."""

    async def create(
        self,
        *,
        human_in_the_loop: bool = False,
        permission_mode: str = "autonomous",
        user_id: str | None = None,
        input_timeout: float = check.DEFAULT_INPUT_TIMEOUT,
        metadata: dict[str, Any] | None = None,
        checkpoint: Any = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """See `Runs.create`."""
        return await self._call(
            (await self._hitl()).runs.create,
            human_in_the_loop=human_in_the_loop,
            permission_mode=permission_mode,
            user_id=user_id,
            input_timeout=input_timeout,
            metadata=metadata,
            checkpoint=checkpoint,
            idempotency_key=idempotency_key,
        )

    async def get(self, run_id: str) -> Run:
        """See `Runs.get`."""
        return await self._call((await self._hitl()).runs.get, run_id)

    async def list(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        limit: int = 20,
        starting_after: str | None = None,
    ) -> Page[Run]:
        """See `Runs.list`."""
        return await self._call(
            (await self._hitl()).runs.list,
            user_id=user_id,
            status=status,
            limit=limit,
            starting_after=starting_after,
        )

    async def permissions(self, run_id: str) -> builtins.list[PermissionRequest]:
        """See `Runs.permissions`."""
        return await self._call((await self._hitl()).runs.permissions, run_id)

    async def pending(self, *, limit: int = 100) -> builtins.list[PermissionRequest]:
        """See `Runs.pending`."""
        return await self._call((await self._hitl()).runs.pending, limit=limit)

    async def answer(
        self,
        run_id: str,
        *,
        answers: dict[str, Any],
        request_id: str | None = None,
        actor: str | None = None,
    ) -> AnswerResult:
        """See `Runs.answer`."""
        return await self._call(
            (await self._hitl()).runs.answer,
            run_id,
            answers=answers,
            request_id=request_id,
            actor=actor,
        )

    async def approve(
        self,
        run_id: str,
        *,
        request_id: str,
        decision: str = "allow",
        remember: bool = False,
        reason: str | None = None,
        actor: str | None = None,
    ) -> ApproveResult:
        """See `Runs.approve`."""
        return await self._call(
            (await self._hitl()).runs.approve,
            run_id,
            request_id=request_id,
            decision=decision,
            remember=remember,
            reason=reason,
            actor=actor,
        )

    async def update_permission_mode(self, run_id: str, *, permission_mode: str) -> Run:
        """See `Runs.update_permission_mode`."""
        return await self._call(
            (await self._hitl()).runs.update_permission_mode,
            run_id,
            permission_mode=permission_mode,
        )

    async def cancel(self, run_id: str) -> Run:
        """See `Runs.cancel`."""
        return await self._call((await self._hitl()).runs.cancel, run_id)

    async def claim(self, run_id: str, *, worker: str, seconds: float = 30.0) -> Lease:
        """See `Runs.claim`."""
        return await self._call(
            (await self._hitl()).runs.claim, run_id, worker=worker, seconds=seconds
        )

    async def renew(self, lease: Lease, *, seconds: float = 30.0) -> Lease:
        """See `Runs.renew`."""
        return await self._call((await self._hitl()).runs.renew, lease, seconds=seconds)

    async def release(self, lease: Lease) -> bool:
        """See `Runs.release`."""
        return await self._call((await self._hitl()).runs.release, lease)

    async def claimable(self, *, limit: int = 100) -> builtins.list[Run]:
        """See `Runs.claimable`."""
        return await self._call((await self._hitl()).runs.claimable, limit=limit)

    async def prune(self, *, before: float, batch: int = 500) -> int:
        """See `Runs.prune`."""
        return await self._call((await self._hitl()).runs.prune, before=before, batch=batch)


class AsyncAgent:
    """The agent side of one run (`hitl_core.Agent`) as coroutines; `wait` holds no
    thread."""

    def __init__(self, engine: AsyncHitl, agent: Agent) -> None:
        self._engine = engine
        self._call = engine._call
        self.sync = agent
        """The synchronous agent underneath."""
        self.run_id = agent.run_id
        self.lease = agent.lease

    def __repr__(self) -> str:
        return f"<AsyncAgent run_id={self.run_id!r}>"

    async def run(self) -> Run:
        """See `Agent.run`."""
        return await self._call(self.sync.run)

    async def ask(
        self, questions: builtins.list[dict[str, Any]], *, key: str | None = None
    ) -> PermissionRequest:
        """See `Agent.ask`."""
        return await self._call(self.sync.ask, questions, key=key)

    async def request_tool(
        self,
        tool_name: str,
        tool_input: dict[str, Any] | None = None,
        *,
        safe: bool = False,
        key: str | None = None,
    ) -> ToolGate:
        """See `Agent.request_tool`."""
        return await self._call(self.sync.request_tool, tool_name, tool_input, safe=safe, key=key)

    async def propose_plan(self, plan_text: str, *, key: str | None = None) -> PermissionRequest:
        """See `Agent.propose_plan`."""
        return await self._call(self.sync.propose_plan, plan_text, key=key)

    async def result(self, request_id: str) -> PermissionRequest:
        """See `Agent.result`."""
        return await self._call(self.sync.result, request_id)

    async def wait(self, request_id: str, *, timeout: float | None = None) -> PermissionRequest:
        """See `Agent.wait`: the same ending, awaited without blocking the loop or
        holding a thread between looks."""
        limit = wait_timeout(timeout)

        async def look() -> tuple[PermissionRequest, bool, float | None]:
            request, run = await self._call(self.sync._look, request_id)
            return request, wait_is_over(request, run), run.deadline

        engine = self._engine.sync  # open: this agent came from it
        engine._check_open()
        return await engine._waiters.wait_async(self.run_id, limit, look)

    async def save_checkpoint(self, checkpoint: Any) -> Run:
        """See `Agent.save_checkpoint`."""
        return await self._call(self.sync.save_checkpoint, checkpoint)

    async def complete(self, output: Any = None) -> Run:
        """See `Agent.complete`."""
        return await self._call(self.sync.complete, output)

    async def fail(self, error: str | BaseException) -> Run:
        """See `Agent.fail`."""
        return await self._call(self.sync.fail, error)


class AsyncPermissions(_Part):
    """`hitl.permissions` as coroutines."""

    async def create(self, *, tool: str, user_id: str | None = None) -> PermissionPolicy:
        """See `Permissions.create`."""
        return await self._call((await self._hitl()).permissions.create, tool=tool, user_id=user_id)

    async def list(
        self, *, user_id: str | None = None, limit: int = 20, starting_after: str | None = None
    ) -> Page[PermissionPolicy]:
        """See `Permissions.list`."""
        return await self._call(
            (await self._hitl()).permissions.list,
            user_id=user_id,
            limit=limit,
            starting_after=starting_after,
        )

    async def delete(self, policy_id: str, *, user_id: str | None = None) -> PermissionPolicy:
        """See `Permissions.delete`."""
        return await self._call((await self._hitl()).permissions.delete, policy_id, user_id=user_id)


class AsyncTasks(_Part):
    """`hitl.tasks` as coroutines."""

    async def create(
        self,
        *,
        name: str,
        human_in_the_loop: bool | None = None,
        permission_mode: str | None = None,
        user_id: str | None = None,
    ) -> Task:
        """See `Tasks.create`."""
        return await self._call(
            (await self._hitl()).tasks.create,
            name=name,
            human_in_the_loop=human_in_the_loop,
            permission_mode=permission_mode,
            user_id=user_id,
        )

    async def get(self, task_id: str) -> Task:
        """See `Tasks.get`."""
        return await self._call((await self._hitl()).tasks.get, task_id)

    async def run(
        self,
        task_id: str,
        *,
        checkpoint: Any = None,
        idempotency_key: str | None = None,
        **overrides: Any,
    ) -> Run:
        """See `Tasks.run`."""
        return await self._call(
            (await self._hitl()).tasks.run,
            task_id,
            checkpoint=checkpoint,
            idempotency_key=idempotency_key,
            **overrides,
        )


class AsyncEvents(_Part):
    """`hitl.events` as coroutines; `wait` holds no thread."""

    async def list(
        self, *, after: str | None = None, run_id: str | None = None, limit: int = 100
    ) -> builtins.list[Event]:
        """See `Events.list`."""
        return await self._call(
            (await self._hitl()).events.list, after=after, run_id=run_id, limit=limit
        )

    async def wait(
        self,
        *,
        after: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> builtins.list[Event]:
        """See `Events.wait`."""
        check.cursor(after)
        check.limit(limit, 1000)
        if run_id is not None:
            check.identifier(run_id, "run_id")
        seconds = wait_timeout(timeout)

        async def look() -> tuple[builtins.list[Event], bool, float | None]:
            found = await self.list(after=after, run_id=run_id, limit=limit)
            if found:
                return found, True, None
            return found, False, await self._call(engine.events._next_deadline, run_id)

        engine = await self._hitl()
        engine._check_open()
        return await engine._waiters.wait_async(run_id or ANY_RUN, seconds, look)

    async def last_id(self) -> str | None:
        """See `Events.last_id`."""
        return await self._call((await self._hitl()).events.last_id)


class AsyncWebhooks(_Part):
    """`hitl.webhooks` as coroutines."""

    async def create(self, *, url: str, events: Sequence[str] | None = None) -> WebhookEndpoint:
        """See `Webhooks.create`."""
        return await self._call((await self._hitl()).webhooks.create, url=url, events=events)

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        """See `Webhooks.get`."""
        return await self._call((await self._hitl()).webhooks.get, endpoint_id)

    async def list(
        self, *, limit: int = 20, starting_after: str | None = None
    ) -> Page[WebhookEndpoint]:
        """See `Webhooks.list`."""
        return await self._call(
            (await self._hitl()).webhooks.list, limit=limit, starting_after=starting_after
        )

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        active: bool | None = None,
        rotate_secret: bool = False,
    ) -> WebhookEndpoint:
        """See `Webhooks.update`."""
        return await self._call(
            (await self._hitl()).webhooks.update,
            endpoint_id,
            url=url,
            events=events,
            active=active,
            rotate_secret=rotate_secret,
        )

    async def delete(self, endpoint_id: str) -> None:
        """See `Webhooks.delete`."""
        await self._call((await self._hitl()).webhooks.delete, endpoint_id)

    async def list_deliveries(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int = 20,
        starting_after: str | None = None,
    ) -> Page[WebhookDelivery]:
        """See `Webhooks.list_deliveries`."""
        return await self._call(
            (await self._hitl()).webhooks.list_deliveries,
            endpoint_id,
            status=status,
            limit=limit,
            starting_after=starting_after,
        )

    async def enqueue(self, limit: int = 1000) -> int:
        """See `Webhooks.enqueue`."""
        return await self._call((await self._hitl()).webhooks.enqueue, limit)

    async def claim(
        self, *, limit: int = 10, lease_seconds: float = 60.0, max_attempts: int = MAX_ATTEMPTS
    ) -> builtins.list[Outgoing]:
        """See `Webhooks.claim`."""
        return await self._call(
            (await self._hitl()).webhooks.claim,
            limit=limit,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
        )

    async def record(
        self,
        delivery_id: str,
        *,
        attempt: int,
        status_code: int | None = None,
        response_body: str | None = None,
        error: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: Sequence[float] = BACKOFF,
    ) -> WebhookDelivery:
        """See `Webhooks.record`."""
        return await self._call(
            (await self._hitl()).webhooks.record,
            delivery_id,
            attempt=attempt,
            status_code=status_code,
            response_body=response_body,
            error=error,
            max_attempts=max_attempts,
            backoff=backoff,
        )
