"""The pure reducer: every rule of hitl-core as a function of records, input and `now`
that returns a `Step` (the new records and the events they cause) or raises the
documented error. No storage, no clock, no randomness of its own: time and fresh ids
arrive in a `Context`; what a rule needs from the store arrives as records. The engine
validates what it can before loading, loads, calls one function here, and saves.

Each operation first fires (or checks) its trigger in the rulebook (`_rules`), so a
terminal run is refused before anything else, then applies its own checks in the order
the SPEC gives."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _rules
from . import _validate as check
from ._errors import ConflictError, NotFoundError, ValidationError
from ._policy import exactly, matches
from ._records import (
    PLAN_HEADER,
    QUESTION_TOOL,
    Event,
    IdempotencyKey,
    Lease,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    ToolGate,
    changed,
    evolver,
    json_copy,
    maker,
)
from ._validate import shown

__all__ = ["Context", "Step"]

PLAN_FIRST = "the plan is not approved yet: propose a plan and wait for its approval"
DENIED_BEFORE = "a person denied this tool earlier in this run and asked to remember it"


class Context:
    """What one call of the engine knows from outside: the time and an id source."""

    __slots__ = ("new_id", "now", "writable")

    def __init__(self, now: float, new_id: Callable[[str], str], writable: bool = True) -> None:
        self.now = now
        self.new_id = new_id
        self.writable = writable
        """False in a read transaction: a change that is due must be made in a write."""

    def after(self, run: Run) -> Context:
        """This context, its time raised to the run's last change if the clock is behind
        it (another host's clock, or a reading taken before a concurrent change)."""
        if run.updated_at <= self.now:
            return self
        return Context(run.updated_at, self.new_id, self.writable)

    def event(
        self, type_: str, run_id: str, data: dict[str, Any], at: float | None = None
    ) -> Event:
        """A new event, stamped now (or at `at`); `data` must be a fresh dict."""
        return _new_event(
            id=self.new_id("evt"),
            type=type_,
            run_id=run_id,
            created_at=self.now if at is None else at,
            data=data,
        )


_new_event = maker(Event)
_new_run = maker(Run)
_new_request = maker(PermissionRequest)
_new_gate = maker(ToolGate)
# The changes the hot paths make, compiled once (values in stored form).
_opened = evolver(Run, "version", "updated_at", "status", "deadline", convert=False)
_settled = evolver(Run, "version", "updated_at", "status", "suspended", "deadline", convert=False)
_decided = evolver(PermissionRequest, "status", "decision", "source", "resolved_at", convert=False)
_decided_tool = evolver(
    PermissionRequest,
    *("status", "decision", "source", "resolved_at", "remember", "reason", "actor"),
    convert=False,
)


class Step:
    """What an input did: the run as it is now (the same object when unchanged), the
    requests it created or changed, the events to record, new policies, a new
    idempotency key, and what the caller is told: the request it is about (`result`),
    `resumed`, and `applied` (False: the call found its work already done)."""

    __slots__ = ("applied", "events", "key", "policies", "requests", "result", "resumed", "run")

    def __init__(
        self,
        run: Run,
        requests: tuple[PermissionRequest, ...] = (),
        events: tuple[Event, ...] = (),
        resumed: bool = False,
        applied: bool = True,
        result: PermissionRequest | None = None,
        policies: tuple[PermissionPolicy, ...] = (),
        key: IdempotencyKey | None = None,
    ) -> None:
        self.run = run
        self.requests = requests
        self.events = events
        self.resumed = resumed
        self.applied = applied
        self.result = result
        self.policies = policies
        self.key = key


def _touch(run: Run, now: float, **changes: Any) -> Run:
    """The run with `changes` (in stored form), a new version and updated_at = now."""
    return changed(run, version=run.version + 1, updated_at=now, **changes)


def _hold(run: Run, **changes: Any) -> Run:
    """The run with a lease change: a new version (the compare-and-set sees it), but the
    same `updated_at`, which tells people when the run itself last changed."""
    return changed(run, version=run.version + 1, **changes)


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


def fingerprint(settings: dict[str, Any]) -> str:
    """A digest of a `runs.create` call's settings (JSON data, keys sorted at every
    level, so equal dicts built in another order give the same digest), to tell a retry
    from a reuse of the key."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def new_run(
    ctx: Context,
    *,
    settings: dict[str, Any],
    key: str | None = None,
    stored_key: IdempotencyKey | None = None,
    stored_run: Run | None = None,
) -> Step:
    """A new running run and its run.started event. With an idempotency `key` already
    stored (`stored_key`, and the run it made), the same settings give that run back
    (applied=False) and other settings are 422 idempotency_key_reused."""
    digest = fingerprint(settings) if key is not None else None
    if stored_key is not None:
        if stored_key.fingerprint != digest or stored_run is None:
            raise ValidationError(
                "idempotency_key_reused",
                f"the idempotency key {shown(key)} was used for a different run; "
                "use a new key for a new run",
            )
        return Step(stored_run, applied=False)
    run = _new_run(  # the settings are the engine's own checked copies
        id=ctx.new_id("run"),
        status=RunStatus.RUNNING,
        created_at=ctx.now,
        updated_at=ctx.now,
        **settings,
    )
    data = {
        "human_in_the_loop": run.human_in_the_loop,
        "permission_mode": run.permission_mode,
        "user_id": run.user_id,
        "task_id": run.task_id,
    }
    made = None
    if key is not None:
        assert digest is not None
        made = IdempotencyKey(key=key, run_id=run.id, fingerprint=digest, created_at=ctx.now)
    return Step(run, events=(ctx.event("run.started", run.id, data),), key=made)


# -- the timeout clock ------------------------------------------------------------------


def suspend(ctx: Context, run: Run) -> Step:
    """Suspend a run whose deadline has passed (SPEC 6). The event is stamped with the
    deadline itself, so the outcome does not depend on when this is applied."""
    assert run.deadline is not None and run.deadline <= ctx.now
    _rules.fire(run.status, "suspend")
    at = run.deadline
    suspended = changed(
        run,
        version=run.version + 1,
        updated_at=max(run.updated_at, at),
        suspended=True,
        deadline=None,
    )
    return Step(suspended, events=(ctx.event("run.suspended", run.id, {}, at=at),))


# -- leases -----------------------------------------------------------------------------


def later(now: float, seconds: float) -> float:
    """The clock reading `seconds` after `now`; the largest float when that overflows (a
    time that never comes, which every store can keep, where infinity is not)."""
    moment = now + seconds
    return moment if moment != math.inf else sys.float_info.max


def fence(run: Run, lease: Lease | None, now: float) -> None:
    """Refuse an agent-side change unless the caller may act for the run: with a lease,
    the run's newest one, claimed and not given up, of the same worker (409 lease_lost;
    a lapsed one nobody took over still counts); without, while nobody holds one (409
    run_leased)."""
    if lease is not None:
        if (
            lease.run_id != run.id
            or lease.token != run.lease_token
            or lease.worker != run.lease_worker
        ):
            raise ConflictError(
                "lease_lost",
                f"this is not run {run.id}'s lease any more (claimed again since, or "
                "released); stop working on it",
            )
        return
    holder = run.lease_at(now)
    if holder is not None:
        raise ConflictError(
            "run_leased",
            f"run {run.id} is held by worker {shown(holder.worker)} until {holder.expires_at}",
        )


def claim(ctx: Context, run: Run, worker: object, seconds: object) -> Step:
    """Take the run's lease for `seconds` (409 run_leased while another holds one)."""
    _rules.fire(run.status, "hold")
    worker = check.text(worker, "worker", limit=check.MAX_NAME)
    seconds = check.seconds(seconds, "seconds", "invalid_request")
    holder = run.lease_at(ctx.now)
    if holder is not None and holder.worker != worker:
        raise ConflictError(
            "run_leased",
            f"run {run.id} is held by worker {shown(holder.worker)} until {holder.expires_at}",
        )
    changes = {
        "lease_worker": worker,
        "lease_token": run.lease_token + 1,
        "lease_expires": later(ctx.now, seconds),
    }
    return Step(_hold(run, **changes))


