"""The engine facade and its transaction runner: `connect`, `Hitl`, and how every public
call runs (one store transaction; the clock read inside it; the call's own run brought
up to date with its deadline; a small batch of other overdue runs suspended; the
reducer's step saved with its events). The calls themselves live in `_person` (the
human side), `_agent` (the agent side) and `_catalog` (policies, tasks, events)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from . import _logic
from . import _validate as check
from ._clock import Clock, SystemClock, reading
from ._errors import ConflictError, HitlError, NotFoundError, ValidationError
from ._logic import Context, Step
from ._outbox import Webhooks
from ._records import Event, Lease, Run, json_copy
from ._store import Store, Transaction
from ._validate import shown
from ._wait import Waiters

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = ["Hitl", "check_options", "connect", "open_store", "store_opener"]

T = TypeVar("T")

log = logging.getLogger("hitl_core")

STORE_GROUP = "hitl_core.stores"
REMEMBER_SCOPES = ("user", "run")
RETRIES = 16
"""How often a call is run again after losing a race (a concurrent writer changed its run)."""
DUE_BATCH = 16
"""How many other overdue runs a call suspends on its way (`tick()` does the rest)."""
TICK_BATCH = 100
"""How many overdue runs one transaction of `tick()` suspends."""


class _Tokens:
    """Random 96-bit tokens (24 hex digits) from the operating system's CSPRNG, drawn a
    few hundred at a time: one `os.urandom` call serves many ids. A forked child
    starts with an empty pool, so it never hands out a token its parent also holds."""

    BATCH = 256

    def __init__(self) -> None:
        self._pool: list[str] = []
        os.register_at_fork(after_in_child=self._pool.clear)

    def take(self) -> str:
        try:
            return self._pool.pop()  # atomic: threads never get the same token
        except IndexError:
            text = secrets.token_hex(12 * self.BATCH)
            self._pool.extend(text[i : i + 24] for i in range(24, len(text), 24))
            return text[:24]


_TOKENS = _Tokens()


def random_id(prefix: str) -> str:
    """A fresh unguessable id such as `run_3f9c...` (96 random bits)."""
    return f"{prefix}_{_TOKENS.take()}"


def open_store(url: str) -> Store:
    """The store for `url`, found by its scheme in the `hitl_core.stores` entry points."""
    store = store_opener(url)(url)
    if not isinstance(store, Store):
        raise ValidationError(
            "invalid_url", f"the {url.split('://')[0]}:// entry point gave no Store"
        )
    return store


def store_opener(url: str) -> Callable[[str], Store]:
    """The function that opens the store for `url` (its scheme's entry point), found
    without opening anything: 422 invalid_url for a URL no installed store takes."""
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(
            "invalid_url", f"a store URL looks like 'memory://'; got {shown(url)}"
        )
    scheme = url.split("://", 1)[0]
    found = [ep for ep in entry_points(group=STORE_GROUP) if ep.name == scheme]
    if not found:
        known = sorted({ep.name for ep in entry_points(group=STORE_GROUP)})
        raise ValidationError(
            "invalid_url",
            f"no store is registered for {scheme}:// (known: {', '.join(known) or 'none'}; "
            "is hitl-core installed, with the extra that store needs?)",
        )
    factory: Callable[[str], Store] = found[0].load()
    return factory


def connect(
    url: str | Store = "memory://",
    *,
    clock: Clock | None = None,
    remember_scope: str = "user",
    ids: Callable[[str], str] | None = None,
) -> Hitl:
    """Open the store at `url` and return the engine that works on it. `url` may also be
    a `Store` object (an adapter under test that no entry point names yet).

    `clock` defaults to `SystemClock()`; `remember_scope` is "user" (a remembered allow
    becomes a policy of the run's user scope) or "run"; `ids(prefix)` makes ids (random
    by default; a deterministic source is useful in simulations)."""
    check_options(clock, remember_scope, ids)
    store = url if isinstance(url, Store) else open_store(url)
    made = random_id if ids is None else checked_ids(ids)
    return Hitl(store, clock or SystemClock(), remember_scope, made)


def checked_ids(ids: Callable[[str], str]) -> Callable[[str], str]:
    """A host's `ids` source, whose every id is checked: a non-empty string (422
    invalid_config otherwise; the call stores nothing)."""

    def made(prefix: str) -> str:
        found = ids(prefix)
        if not isinstance(found, str) or not found:
            raise ValidationError(
                "invalid_config", f"ids({prefix!r}) gave {shown(found)}, not a non-empty string"
            )
        return found

    return made


def check_options(clock: object, remember_scope: object, ids: object = None) -> None:
    """`connect`'s keyword checks (422 invalid_config)."""
    if remember_scope not in REMEMBER_SCOPES:
        raise ValidationError(
            "invalid_config", f"remember_scope must be 'user' or 'run'; got {shown(remember_scope)}"
        )
    if clock is not None and not callable(getattr(clock, "now", None)):
        raise ValidationError("invalid_config", f"a clock has a now() method; got {shown(clock)}")
    if ids is not None and not callable(ids):
        raise ValidationError("invalid_config", f"ids is a function of a prefix; got {shown(ids)}")


