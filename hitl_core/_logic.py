"""The pure reducer: a run and its requests, an input and `now` in; the new records and
the events they cause out. No storage, no clock, no randomness of its own: time and
fresh ids arrive in a `Context`. Status changes go through the rulebook (`_rules`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from . import _rules
from ._records import (
    PLAN_HEADER,
    QUESTION_TOOL,
    Event,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    ToolGate,
    evolve,
    fresh,
)

__all__ = ["Context", "Step"]

PLAN_FIRST = "the plan is not approved yet: propose a plan and wait for its approval"
DENIED_BEFORE = "a person denied this tool earlier in this run and asked to remember it"


class Context:
    """What one call of the engine knows from outside: the time and an id source."""

    __slots__ = ("new_id", "now")

    def __init__(self, now: float, new_id: Callable[[str], str]) -> None:
        self.now = now
        self.new_id = new_id

    def event(
        self, type_: str, run_id: str, data: dict[str, Any], at: float | None = None
    ) -> Event:
        """A new event, stamped now (or at `at`); `data` must be a fresh dict."""
        return fresh(
            Event,
            id=self.new_id("evt"),
            type=type_,
            run_id=run_id,
            created_at=self.now if at is None else at,
            data=data,
        )


@attrs.frozen
class Step:
    """What an input did: the run as it is now, the requests it created or changed, the
    events to record, and whether a suspended run was resumed."""

    run: Run
    requests: tuple[PermissionRequest, ...] = ()
    events: tuple[Event, ...] = ()
    resumed: bool = False


def _touch(run: Run, now: float, **changes: Any) -> Run:
    """The run with `changes`, a new version and updated_at = now."""
    return evolve(run, version=run.version + 1, updated_at=now, **changes)


def _resolved_event(ctx: Context, request: PermissionRequest) -> Event:
    return ctx.event(
        "request.resolved",
        request.run_id,
        {
            "request_id": request.request_id,
            "kind": request.kind,
            "status": request.status.value,
            "decision": request.decision,
            "source": request.source,
        },
    )


# -- creating a run ---------------------------------------------------------------------


def new_run(
    ctx: Context,
    *,
    human_in_the_loop: bool,
    permission_mode: str,
    user_id: str | None,
    task_id: str | None,
    metadata: dict[str, Any] | None,
    input_timeout: float,
) -> Step:
    """A new running run and its run.started event."""
    run = Run(
        id=ctx.new_id("run"),
        status=RunStatus.RUNNING,
        human_in_the_loop=human_in_the_loop,
        permission_mode=permission_mode,
        user_id=user_id,
        task_id=task_id,
        metadata=metadata,
        input_timeout=input_timeout,
        created_at=ctx.now,
        updated_at=ctx.now,
    )
    data = {
        "human_in_the_loop": human_in_the_loop,
        "permission_mode": permission_mode,
        "user_id": user_id,
        "task_id": task_id,
    }
    return Step(run, events=(ctx.event("run.started", run.id, data),))


# -- the timeout clock ------------------------------------------------------------------


def suspend(ctx: Context, run: Run) -> Step:
    """Suspend a run whose deadline has passed (SPEC 6). The event is stamped with the
    deadline itself, so the outcome does not depend on when this is applied."""
    assert run.deadline is not None and run.deadline <= ctx.now
    _rules.check(run.status, "suspend")
    at = run.deadline
    suspended = evolve(
        run,
        version=run.version + 1,
        updated_at=max(run.updated_at, at),
        suspended=True,
        deadline=None,
    )
    return Step(suspended, events=(ctx.event("run.suspended", run.id, {}, at=at),))


# -- opening requests -------------------------------------------------------------------


def open_request(
    ctx: Context, run: Run, *, kind: str, tool_name: str, tool_input: dict[str, Any]
) -> Step:
    """Open a pending request; the run awaits approval (SPEC 3, 4)."""
    status = _rules.fire(run.status, "open_request")
    request = fresh(  # tool_input is the engine's own checked copy
        PermissionRequest,
        request_id=ctx.new_id("req"),
        run_id=run.id,
        kind=kind,
        tool_name=tool_name,
        tool_input=tool_input,
        status=RequestStatus.PENDING,
        created_at=ctx.now,
    )
    deadline = None if run.suspended else ctx.now + run.input_timeout
    if run.deadline is not None:
        deadline = min(run.deadline, deadline) if deadline is not None else run.deadline
    changes: dict[str, Any] = {"status": status, "deadline": deadline}
    if kind == "plan":
        changes["plan_revisions"] = run.plan_revisions + 1
    event = ctx.event(
        "run.awaiting_input",
        run.id,
        {"request_id": request.request_id, "kind": kind, "tool_name": tool_name},
    )
    return Step(_touch(run, ctx.now, **changes), (request,), (event,))


def ask(ctx: Context, run: Run, questions: list[dict[str, Any]]) -> Step:
    """Open a question request (questions already validated)."""
    return open_request(
        ctx, run, kind="question", tool_name=QUESTION_TOOL, tool_input={"questions": questions}
    )


def propose_plan(ctx: Context, run: Run, plan_text: str) -> Step:
    """Open a plan request: one AskUserQuestion question headed "Plan Approval"."""
    question = {
        "question": plan_text,
        "header": PLAN_HEADER,
        "options": [
            {"label": "Approve", "description": "Approve the plan and start executing it"},
            {"label": "Revise", "description": "Send feedback; the agent proposes a new plan"},
        ],
        "multiSelect": False,
    }
    tool_input = {"questions": [question], "revision": run.plan_revisions + 1}
    return open_request(ctx, run, kind="plan", tool_name=QUESTION_TOOL, tool_input=tool_input)


def gate(
    run: Run, tool_name: str, *, safe: bool, policy_source: Callable[[], str | None]
) -> ToolGate | None:
    """The tool-gate rules of SPEC 4.2, first match wins; None means "open a request".

    `policy_source` is asked only when rules 1-4 did not decide, and returns
    "policy", "remembered" or None for the run's user scope."""
    if safe:
        return ToolGate(status="allowed", source="safe")
    if run.permission_mode == "autonomous":
        return ToolGate(status="allowed", source="autonomous")
    if run.permission_mode == "plan" and not run.plan_approved:
        return ToolGate(status="denied", source="plan_not_approved", reason=PLAN_FIRST)
    if tool_name in run.remembered_deny:
        return ToolGate(status="denied", source="remembered", reason=DENIED_BEFORE)
    if tool_name in run.remembered_allow:
        return ToolGate(status="allowed", source="remembered")
    source = policy_source()
    if source is not None:
        return ToolGate(status="allowed", source=source)
    return None