def renew(ctx: Context, run: Run, lease: Lease, seconds: object) -> Step:
    """Extend the caller's lease by `seconds` from now (409 lease_lost if it is not the
    run's newest lease any more, even if it had lapsed meanwhile)."""
    _rules.fire(run.status, "hold")
    fence(run, lease, ctx.now)
    seconds = check.seconds(seconds, "seconds", "invalid_request")
    return Step(_hold(run, lease_worker=lease.worker, lease_expires=later(ctx.now, seconds)))


def release(ctx: Context, run: Run, lease: Lease) -> Step:
    """Give the lease up; a lease that is no longer the run's newest changes nothing
    (applied=False). Releasing on an ended run changes nothing either."""
    if run.is_terminal or lease.token != run.lease_token or lease.worker != run.lease_worker:
        return Step(run, applied=False)
    return Step(_hold(run, lease_worker=None, lease_expires=None))


def save_checkpoint(ctx: Context, run: Run, lease: Lease | None, checkpoint: object) -> Step:
    """Store the host's own JSON record of where its agent is."""
    _rules.fire(run.status, "hold")
    fence(run, lease, ctx.now)
    data = json_copy(checkpoint, "invalid_request", "checkpoint", check.MAX_JSON)
    return Step(_touch(run, ctx.now, checkpoint=data))