class _NeedsWrite(Exception):
    """A read found its run's deadline passed: the call is run again as a write."""


class Hitl:
    """An engine bound to one store and one clock. Use `connect()` to make one."""

    def __init__(
        self, store: Store, clock: Clock, remember_scope: str, ids: Callable[[str], str]
    ) -> None:
        from ._agent import Agent
        from ._catalog import Events, Permissions, Tasks
        from ._person import Runs

        self._agent_type = Agent
        self._store = store
        self._clock = clock
        self._ids = ids
        self.remember_scope = remember_scope
        self._closed = False
        self._waiters = Waiters(store, clock)
        self._damaged: set[str] = set()  # overdue runs that cannot be suspended (logged once)
        self.runs = Runs(self)
        self.permissions = Permissions(self)
        self.tasks = Tasks(self)
        self.events = Events(self)
        self.webhooks = Webhooks(self)

    # -- public ------------------------------------------------------------------------
    def agent(self, run_id: str, *, lease: Lease | None = None) -> Agent:
        """The agent side of run `run_id` (404 run_not_found if there is none). With a
        `lease` (from `runs.claim`), every change it makes is fenced by that lease."""
        if lease is not None and not isinstance(lease, Lease):
            raise ValidationError("invalid_request", f"lease must be a Lease; got {shown(lease)}")
        run = self.runs.get(run_id)
        if lease is not None and lease.run_id != run.id:
            raise ValidationError("invalid_request", f"the lease is for run {lease.run_id}")
        return self._agent_type(self, run.id, lease)

    def tick(self) -> list[Event]:
        """Apply every deadline that has passed (SPEC 6), a batch per transaction; return
        the events recorded. A run that cannot be suspended (a damaged row) is logged
        and skipped, never fatal to the others."""
        events: list[Event] = []
        while True:
            batch = self._write(
                lambda tx, ctx: self._suspend_due(tx, ctx, TICK_BATCH), others=False
            )
            if batch is None:
                return events
            events.extend(batch)

    def close(self) -> None:
        """Close the store. Later calls raise ConflictError('closed')."""
        if not self._closed:
            self._closed = True
            self._waiters.close()
            self._store.close()

    def __enter__(self) -> Hitl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Hitl store={type(self._store).__name__} clock={self._clock!r}>"

    # -- transactions ------------------------------------------------------------------
    def _check_open(self) -> None:
        """409 closed once the engine is closed."""
        if self._closed:
            raise ConflictError("closed", "this hitl-core engine is closed")

    def _write(self, work: Callable[[Transaction, Context], T], *, others: bool = True) -> T:
        """Run `work` in one write transaction; the clock is read inside it, after the
        store let this writer in. First a small batch of other overdue runs is
        suspended. Run again (up to RETRIES times) when a concurrent writer won a race."""
        self._check_open()
        store, clock, ids = self._store, self._clock, self._ids
        for attempt in range(RETRIES):
            try:
                with store.transaction(write=True) as tx:
                    ctx = Context(reading(clock), ids, True)
                    if others:
                        self._suspend_due(tx, ctx, DUE_BATCH)
                    result = work(tx, ctx)
                self._waiters.committed()
                return result
            except ConflictError as error:
                if error.code != "concurrent_update" or attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Transaction, Context], T], *, listing: bool = False) -> T:
        """Run `work` in a read transaction. If its run's deadline has passed (or, for a
        listing, any run's), it runs again as a write, which applies the deadline."""
        self._check_open()
        try:
            with self._store.transaction(write=False) as tx:
                ctx = Context(reading(self._clock), self._ids, False)
                if listing and tx.due_runs(ctx.now, 1):
                    raise _NeedsWrite
                return work(tx, ctx)
        except _NeedsWrite:
            return self._write(work)

    def _suspend_due(self, tx: Transaction, ctx: Context, limit: int) -> list[Event] | None:
        """Suspend up to `limit` overdue runs; their events, or None when none was due.
        A run that cannot be suspended is logged once and skipped from then on."""
        skipped = self._damaged
        found = tx.due_runs(ctx.now, limit + len(skipped))
        if not found:  # the usual case
            return None
        due = [run for run in found if run.id not in skipped]
        if not due:
            return None
        events: list[Event] = []
        for run in due[:limit]:
            try:
                events.extend(self._save(tx, _logic.suspend(ctx, run), run))
            except HitlError as error:
                if error.code == "concurrent_update":
                    raise
                log.error("cannot suspend run %s: %s", run.id, error)
                skipped.add(run.id)
        return events

    def _load(self, tx: Transaction, ctx: Context, run_id: object) -> tuple[Run, Context]:
        """The run named `run_id` brought up to date (its passed deadline applied; a read
        transaction becomes a write for that), and the call's context, its time never
        earlier than the run's last change. 422 for an id that is not a string (or is
        too long), 404 run_not_found."""
        run = tx.get_run(check.identifier(run_id, "run_id"))
        if run is None:
            raise NotFoundError("run_not_found", f"no run {shown(run_id)}")
        ctx = ctx.after(run)
        if run.deadline is not None and run.deadline <= ctx.now:
            if not ctx.writable:
                raise _NeedsWrite
            step = _logic.suspend(ctx, run)
            self._save(tx, step, run)
            run = step.run
        return run, ctx

    @staticmethod
    def _save(tx: Transaction, step: Step, before: Run | None) -> tuple[Event, ...]:
        """Write what a reducer step produced (`before`: the run as read, None for a new
        run); return its events."""
        if before is None:
            tx.insert_run(step.run)
            if step.key is not None:
                tx.insert_idempotency_key(step.key)
        elif step.run is not before:
            tx.update_run(step.run)
        if step.requests:
            tx.save_requests(step.requests)
        if step.policies:
            for policy in step.policies:
                tx.insert_policy(policy)
        if step.events:
            tx.append_events(step.events)
        return step.events


def keyed(run_id: str, key: object) -> str | None:
    """The request id an agent's `key` names (None without a key); 422 for a bad key."""
    if key is None:
        return None
    name = check.text(key, "key", limit=check.MAX_NAME)
    return _logic.keyed_request_id(run_id, name)


def settings(
    *,
    human_in_the_loop: object,
    permission_mode: object,
    user_id: object,
    input_timeout: object,
    metadata: object,
    checkpoint: object,
    task_id: str | None,
) -> dict[str, Any]:
    """A run's settings, validated as SPEC 2 says, in a fixed order."""
    hitl, mode, timeout = check.config(human_in_the_loop, permission_mode, input_timeout)
    user = check.user(user_id)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationError("invalid_config", "metadata must be a dict or None")
    return {
        "human_in_the_loop": hitl,
        "permission_mode": mode,
        "user_id": user,
        "task_id": task_id,
        "metadata": json_copy(metadata, "invalid_config", "metadata", check.MAX_METADATA),
        "input_timeout": timeout,
        "checkpoint": json_copy(checkpoint, "invalid_request", "checkpoint", check.MAX_JSON),
    }