# -- resolving requests -----------------------------------------------------------------


def resolve(
    ctx: Context,
    run: Run,
    resolved: Sequence[PermissionRequest],
    still_pending: Sequence[PermissionRequest],
    **changes: Any,
) -> Step:
    """Record decisions on some of the run's pending requests (`resolved`, already
    updated) and return the run to running when none is left pending (SPEC 3, 6)."""
    last = not still_pending
    status = _rules.fire(run.status, "resolve", last=last)
    resumed = last and run.suspended
    suspended = run.suspended and not last
    deadline = None
    if not suspended and still_pending:
        deadline = min(request.created_at for request in still_pending) + run.input_timeout
    updated = _touch(run, ctx.now, status=status, suspended=suspended, deadline=deadline, **changes)
    if resumed:
        resolved = [evolve(request, resumed=True) for request in resolved]
    events = [_resolved_event(ctx, request) for request in resolved]
    if resumed:
        events.append(ctx.event("run.resumed", run.id, {}))
    return Step(updated, tuple(resolved), tuple(events), resumed)


def decide(
    request: PermissionRequest,
    now: float,
    *,
    status: RequestStatus,
    decision: str | None,
    source: str,
    **changes: Any,
) -> PermissionRequest:
    """The request as resolved now."""
    return evolve(
        request, status=status, decision=decision, source=source, resolved_at=now, **changes
    )


def remembered(run: Run, tool_name: str, decision: str) -> dict[str, frozenset[str]]:
    """The run's remembered sets after remember=True on `decision` for `tool_name`: the
    latest remembered decision for a tool wins."""
    allow, deny = set(run.remembered_allow), set(run.remembered_deny)
    if decision == "allow":
        allow.add(tool_name)
        deny.discard(tool_name)
    else:
        deny.add(tool_name)
        allow.discard(tool_name)
    return {"remembered_allow": frozenset(allow), "remembered_deny": frozenset(deny)}


def upgrade_remember(ctx: Context, run: Run, request: PermissionRequest) -> Step:
    """A repeated decision with remember=True on one that had remember=False (SPEC 4.2)."""
    assert request.decision in ("allow", "deny") and not request.remember
    upgraded = evolve(request, remember=True)
    changes = remembered(run, request.tool_name, request.decision)
    return Step(_touch(run, ctx.now, **changes), (upgraded,))


# -- ending a run -----------------------------------------------------------------------


def end(
    ctx: Context,
    run: Run,
    trigger: str,
    pending: Sequence[PermissionRequest],
    **changes: Any,
) -> Step:
    """Complete, fail or cancel the run; pending requests become cancelled (SPEC 3)."""
    status = _rules.fire(run.status, trigger)
    cancelled = tuple(
        decide(request, ctx.now, status=RequestStatus.CANCELLED, decision=None, source="run_ended")
        for request in pending
    )
    updated = _touch(run, ctx.now, status=status, suspended=False, deadline=None, **changes)
    data = {"error": changes["error"]} if trigger == "fail" else {}
    events = [_resolved_event(ctx, request) for request in cancelled]
    events.append(ctx.event(f"run.{status.value}", run.id, data))
    return Step(updated, cancelled, tuple(events))


def switch_mode(
    ctx: Context, run: Run, permission_mode: str, pending: Sequence[PermissionRequest]
) -> Step:
    """Change the run's mode; to autonomous, pending tool requests are allowed (SPEC 7)."""
    _rules.check(run.status, "switch_mode")
    if permission_mode == run.permission_mode:
        return Step(run)
    if permission_mode != "autonomous":
        return Step(_touch(run, ctx.now, permission_mode=permission_mode))
    tools = [request for request in pending if request.kind == "tool"]
    if not tools:
        return Step(_touch(run, ctx.now, permission_mode=permission_mode))
    allowed = [
        decide(
            request, ctx.now, status=RequestStatus.ALLOWED, decision="allow", source="mode_switch"
        )
        for request in tools
    ]
    others = [request for request in pending if request.kind != "tool"]
    return resolve(ctx, run, allowed, others, permission_mode=permission_mode)