# -- opening requests -------------------------------------------------------------------


def opening(run: Run, lease: Lease | None, now: float) -> None:
    """The first checks of every call that opens a request, before its arguments are
    looked at: a run that can no longer change, then the lease."""
    _rules.check(run.status, "open_request")
    fence(run, lease, now)


def keyed_request_id(run_id: str, key: str) -> str:
    """The request id an agent's `key` stands for in a run: the same key always names
    the same request, so a host that replays its steps after a crash opens nothing
    twice. Unguessable without the (random) run id."""
    digest = hashlib.sha256(f"{run_id}\0{key}".encode()).hexdigest()
    return f"req_{digest[:24]}"


def _replayed(
    existing: PermissionRequest | None, kind: str, tool_name: str
) -> PermissionRequest | None:
    """True when a keyed request already exists (and is the same kind of thing)."""
    if existing is None:
        return None
    if existing.kind != kind or existing.tool_name != tool_name:
        raise ValidationError(
            "key_reused",
            f"this key already names a {existing.kind} request ({existing.tool_name}) "
            "in this run; use another key",
        )
    return existing


def open_request(
    ctx: Context,
    run: Run,
    *,
    kind: str,
    tool_name: str,
    tool_input: dict[str, Any],
    request_id: str | None = None,
) -> Step:
    """Open a pending request; the run awaits approval (SPEC 3, 4)."""
    status = _rules.fire(run.status, "open_request")
    request = _new_request(  # tool_input is the engine's own checked copy
        request_id=request_id or ctx.new_id("req"),
        run_id=run.id,
        kind=kind,
        tool_name=tool_name,
        tool_input=tool_input,
        status=RequestStatus.PENDING,
        created_at=ctx.now,
    )
    deadline = None if run.suspended else later(ctx.now, run.input_timeout)
    if run.deadline is not None:
        deadline = min(run.deadline, deadline) if deadline is not None else run.deadline
    if kind == "plan":
        plans = run.plan_revisions + 1
        updated = _touch(run, ctx.now, status=status, deadline=deadline, plan_revisions=plans)
    else:
        updated = _opened(run, run.version + 1, ctx.now, status, deadline)
    event = ctx.event(
        "run.awaiting_input",
        run.id,
        {"request_id": request.request_id, "kind": kind, "tool_name": tool_name},
    )
    return Step(updated, (request,), (event,), result=request)


