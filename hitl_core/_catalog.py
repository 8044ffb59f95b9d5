"""Pre-approval policies (`hitl.permissions`), reusable tasks (`hitl.tasks`) and the
event log (`hitl.events`)."""

from __future__ import annotations

import builtins
import math
from typing import TYPE_CHECKING, Any

from . import _logic
from . import _validate as check
from ._agent import wait_timeout
from ._engine import settings
from ._errors import NotFoundError, ValidationError
from ._logic import Context
from ._person import start
from ._records import Event, Page, PermissionPolicy, Run, Task
from ._store import Transaction
from ._validate import shown
from ._wait import ANY_RUN

if TYPE_CHECKING:
    from ._engine import Hitl

__all__ = ["Events", "Permissions", "Tasks"]

MAX_EVENTS = 1000
_TASK_OVERRIDES = frozenset(
    {"human_in_the_loop", "permission_mode", "user_id", "metadata", "input_timeout"}
)


class Permissions:
    """Pre-approval policies per user scope (SPEC 5)."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def create(self, *, tool: str, user_id: str | None = None) -> PermissionPolicy:
        """Pre-approve a tool name or pattern for a scope; the same pair gives the same policy."""
        name = check.text(tool, "tool")
        user = check.user(user_id, "invalid_request")

        def work(tx: Transaction, ctx: Context) -> PermissionPolicy:
            existing = tx.find_policy(user, name)
            policy, stored = _logic.create_policy(ctx, user, name, existing)
            if stored is not None:
                if existing is not None:
                    tx.delete_policy(existing.id)
                tx.insert_policy(stored)
            return policy

        return self._engine._write(work)

    def list(
        self, *, user_id: str | None = None, limit: int = 20, starting_after: str | None = None
    ) -> Page[PermissionPolicy]:
        """A page of the scope's policies, oldest first."""
        user = check.user(user_id, "invalid_request")
        count = check.limit(limit)
        cursor = check.cursor(starting_after)

        def work(tx: Transaction, ctx: Context) -> Page[PermissionPolicy]:
            found = tx.list_policies(user, limit=count, starting_after=cursor)
            if found is None:
                raise check.unknown_cursor(cursor)
            policies, more = found
            last = policies[-1].id if more else None
            return Page(data=policies, has_more=more, next_starting_after=last)

        return self._engine._read(work)

    def delete(self, policy_id: str, *, user_id: str | None = None) -> PermissionPolicy:
        """Remove a policy of this scope and return it (404 policy_not_found)."""
        user = check.user(user_id, "invalid_request")
        named = check.identifier(policy_id, "policy_id")

        def work(tx: Transaction, ctx: Context) -> PermissionPolicy:
            policy = tx.get_policy(named)
            if policy is None or policy.user_id != user:
                raise NotFoundError(
                    "policy_not_found", f"no policy {shown(policy_id)} in this scope"
                )
            tx.delete_policy(policy.id)
            return policy

        return self._engine._write(work)


