"""The engine: the public API of SPEC 11 (`connect`, `hitl.runs`, `hitl.agent(...)`,
`hitl.permissions`, `hitl.tasks`, `hitl.events`, `hitl.tick`). Each call reads the clock
once, opens one store transaction, applies due deadlines, validates, asks the pure
reducer (`_logic`) what changes, and writes the result with its events."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from . import _logic, _rules
from . import _validate as check
from ._clock import Clock, SystemClock
from ._errors import ConflictError, NotFoundError, ValidationError
from ._logic import Context, Step
from ._outbox import Webhooks
from ._policy import exactly, matches
from ._records import (
    AnswerResult,
    ApproveResult,
    Event,
    Page,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    Task,
    ToolGate,
    evolve,
    json_copy,
)
from ._store import Store, Transaction
from ._validate import shown

__all__ = ["Agent", "Events", "Hitl", "Permissions", "Runs", "Tasks", "connect"]

T = TypeVar("T")

STORE_GROUP = "hitl_core.stores"
REMEMBER_SCOPES = ("user", "run")
_RETRIES = 8
_MAX_EVENTS = 1000
_TASK_OVERRIDES = frozenset(
    {"human_in_the_loop", "permission_mode", "user_id", "metadata", "input_timeout"}
)


def random_id(prefix: str) -> str:
    """A fresh unguessable id such as `run_3f9c...` (96 random bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def open_store(url: str) -> Store:
    """The store for `url`, found by its scheme in the `hitl_core.stores` entry points."""
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
            "is hitl-core installed?)",
        )
    factory: Callable[[str], Store] = found[0].load()
    store = factory(url)
    if not isinstance(store, Store):
        raise ValidationError("invalid_url", f"the {scheme}:// entry point gave no Store")
    return store


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
    if remember_scope not in REMEMBER_SCOPES:
        raise ValidationError(
            "invalid_config", f"remember_scope must be 'user' or 'run'; got {shown(remember_scope)}"
        )
    if clock is not None and not callable(getattr(clock, "now", None)):
        raise ValidationError("invalid_config", f"a clock has a now() method; got {shown(clock)}")
    store = url if isinstance(url, Store) else open_store(url)
    return Hitl(store, clock or SystemClock(), remember_scope, ids or random_id)