def ask(
    ctx: Context,
    run: Run,
    lease: Lease | None,
    questions: object,
    *,
    request_id: str | None = None,
    existing: PermissionRequest | None = None,
) -> Step:
    """Open a question request (409 hitl_disabled without human_in_the_loop)."""
    opening(run, lease, ctx.now)
    if not run.human_in_the_loop:
        raise ConflictError("hitl_disabled", "questions need a run with human_in_the_loop=True")
    checked = check.normalise_questions(questions)
    replayed = _replayed(existing, "question", QUESTION_TOOL)
    if replayed is not None:
        return Step(run, applied=False, result=replayed)
    tool_input = {"questions": checked}
    return open_request(
        ctx, run, kind="question", tool_name=QUESTION_TOOL, tool_input=tool_input,
        request_id=request_id,
    )  # fmt: skip


def propose_plan(
    ctx: Context,
    run: Run,
    lease: Lease | None,
    plan_text: object,
    *,
    request_id: str | None = None,
    existing: PermissionRequest | None = None,
) -> Step:
    """Open a plan request: one AskUserQuestion question headed "Plan Approval" (409
    not_plan_mode outside plan mode)."""
    opening(run, lease, ctx.now)
    if run.permission_mode != "plan":
        raise ConflictError("not_plan_mode", f"run {run.id} is not in plan mode")
    text = check.text(plan_text, "plan_text", limit=check.MAX_PLAN)
    replayed = _replayed(existing, "plan", QUESTION_TOOL)
    if replayed is not None:
        return Step(run, applied=False, result=replayed)
    question = {
        "question": text,
        "header": PLAN_HEADER,
        "options": [
            {"label": "Approve", "description": "Approve the plan and start executing it"},
            {"label": "Revise", "description": "Send feedback; the agent proposes a new plan"},
        ],
        "multiSelect": False,
    }
    tool_input = {"questions": [question], "revision": run.plan_revisions + 1}
    return open_request(
        ctx, run, kind="plan", tool_name=QUESTION_TOOL, tool_input=tool_input,
        request_id=request_id,
    )  # fmt: skip


def gate(
    run: Run, tool_name: str, *, safe: bool, policies: Sequence[PermissionPolicy]
) -> ToolGate | None:
    """The tool-gate rules of SPEC 4.2, first match wins; None means "open a request".
    `policies` are the run scope's candidates (the store's `candidate_policies`): the
    exact one first, then patterns in creation order; the first that matches decides."""
    if safe:
        return _new_gate(status="allowed", source="safe")
    if run.permission_mode == "autonomous":
        return _new_gate(status="allowed", source="autonomous")
    if run.permission_mode == "plan" and not run.plan_approved:
        return _new_gate(status="denied", source="plan_not_approved", reason=PLAN_FIRST)
    if tool_name in run.remembered_deny:
        return _new_gate(status="denied", source="remembered", reason=DENIED_BEFORE)
    if tool_name in run.remembered_allow:
        return _new_gate(status="allowed", source="remembered")
    for policy in policies:
        if matches(policy.tool_name, tool_name):
            source = "remembered" if policy.source == "run_approval" else "policy"
            return _new_gate(status="allowed", source=source)
    return None


def tool_call(
    run: Run, lease: Lease | None, now: float, tool_name: object, tool_input: object, safe: object
) -> tuple[str, dict[str, Any], bool]:
    """The checks of `request_tool` in the SPEC's order (a terminal run first, then the
    lease, then the arguments); the tool's name, a checked copy of its input, and the
    safe flag."""
    opening(run, lease, now)
    name = check.text(tool_name, "tool_name")
    if tool_input is not None and not isinstance(tool_input, dict):
        raise ValidationError("invalid_request", "tool_input must be a dict or None")
    arguments = json_copy(tool_input or {}, "invalid_request", "tool_input", check.MAX_JSON)
    return name, arguments, check.flag(safe, "safe")


def asks_policies(run: Run, tool_name: str, safe: bool) -> bool:
    """Whether the gate reaches its policy rule (rule 5) for this call, so the engine
    loads the scope's candidate policies only then."""
    return gate(run, tool_name, safe=safe, policies=()) is None