class Tasks:
    """Reusable tasks whose settings runs inherit (SPEC 8)."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def create(
        self,
        *,
        name: str,
        human_in_the_loop: bool | None = None,
        permission_mode: str | None = None,
        user_id: str | None = None,
    ) -> Task:
        """Store a task. Settings left None fall back to the defaults when it runs."""
        title = check.text(name, "name")
        hitl = None if human_in_the_loop is None else check.switch(human_in_the_loop)
        mode = None if permission_mode is None else check.mode(permission_mode)
        if hitl is not None and mode is not None:
            check.combination(hitl, mode)
        user = check.user(user_id)

        def work(tx: Transaction, ctx: Context) -> Task:
            task = Task(
                id=ctx.new_id("task"),
                name=title,
                human_in_the_loop=hitl,
                permission_mode=mode,
                user_id=user,
                created_at=ctx.now,
            )
            tx.insert_task(task)
            return task

        return self._engine._write(work)

    def get(self, task_id: str) -> Task:
        """The task (404 task_not_found)."""
        return self._engine._read(lambda tx, ctx: _task(tx, task_id))

    def run(
        self,
        task_id: str,
        *,
        checkpoint: Any = None,
        idempotency_key: str | None = None,
        **overrides: Any,
    ) -> Run:
        """Start a run of the task: each setting is the override, else the task's, else
        the default; the result is validated as `runs.create` does. `checkpoint` and
        `idempotency_key` are those of `runs.create` (the key is bound to the task too)."""
        unknown = set(overrides) - _TASK_OVERRIDES
        if unknown:
            raise ValidationError("invalid_request", f"unknown task run settings {sorted(unknown)}")
        key = None
        if idempotency_key is not None:
            key = check.text(idempotency_key, "idempotency_key", limit=check.MAX_NAME)
        engine = self._engine

        def work(tx: Transaction, ctx: Context) -> Run:
            task = _task(tx, task_id)

            def pick(name: str, default: object) -> object:
                if overrides.get(name) is not None:
                    return overrides[name]
                stored = getattr(task, name, None)
                return default if stored is None else stored

            values = settings(
                human_in_the_loop=pick("human_in_the_loop", False),
                permission_mode=pick("permission_mode", "autonomous"),
                user_id=pick("user_id", None),
                input_timeout=pick("input_timeout", check.DEFAULT_INPUT_TIMEOUT),
                metadata=overrides.get("metadata"),
                checkpoint=checkpoint,
                task_id=task.id,
            )
            return start(engine, tx, ctx, values, key)

        return engine._write(work)


def _task(tx: Transaction, task_id: object) -> Task:
    task = tx.get_task(check.identifier(task_id, "task_id"))
    if task is None:
        raise NotFoundError("task_not_found", f"no task {shown(task_id)}")
    return task


class Events:
    """The event log (SPEC 9)."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def list(
        self, *, after: str | None = None, run_id: str | None = None, limit: int = 100
    ) -> builtins.list[Event]:
        """Events recorded after the event `after`, in order, optionally of one run."""
        cursor = check.cursor(after)
        count = check.limit(limit, MAX_EVENTS)
        if run_id is not None:
            check.identifier(run_id, "run_id")

        def work(tx: Transaction, ctx: Context) -> builtins.list[Event]:
            events = tx.list_events(after=cursor, run_id=run_id, limit=count)
            if events is None:
                raise check.unknown_cursor(cursor)
            return events

        return self._engine._read(work, listing=True)

    def wait(
        self,
        *,
        after: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> builtins.list[Event]:
        """`list`, but when nothing was recorded after `after` yet, wait until something
        is (from any thread or process: the store's change feed wakes the wait) or
        `timeout` seconds of the engine's clock pass ([]). The follower's loop:
        `after = events[-1].id` after each batch; start from `last_id()` to see only what
        happens from now on."""
        cursor = check.cursor(after)
        count = check.limit(limit, MAX_EVENTS)
        if run_id is not None:
            check.identifier(run_id, "run_id")
        limit_s = wait_timeout(timeout)
        self._engine._check_open()

        def look() -> tuple[builtins.list[Event], bool, float | None]:
            found = self.list(after=cursor, run_id=run_id, limit=count)
            return found, bool(found), None if found else self._next_deadline(run_id)

        return self._engine._waiters.wait(run_id or ANY_RUN, limit_s, look)

    def _next_deadline(self, run_id: str | None = None) -> float | None:
        """When the next suspension is due (of one run, or of any), as a clock reading;
        None when no request is pending against a deadline. A follower of the log sleeps
        no longer than that: the suspension's event is recorded lazily, by a look. Runs
        that cannot be suspended (damaged rows, logged once) have no deadline here: a
        look cannot apply theirs, so waking for it would only look again at once."""
        damaged = self._engine._damaged

        def work(tx: Transaction, ctx: Context) -> float | None:
            if run_id is not None:
                run = tx.get_run(run_id)
                return None if run is None or run.id in damaged else run.deadline
            due = [run for run in tx.due_runs(math.inf, 1 + len(damaged)) if run.id not in damaged]
            return due[0].deadline if due else None

        return self._engine._read(work)

    def last_id(self) -> str | None:
        """The id of the newest event (None: none yet): `wait(after=...)` from it sees
        only what happens from now on."""
        return self._engine._read(lambda tx, ctx: tx.last_event_id())