class Hitl:
    """An engine bound to one store and one clock. Use `connect()` to make one."""

    def __init__(
        self, store: Store, clock: Clock, remember_scope: str, ids: Callable[[str], str]
    ) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids
        self.remember_scope = remember_scope
        self._closed = False
        self.runs = Runs(self)
        self.permissions = Permissions(self)
        self.tasks = Tasks(self)
        self.events = Events(self)
        self.webhooks = Webhooks(self)

    # -- public ------------------------------------------------------------------------
    def agent(self, run_id: str) -> Agent:
        """The agent side of run `run_id` (404 run_not_found if there is none)."""
        self.runs.get(run_id)
        return Agent(self, run_id)

    def tick(self) -> list[Event]:
        """Apply every deadline that has passed (SPEC 6); return the events recorded."""
        return self._write(self._apply_deadlines, deadlines_first=False)

    def close(self) -> None:
        """Close the store. Later calls raise ConflictError('closed')."""
        if not self._closed:
            self._closed = True
            self._store.close()

    def __enter__(self) -> Hitl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Hitl store={type(self._store).__name__} clock={self._clock!r}>"

    # -- transactions ------------------------------------------------------------------
    def _context(self) -> Context:
        if self._closed:
            raise ConflictError("closed", "this hitl-core engine is closed")
        return Context(now=self._clock.now(), new_id=self._ids)

    def _write(
        self, work: Callable[[Transaction, Context], T], *, deadlines_first: bool = True
    ) -> T:
        """Run `work` in one write transaction, after applying the due deadlines.
        Retried when an optimistic version check failed (a concurrent writer)."""
        ctx = self._context()
        for attempt in range(_RETRIES):
            try:
                with self._store.transaction(write=True) as tx:
                    if deadlines_first:
                        self._apply_deadlines(tx, ctx)
                    return work(tx, ctx)
            except ConflictError as error:
                if error.code != "concurrent_update" or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Transaction, Context], T]) -> T:
        """Run `work` in a read transaction, or a write one if a deadline is due."""
        ctx = self._context()
        with self._store.transaction(write=False) as tx:
            if not tx.due_runs(ctx.now, 1):
                return work(tx, ctx)
        return self._write(work)

    @staticmethod
    def _apply_deadlines(tx: Transaction, ctx: Context) -> list[Event]:
        events: list[Event] = []
        while due := tx.due_runs(ctx.now, 100):
            for run in due:
                events.extend(_save(tx, _logic.suspend(ctx, run), run))
        return events

    @staticmethod
    def _run(tx: Transaction, run_id: object, trigger: str | None = None) -> Run:
        """The run, or 404; then the rulebook's refusal (409) if `trigger` can't fire."""
        run = tx.get_run(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise NotFoundError("run_not_found", f"no run {shown(run_id)}")
        if trigger is not None:
            _rules.check(run.status, trigger)
        return run


def _save(tx: Transaction, step: Step, before: Run | None) -> list[Event]:
    """Write what a reducer step produced (`before`: the run as read, None for a new
    run); return its events."""
    if before is None:
        tx.insert_run(step.run)
    elif step.run is not before:
        tx.update_run(step.run)
    if step.requests:
        tx.save_requests(step.requests)
    if step.events:
        tx.append_events(step.events)
    return list(step.events)


def _policy_source(tx: Transaction, run: Run, tool_name: str) -> str | None:
    """'policy' or 'remembered' when a policy of the run's scope covers the tool; the
    exact policy first, then the patterns in creation order (first match wins)."""
    for policy in tx.candidate_policies(run.user_id, tool_name):
        if matches(policy.tool_name, tool_name):
            return "remembered" if policy.source == "run_approval" else "policy"
    return None


def _create_run(
    tx: Transaction,
    ctx: Context,
    *,
    human_in_the_loop: object,
    permission_mode: object,
    user_id: object,
    input_timeout: object,
    metadata: object,
    task_id: str | None = None,
) -> Run:
    hitl, mode, timeout = check.config(human_in_the_loop, permission_mode, input_timeout)
    user = check.user(user_id)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationError("invalid_config", "metadata must be a dict or None")
    step = _logic.new_run(
        ctx,
        human_in_the_loop=hitl,
        permission_mode=mode,
        user_id=user,
        task_id=task_id,
        metadata=json_copy(metadata, "invalid_config", "metadata"),
        input_timeout=timeout,
    )
    _save(tx, step, None)
    return step.run


class Runs:
    """The human side of runs: create, read, answer, approve, switch mode, cancel."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def create(
        self,
        *,
        human_in_the_loop: bool = False,
        permission_mode: str = "autonomous",
        user_id: str | None = None,
        input_timeout: float = check.DEFAULT_INPUT_TIMEOUT,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Start a run (status running); 422 for a configuration SPEC 2 refuses."""
        return self._engine._write(
            lambda tx, ctx: _create_run(
                tx,
                ctx,
                human_in_the_loop=human_in_the_loop,
                permission_mode=permission_mode,
                user_id=user_id,
                input_timeout=input_timeout,
                metadata=metadata,
            )
        )

    def get(self, run_id: str) -> Run:
        """The run (404 run_not_found)."""
        return self._engine._read(lambda tx, ctx: Hitl._run(tx, run_id))

    def list(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        limit: int = 20,
        starting_after: str | None = None,
    ) -> Page[Run]:
        """A page of runs, oldest first, optionally of one user and one status."""
        user = check.user(user_id, "invalid_request")
        if status is not None and status not in RunStatus.__members__.values():
            raise ValidationError("invalid_request", f"unknown run status {shown(status)}")
        count = check.limit(limit)
        cursor = check.cursor(starting_after)

        def work(tx: Transaction, ctx: Context) -> Page[Run]:
            found = tx.list_runs(user_id=user, status=status, limit=count, starting_after=cursor)
            if found is None:
                raise check.unknown_cursor(cursor)
            runs, more = found
            return Page(data=runs, has_more=more, next_starting_after=runs[-1].id if more else None)

        return self._engine._read(work)

    def permissions(self, run_id: str) -> builtins.list[PermissionRequest]:
        """Every request of the run, pending and resolved, oldest first."""

        def work(tx: Transaction, ctx: Context) -> builtins.list[PermissionRequest]:
            run = Hitl._run(tx, run_id)
            return tx.list_requests(run.id)

        return self._engine._read(work)

    def pending(self, *, limit: int = 100) -> builtins.list[PermissionRequest]:
        """Pending requests across every run, oldest first (an operator's inbox)."""
        count = check.limit(limit, _MAX_EVENTS)
        return self._engine._read(lambda tx, ctx: tx.pending_requests(count))

    def answer(
        self,
        run_id: str,
        *,
        answers: dict[str, Any],
        request_id: str | None = None,
        actor: str | None = None,
    ) -> AnswerResult:
        """Answer a pending question or plan request (SPEC 4.1, 4.3)."""

        def work(tx: Transaction, ctx: Context) -> AnswerResult:
            run = Hitl._run(tx, run_id, "decide")
            if not isinstance(answers, dict):
                raise ValidationError("invalid_answers", "answers must be a dict")
            if not answers:
                raise ValidationError("empty_answers", "answers is empty")
            who = check.optional_text(actor, "actor")
            pending = tx.list_requests(run.id, pending_only=True)
            request = _answerable(tx, run, request_id, pending)
            normalised = check.normalise_answers(request, answers)
            if request.status is RequestStatus.ANSWERED:
                if request.answers != normalised:
                    raise ConflictError(
                        "already_answered",
                        f"request {request.request_id} was already answered differently",
                    )
                return AnswerResult(request=request, resumed=False)
            changes: dict[str, Any] = {}
            decision, reason = "answer", None
            if request.kind == "plan":
                value = next(iter(normalised.values()))
                decision = "approve" if value == "Approve" else "revise"
                reason = None if decision == "approve" else value
                if decision == "approve":
                    changes["plan_approved"] = True
            answered = _logic.decide(
                request,
                ctx.now,
                status=RequestStatus.ANSWERED,
                decision=decision,
                source="human",
                answers=normalised,
                reason=reason,
                actor=who,
            )
            others = [p for p in pending if p.request_id != request.request_id]
            step = _logic.resolve(ctx, run, [answered], others, **changes)
            _save(tx, step, run)
            return AnswerResult(request=step.requests[0], resumed=step.resumed)

        return self._engine._write(work)

    def approve(
        self,
        run_id: str,
        *,
        request_id: str,
        decision: str = "allow",
        remember: bool = False,
        reason: str | None = None,
        actor: str | None = None,
    ) -> ApproveResult:
        """Allow or deny a pending tool request (SPEC 4.2, 4.4)."""
        engine = self._engine

        def work(tx: Transaction, ctx: Context) -> ApproveResult:
            run = Hitl._run(tx, run_id, "decide")
            if decision not in ("allow", "deny"):
                raise ValidationError(
                    "invalid_decision", f"decision must be 'allow' or 'deny'; got {shown(decision)}"
                )
            keep = check.flag(remember, "remember")
            why = check.optional_text(reason, "reason")
            who = check.optional_text(actor, "actor")
            request = tx.get_request(request_id) if isinstance(request_id, str) else None
            if request is None or request.run_id != run.id or request.kind != "tool":
                raise NotFoundError(
                    "gate_not_found", f"no tool request {shown(request_id)} on this run"
                )
            wanted = RequestStatus.ALLOWED if decision == "allow" else RequestStatus.DENIED
            if request.status is RequestStatus.CANCELLED:
                raise NotFoundError("gate_cancelled", f"request {request_id} was cancelled")
            if request.status not in (RequestStatus.PENDING, wanted):
                raise NotFoundError(
                    "gate_resolved_otherwise",
                    f"request {request_id} is {request.status.value}; that decision stands",
                )
            if request.status is wanted:  # a repeat: only remember may be upgraded
                if not keep or request.remember:
                    return ApproveResult(
                        request=request,
                        resumed=False,
                        remembered=request.tool_name in run.remembered_allow,
                    )
                step = _logic.upgrade_remember(ctx, run, request)
                _save(tx, step, run)
                step_run, result_request, resumed = step.run, step.requests[0], False
            else:
                decided = _logic.decide(
                    request,
                    ctx.now,
                    status=wanted,
                    decision=decision,
                    source="human",
                    remember=keep,
                    reason=why,
                    actor=who,
                )
                pending = [
                    p
                    for p in tx.list_requests(run.id, pending_only=True)
                    if p.request_id != request.request_id
                ]
                changes = _logic.remembered(run, request.tool_name, decision) if keep else {}
                step = _logic.resolve(ctx, run, [decided], pending, **changes)
                _save(tx, step, run)
                step_run, result_request, resumed = step.run, step.requests[0], step.resumed
            if keep and decision == "allow" and engine.remember_scope == "user":
                tool = exactly(request.tool_name)  # a name, never a pattern
                _ensure_policy(tx, ctx, step_run.user_id, tool, "run_approval")
            return ApproveResult(
                request=result_request,
                resumed=resumed,
                remembered=request.tool_name in step_run.remembered_allow,
            )

        return engine._write(work)

    def update_permission_mode(self, run_id: str, *, permission_mode: str) -> Run:
        """Switch the run's mode mid-run (SPEC 7); returns the run."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run = Hitl._run(tx, run_id, "switch_mode")
            mode = check.mode(permission_mode)
            check.combination(run.human_in_the_loop, mode)
            step = _logic.switch_mode(ctx, run, mode, tx.list_requests(run.id, pending_only=True))
            _save(tx, step, run)
            return step.run

        return self._engine._write(work)

    def cancel(self, run_id: str) -> Run:
        """Cancel the run; its pending requests become cancelled (409 when terminal)."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run = Hitl._run(tx, run_id, "cancel")
            step = _logic.end(ctx, run, "cancel", tx.list_requests(run.id, pending_only=True))
            _save(tx, step, run)
            return step.run

        return self._engine._write(work)


def _answerable(
    tx: Transaction, run: Run, request_id: object, pending: list[PermissionRequest]
) -> PermissionRequest:
    """The question or plan request an answer is for (409 not_awaiting_input)."""
    if request_id is None:
        for request in pending:
            if request.kind in ("question", "plan"):
                return request
        raise ConflictError("not_awaiting_input", f"run {run.id} has no pending question or plan")
    if not isinstance(request_id, str):
        raise ValidationError("invalid_request", "request_id must be a string")
    found = tx.get_request(request_id)
    if (
        found is None
        or found.run_id != run.id
        or found.kind not in ("question", "plan")
        or found.status not in (RequestStatus.PENDING, RequestStatus.ANSWERED)
    ):
        raise ConflictError(
            "not_awaiting_input",
            f"run {run.id} has no question or plan request {shown(request_id)}",
        )
    return found


def _ensure_policy(
    tx: Transaction, ctx: Context, user_id: str | None, tool: str, source: str
) -> PermissionPolicy:
    """The policy of this scope for `tool`, created now if there is none."""
    existing = tx.find_policy(user_id, tool)
    if existing is not None:
        return existing
    policy = PermissionPolicy(
        id=ctx.new_id("pol"), user_id=user_id, tool_name=tool, source=source, created_at=ctx.now
    )
    tx.insert_policy(policy)
    return policy


class Agent:
    """The agent side of one run: ask, request tools, propose plans, read decisions,
    complete or fail."""

    def __init__(self, engine: Hitl, run_id: str) -> None:
        self._engine = engine
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<Agent run_id={self.run_id!r}>"

    def run(self) -> Run:
        """The run as stored now."""
        return self._engine.runs.get(self.run_id)

    def ask(self, questions: list[dict[str, Any]]) -> PermissionRequest:
        """Open a question request (409 hitl_disabled without human_in_the_loop)."""

        def work(tx: Transaction, ctx: Context) -> PermissionRequest:
            run = Hitl._run(tx, self.run_id, "open_request")
            if not run.human_in_the_loop:
                raise ConflictError(
                    "hitl_disabled", "questions need a run with human_in_the_loop=True"
                )
            step = _logic.ask(ctx, run, check.normalise_questions(questions))
            _save(tx, step, run)
            return step.requests[0]

        return self._engine._write(work)

    def request_tool(
        self, tool_name: str, tool_input: dict[str, Any] | None = None, *, safe: bool = False
    ) -> ToolGate:
        """Ask whether the agent may call a tool now (SPEC 4.2's rules, in order)."""

        def work(tx: Transaction, ctx: Context) -> ToolGate:
            run = Hitl._run(tx, self.run_id, "open_request")
            name = check.text(tool_name, "tool_name")
            if tool_input is not None and not isinstance(tool_input, dict):
                raise ValidationError("invalid_request", "tool_input must be a dict or None")
            arguments = json_copy(tool_input or {}, "invalid_request", "tool_input")
            is_safe = check.flag(safe, "safe")
            decided = _logic.gate(
                run, name, safe=is_safe, policy_source=lambda: _policy_source(tx, run, name)
            )
            if decided is not None:
                return decided
            step = _logic.open_request(ctx, run, kind="tool", tool_name=name, tool_input=arguments)
            _save(tx, step, run)
            return ToolGate(status="pending", source=None, request_id=step.requests[0].request_id)

        return self._engine._write(work)

    def propose_plan(self, plan_text: str) -> PermissionRequest:
        """Open a plan request (plan mode only; 409 not_plan_mode otherwise)."""

        def work(tx: Transaction, ctx: Context) -> PermissionRequest:
            run = Hitl._run(tx, self.run_id, "open_request")
            if run.permission_mode != "plan":
                raise ConflictError("not_plan_mode", f"run {run.id} is not in plan mode")
            step = _logic.propose_plan(ctx, run, check.text(plan_text, "plan_text"))
            _save(tx, step, run)
            return step.requests[0]

        return self._engine._write(work)

    def result(self, request_id: str) -> PermissionRequest:
        """The request as it stands now: pending, or resolved with its decision."""

        def work(tx: Transaction, ctx: Context) -> PermissionRequest:
            run = Hitl._run(tx, self.run_id)
            request = tx.get_request(request_id) if isinstance(request_id, str) else None
            if request is None or request.run_id != run.id:
                raise NotFoundError("gate_not_found", f"no request {shown(request_id)} on this run")
            return request

        return self._engine._read(work)

    def complete(self, output: Any = None) -> Run:
        """Finish the run (409 pending_requests while a request is pending)."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run = Hitl._run(tx, self.run_id, "complete")
            step = _logic.end(
                ctx, run, "complete", (), output=json_copy(output, "invalid_request", "output")
            )
            _save(tx, step, run)
            return step.run

        return self._engine._write(work)

    def fail(self, error: str | BaseException) -> Run:
        """End the run as failed; its pending requests become cancelled."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run = Hitl._run(tx, self.run_id, "fail")
            if isinstance(error, BaseException):
                message = _describe_exception(error)
            else:
                message = check.text(error, "error")
            pending = tx.list_requests(run.id, pending_only=True)
            step = _logic.end(ctx, run, "fail", pending, error=message)
            _save(tx, step, run)
            return step.run

        return self._engine._write(work)


def _describe_exception(error: BaseException) -> str:
    """`Type: message` for an exception, whatever its `__str__` does; text with no UTF-8
    form (an undecodable file name, say) is escaped so that every store can keep it."""
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not stop the run from failing
        text = "<unprintable>"
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


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
            if existing is not None and existing.source == "run_approval":
                # an explicit pre-approval of a tool a person had remembered: it becomes
                # an api policy (SPEC 5), keeping its id and time
                promoted = evolve(existing, source="api")
                tx.delete_policy(existing.id)
                tx.insert_policy(promoted)
                return promoted
            return _ensure_policy(tx, ctx, user, name, "api")

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

        def work(tx: Transaction, ctx: Context) -> PermissionPolicy:
            policy = tx.get_policy(policy_id) if isinstance(policy_id, str) else None
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

    def run(self, task_id: str, **overrides: Any) -> Run:
        """Start a run of the task: each setting is the override, else the task's, else
        the default; the result is validated as `runs.create` does."""
        unknown = set(overrides) - _TASK_OVERRIDES
        if unknown:
            raise ValidationError("invalid_request", f"unknown task run settings {sorted(unknown)}")

        def work(tx: Transaction, ctx: Context) -> Run:
            task = _task(tx, task_id)

            def pick(name: str, default: object) -> object:
                if overrides.get(name) is not None:
                    return overrides[name]
                stored = getattr(task, name, None)
                return default if stored is None else stored

            return _create_run(
                tx,
                ctx,
                human_in_the_loop=pick("human_in_the_loop", False),
                permission_mode=pick("permission_mode", "autonomous"),
                user_id=pick("user_id", None),
                input_timeout=pick("input_timeout", check.DEFAULT_INPUT_TIMEOUT),
                metadata=overrides.get("metadata"),
                task_id=task.id,
            )

        return self._engine._write(work)


def _task(tx: Transaction, task_id: object) -> Task:
    task = tx.get_task(task_id) if isinstance(task_id, str) else None
    if task is None:
        raise NotFoundError("task_not_found", f"no task {shown(task_id)}")
    return task


class Events:
    """The event log (SPEC 9)."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def list(
        self, *, after: str | None = None, run_id: str | None = None, limit: int = 100
    ) -> list[Event]:
        """Events recorded after the event `after`, in order, optionally of one run."""
        cursor = check.cursor(after)
        count = check.limit(limit, _MAX_EVENTS)
        if run_id is not None and not isinstance(run_id, str):
            raise ValidationError("invalid_request", "run_id must be a string or None")

        def work(tx: Transaction, ctx: Context) -> list[Event]:
            events = tx.list_events(after=cursor, run_id=run_id, limit=count)
            if events is None:
                raise check.unknown_cursor(cursor)
            return events

        return self._engine._read(work)