def request_tool(
    ctx: Context,
    run: Run,
    tool_name: str,
    tool_input: dict[str, Any],
    *,
    safe: bool,
    policies: Sequence[PermissionPolicy],
    request_id: str | None = None,
    existing: PermissionRequest | None = None,
) -> tuple[ToolGate, Step | None]:
    """The gate's answer for a checked call (`tool_call`), and the step that opens a
    request when a person must decide (None when the rules decided at once). A keyed
    request that exists is answered from what it is now."""
    replayed = _replayed(existing, "tool", tool_name)
    if replayed is not None:
        return _gate_of(replayed), None
    decided = gate(run, tool_name, safe=safe, policies=policies)
    if decided is not None:
        return decided, None
    step = open_request(
        ctx, run, kind="tool", tool_name=tool_name, tool_input=tool_input, request_id=request_id
    )
    gate_ = _new_gate(status="pending", source=None, request_id=step.requests[0].request_id)
    return gate_, step


def _gate_of(request: PermissionRequest) -> ToolGate:
    status = {RequestStatus.ALLOWED: "allowed", RequestStatus.DENIED: "denied"}.get(
        request.status, "pending" if request.is_pending else "denied"
    )
    return _new_gate(
        status=status, source=request.source, request_id=request.request_id, reason=request.reason
    )


# -- resolving requests -----------------------------------------------------------------


def resolve(
    ctx: Context,
    run: Run,
    trigger: str,
    resolved: Sequence[PermissionRequest],
    still_pending: Sequence[PermissionRequest],
    **changes: Any,
) -> Step:
    """Record decisions on some of the run's pending requests (`resolved`, already
    updated) and return the run to running when none is left pending (SPEC 3, 6)."""
    last = not still_pending
    status = _rules.fire(run.status, trigger, last=last)
    resumed = last and run.suspended
    suspended = run.suspended and not last
    deadline = None
    if not suspended and still_pending:
        deadline = min(request.created_at for request in still_pending) + run.input_timeout
    if changes:
        updated = _touch(
            run, ctx.now, status=status, suspended=suspended, deadline=deadline, **changes
        )
    else:
        updated = _settled(run, run.version + 1, ctx.now, status, suspended, deadline)
    if resumed:
        resolved = [changed(request, resumed=True) for request in resolved]
    events = [_resolved_event(ctx, request) for request in resolved]
    if resumed:
        events.append(ctx.event("run.resumed", run.id, {}))
    return Step(updated, tuple(resolved), tuple(events), resumed, result=resolved[0])


def decided(
    request: PermissionRequest,
    now: float,
    *,
    status: RequestStatus,
    decision: str | None,
    source: str,
    **changes: Any,
) -> PermissionRequest:
    """The request as resolved now (`changes` in stored form)."""
    if not changes:
        return _decided(request, status, decision, source, now)
    return changed(
        request, status=status, decision=decision, source=source, resolved_at=now, **changes
    )


def _by(request: PermissionRequest) -> str:
    """ " by <actor>" for a refusal that names who decided first (nothing if unknown)."""
    return f" by {shown(request.actor)}" if request.actor else ""


def _others(pending: Sequence[PermissionRequest], request: PermissionRequest) -> list[Any]:
    return [p for p in pending if p.request_id != request.request_id]


def answerable(
    run: Run, request_id: object, pending: Sequence[PermissionRequest], found: object
) -> PermissionRequest:
    """The question or plan request an answer is for: the one named (`found`, loaded by
    the engine), or the oldest pending one (409 not_awaiting_input)."""
    if request_id is None:
        for request in pending:
            if request.kind in ("question", "plan"):
                return request
        raise ConflictError("not_awaiting_input", f"run {run.id} has no pending question or plan")
    check.identifier(request_id, "request_id")
    if (
        not isinstance(found, PermissionRequest)
        or found.run_id != run.id
        or found.kind not in ("question", "plan")
        or found.status not in (RequestStatus.PENDING, RequestStatus.ANSWERED)
    ):
        raise ConflictError(
            "not_awaiting_input",
            f"run {run.id} has no question or plan request {shown(request_id)}",
        )
    return found


def answer(
    ctx: Context,
    run: Run,
    answers: object,
    *,
    request_id: object,
    actor: object,
    pending: Sequence[PermissionRequest],
    named: PermissionRequest | None,
) -> Step:
    """Answer a question or plan request (SPEC 4.1, 4.3). A retry with the same answers
    changes nothing (applied=False); other answers to an answered request are 409."""
    _rules.check(run.status, "decide")
    if not isinstance(answers, dict):
        raise ValidationError("invalid_answers", "answers must be a dict")
    if not answers:
        raise ValidationError("empty_answers", "answers is empty")
    who = check.optional_text(actor, "actor", limit=check.MAX_NAME)
    request = answerable(run, request_id, pending, named)
    normalised = check.normalise_answers(request, answers)
    if request.status is RequestStatus.ANSWERED:
        if request.answers != normalised:
            raise ConflictError(
                "already_answered",
                f"request {request.request_id} was already answered differently{_by(request)}",
            )
        return Step(run, applied=False, result=request)
    changes: dict[str, Any] = {}
    decision, reason = "answer", None
    if request.kind == "plan":
        value = next(iter(normalised.values()))
        decision = "approve" if value == "Approve" else "revise"
        reason = None if decision == "approve" else value
        if decision == "approve":
            changes["plan_approved"] = True
    done = decided(
        request,
        ctx.now,
        status=RequestStatus.ANSWERED,
        decision=decision,
        source="human",
        answers=normalised,
        reason=reason,
        actor=who,
    )
    return resolve(ctx, run, "decide", [done], _others(pending, request), **changes)


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


def approve(
    ctx: Context,
    run: Run,
    *,
    request_id: object,
    decision: object,
    remember: object,
    reason: object,
    actor: object,
    request: PermissionRequest | None,
    pending: Sequence[PermissionRequest],
    policy: PermissionPolicy | None,
    remember_scope: str,
) -> Step:
    """Allow or deny a pending tool request (SPEC 4.2, 4.4). `request` is the one named
    (None if there is none), `policy` the scope's stored policy for its exact name (the
    engine loads it when `remember` is True). Repeating the decision a request has
    changes nothing (applied=False) but may upgrade remember=False to True."""
    _rules.check(run.status, "decide")
    if decision not in ("allow", "deny"):
        raise ValidationError(
            "invalid_decision", f"decision must be 'allow' or 'deny'; got {shown(decision)}"
        )
    decision = "allow" if decision == "allow" else "deny"  # the plain, interned word
    keep = check.flag(remember, "remember")
    why = check.optional_text(reason, "reason")
    who = check.optional_text(actor, "actor", limit=check.MAX_NAME)
    check.identifier(request_id, "request_id")
    if request is None or request.run_id != run.id or request.kind != "tool":
        raise NotFoundError("gate_not_found", f"no tool request {shown(request_id)} on this run")
    if request.status is RequestStatus.CANCELLED:
        raise NotFoundError("gate_cancelled", f"request {request.request_id} was cancelled")
    wanted = RequestStatus.ALLOWED if decision == "allow" else RequestStatus.DENIED
    if request.status is not RequestStatus.PENDING and request.status is not wanted:
        raise NotFoundError(
            "gate_resolved_otherwise",
            f"request {request.request_id} was already {request.status.value}{_by(request)}",
        )
    if request.status is wanted:  # a repeat: it changes nothing, unless remember upgrades
        step = Step(run, applied=False, result=request)
        if keep and not request.remember:
            upgraded = changed(request, remember=True)
            changes = remembered(run, request.tool_name, request.decision or decision)
            step = Step(
                _touch(run, ctx.now, **changes), (upgraded,), applied=False, result=upgraded
            )
    else:
        done = _decided_tool(request, wanted, decision, "human", ctx.now, keep, why, who)
        changes = remembered(run, request.tool_name, decision) if keep else {}
        step = resolve(ctx, run, "decide", [done], _others(pending, request), **changes)
    if keep and decision == "allow" and remember_scope == "user" and policy is None:
        made = PermissionPolicy(
            id=ctx.new_id("pol"),
            user_id=run.user_id,
            tool_name=exactly(request.tool_name),  # a name, never a pattern
            source="run_approval",
            created_at=ctx.now,
        )
        step.policies = (made,)
    return step


def switch_mode(
    ctx: Context, run: Run, permission_mode: object, pending: Sequence[PermissionRequest]
) -> Step:
    """Change the run's mode; to autonomous, pending tool requests are allowed (SPEC 7)."""
    _rules.check(run.status, "switch_mode")
    mode = check.mode(permission_mode)
    check.combination(run.human_in_the_loop, mode)
    if mode == run.permission_mode:
        return Step(run, applied=False)
    tools = [request for request in pending if request.kind == "tool"]
    if mode != "autonomous" or not tools:
        return Step(_touch(run, ctx.now, permission_mode=mode))
    allowed = [
        decided(
            request, ctx.now, status=RequestStatus.ALLOWED, decision="allow", source="mode_switch"
        )
        for request in tools
    ]
    others = [request for request in pending if request.kind != "tool"]
    return resolve(ctx, run, "switch_mode", allowed, others, permission_mode=mode)


# -- policies ---------------------------------------------------------------------------


def create_policy(
    ctx: Context, user_id: str | None, tool: str, existing: PermissionPolicy | None
) -> tuple[PermissionPolicy, PermissionPolicy | None]:
    """`permissions.create`: the policy to return, and the one to store in place of
    `existing` (this scope's stored policy for `tool`), or None when nothing changes. A
    remembered (`run_approval`) policy is promoted to `api`, keeping its id and time."""
    if existing is not None:
        if existing.source != "run_approval":
            return existing, None
        promoted = changed(existing, source="api")
        return promoted, promoted
    made = PermissionPolicy(
        id=ctx.new_id("pol"), user_id=user_id, tool_name=tool, source="api", created_at=ctx.now
    )
    return made, made


# -- ending a run ---------------------------------------------------------------------


def complete(ctx: Context, run: Run, lease: Lease | None, output: object) -> Step:
    """The agent finished (409 pending_requests while a request is pending)."""
    _rules.check(run.status, "complete")
    fence(run, lease, ctx.now)
    kept = json_copy(output, "invalid_request", "output", check.MAX_JSON)
    return end(ctx, run, "complete", (), output=kept)


def fail(
    ctx: Context,
    run: Run,
    lease: Lease | None,
    error: object,
    pending: Sequence[PermissionRequest],
) -> Step:
    """The agent gave up: the run fails and its pending requests are cancelled. An
    exception is described as `Type: message` (cut to the text limit); a string
    error longer than the limit is refused."""
    _rules.check(run.status, "fail")
    fence(run, lease, ctx.now)
    if isinstance(error, BaseException):
        message = describe_exception(error)
    else:
        message = check.text(error, "error", limit=check.MAX_TEXT)
    return end(ctx, run, "fail", pending, error=message)


def describe_exception(error: BaseException) -> str:
    """`Type: message` for an exception, whatever its `__str__` does; text with no UTF-8
    form (an undecodable file name, say) and NUL characters are escaped so that every
    store can keep it."""
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not stop the run from failing
        text = "<unprintable>"
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    message = message.replace("\x00", "\\x00")  # no store's text may hold a NUL
    if len(message) > check.MAX_TEXT:
        message = message[: check.MAX_TEXT - 1] + "…"
    return message


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
        decided(request, ctx.now, status=RequestStatus.CANCELLED, decision=None, source="run_ended")
        for request in pending
    )
    updated = _touch(
        run,
        ctx.now,
        status=status,
        suspended=False,
        deadline=None,
        lease_worker=None,
        lease_expires=None,
        **changes,
    )
    data = {"error": changes["error"]} if trigger == "fail" else {}
    events = [_resolved_event(ctx, request) for request in cancelled]
    events.append(ctx.event(f"run.{status.value}", run.id, data))
    return Step(updated, cancelled, tuple(events))
