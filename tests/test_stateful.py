"""Random programs of agent and human operations over all six human_in_the_loop x
permission_mode combinations, checked step by step against a small reference model."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import hitl_core
from hitl_core.testing import strategies as hs

DOCUMENTED = {
    "run_not_found",
    "run_not_active",
    "hitl_disabled",
    "hitl_required",
    "invalid_request",
    "invalid_permission_mode",
    "invalid_config",
    "pending_requests",
    "not_awaiting_input",
    "empty_answers",
    "invalid_answers",
    "already_answered",
    "invalid_decision",
    "gate_not_found",
    "gate_cancelled",
    "gate_resolved_otherwise",
    "not_plan_mode",
    "policy_not_found",
    "task_not_found",
}


TOOLS = st.sampled_from(["gmail.send", "slack.post", "db.query"])


@dataclass
class ModelRequest:
    id: str
    kind: str
    tool: str
    created: float
    questions: list[dict[str, Any]]
    status: str = "pending"
    answers: dict[str, Any] | None = None
    remember: bool = False


@dataclass
class ModelRun:
    id: str
    hitl: bool
    mode: str
    user: str | None
    timeout: float
    status: str = "running"
    suspended: bool = False
    plan_approved: bool = False
    allow: set[str] = field(default_factory=set)
    deny: set[str] = field(default_factory=set)
    requests: dict[str, ModelRequest] = field(default_factory=dict)

    @property
    def pending(self) -> list[ModelRequest]:
        return [r for r in self.requests.values() if r.status == "pending"]

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


def _valid(config: dict[str, Any]) -> bool:
    return bool(config["human_in_the_loop"] or config["permission_mode"] == "autonomous")


def _answer_for(question: dict[str, Any], pick: int) -> Any:
    labels = [o if isinstance(o, str) else o["label"] for o in question["options"]]
    label = labels[pick % len(labels)]
    return [label] if question["multiSelect"] else label


class HitlMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.clock = hitl_core.ManualClock(start=0.0)
        self.hitl = hitl_core.connect("memory://", clock=self.clock)
        self.model: dict[str, ModelRun] = {}
        self.policies: dict[tuple[str | None, str], str] = {}  # (scope, tool) -> source
        self.terminal_seen: dict[str, hitl_core.Run] = {}
        self.ids: set[str] = set()

    def teardown(self) -> None:
        self.hitl.close()

    # -- helpers ------------------------------------------------------------------------
    def expect_error(self, code: str, call: Any) -> None:
        try:
            call()
        except hitl_core.HitlError as error:
            assert error.code == code, f"expected {code}, got {error!r}"
            assert error.code in DOCUMENTED
        else:
            raise AssertionError(f"expected {code}, the call succeeded")

    def apply_deadlines(self) -> None:
        now = self.clock.now()
        for run in self.model.values():
            if run.terminal or run.suspended or not run.pending:
                continue
            if min(r.created for r in run.pending) + run.timeout <= now:
                run.suspended = True

    def resolve(self, run: ModelRun) -> bool:
        """After a request left pending: the run's status; whether it resumed."""
        if run.pending:
            return False
        resumed = run.suspended
        run.status, run.suspended = "running", False
        return resumed

    def policy_source(self, run: ModelRun, tool: str) -> str | None:
        """The exact policy first, then patterns in creation order; first match wins."""
        exact = self.policies.get((run.user, tool))
        if exact is not None:
            return "remembered" if exact == "run_approval" else "policy"
        for (user, pattern), source in self.policies.items():
            if user == run.user and fnmatch.fnmatchcase(tool, pattern):
                return "remembered" if source == "run_approval" else "policy"
        return None

    # -- rules --------------------------------------------------------------------------
    @initialize(target=runs, config=hs.configs().filter(_valid))
    def first_run(self, config: dict[str, Any]) -> str:
        return self.create_run(config)

    @initialize(target=runs, mode=hs.modes, user=hs.users)
    def interactive_run(self, mode: str, user: str | None) -> str:
        return self.create_run(
            {
                "human_in_the_loop": True,
                "permission_mode": mode,
                "user_id": user,
                "input_timeout": 30.0,
            }
        )

    @rule(config=hs.configs().filter(lambda c: not _valid(c)))
    def refuse_invalid_config(self, config: dict[str, Any]) -> None:
        self.expect_error("hitl_required", lambda: self.hitl.runs.create(**config))

    @precondition(lambda self: len(self.model) < 4)
    @rule(target=runs, config=hs.configs().filter(_valid))
    def create_run(self, config: dict[str, Any]) -> str:
        run = self.hitl.runs.create(**config)
        assert run.id not in self.ids
        self.ids.add(run.id)
        self.model[run.id] = ModelRun(
            run.id,
            config["human_in_the_loop"],
            config["permission_mode"],
            config["user_id"],
            config["input_timeout"],
        )
        return run.id

    @rule(run_id=runs, questions=hs.questions())
    def ask(self, run_id: str, questions: list[dict[str, Any]]) -> None:
        run = self.model[run_id]
        call = lambda: self.hitl.agent(run_id).ask(questions)  # noqa: E731
        if run.terminal:
            return self.expect_error("run_not_active", call)
        if not run.hitl:
            return self.expect_error("hitl_disabled", call)
        request = call()
        self.ids.add(request.request_id)
        run.requests[request.request_id] = ModelRequest(
            request.request_id, "question", "AskUserQuestion", self.clock.now(), request.questions
        )
        run.status = "awaiting_approval"

    @rule(run_id=runs, tool=TOOLS, safe=st.sampled_from([False, False, False, True]))
    def request_tool(self, run_id: str, tool: str, safe: bool) -> None:
        run = self.model[run_id]
        call = lambda: self.hitl.agent(run_id).request_tool(tool, {"n": 1}, safe=safe)  # noqa: E731
        if run.terminal:
            return self.expect_error("run_not_active", call)
        gate = call()
        if safe:
            expected = ("allowed", "safe")
        elif run.mode == "autonomous":
            expected = ("allowed", "autonomous")
        elif run.mode == "plan" and not run.plan_approved:
            expected = ("denied", "plan_not_approved")
        elif tool in run.deny:
            expected = ("denied", "remembered")
        elif tool in run.allow:
            expected = ("allowed", "remembered")
        elif self.policy_source(run, tool) is not None:
            expected = ("allowed", self.policy_source(run, tool))  # type: ignore[assignment]
        else:
            expected = ("pending", None)  # type: ignore[assignment]
        assert (gate.status, gate.source) == expected, (gate, expected)
        if gate.status == "pending":
            assert gate.request_id is not None and gate.request_id not in self.ids
            self.ids.add(gate.request_id)
            run.requests[gate.request_id] = ModelRequest(
                gate.request_id, "tool", tool, self.clock.now(), []
            )
            run.status = "awaiting_approval"
        else:
            assert gate.request_id is None
        return None

    @rule(run_id=runs, text=st.sampled_from(["plan A", "plan B\nstep 2"]))
    def propose_plan(self, run_id: str, text: str) -> None:
        run = self.model[run_id]
        call = lambda: self.hitl.agent(run_id).propose_plan(text)  # noqa: E731
        if run.terminal:
            return self.expect_error("run_not_active", call)
        if run.mode != "plan":
            return self.expect_error("not_plan_mode", call)
        request = call()
        revisions = sum(1 for r in run.requests.values() if r.kind == "plan") + 1
        assert request.tool_input["revision"] == revisions
        run.requests[request.request_id] = ModelRequest(
            request.request_id, "plan", "AskUserQuestion", self.clock.now(), request.questions
        )
        run.status = "awaiting_approval"

    @rule(run_id=runs, pick=st.integers(0, 7), approve_plan=st.booleans(), targeted=st.booleans())
    def answer(self, run_id: str, pick: int, approve_plan: bool, targeted: bool) -> None:
        run = self.model[run_id]
        answerable = [r for r in run.requests.values() if r.kind != "tool"]
        pending = [r for r in run.pending if r.kind != "tool"]
        target = None
        if targeted and answerable:
            target = answerable[pick % len(answerable)]
        elif pending:
            target = pending[0]
        if target is None:
            answers: dict[str, Any] = {"anything?": "x"}
        elif target.kind == "plan":
            answers = {"Plan Approval": "Approve" if approve_plan else f"feedback {pick}"}
        else:
            answers = {q["question"]: _answer_for(q, pick) for q in target.questions}
        request_id = target.id if targeted and target else None
        call = lambda: self.hitl.runs.answer(run_id, answers=answers, request_id=request_id)  # noqa: E731
        if run.terminal:
            return self.expect_error("run_not_active", call)
        if target is None or target.status not in ("pending", "answered"):
            return self.expect_error("not_awaiting_input", call)
        if target.status == "answered":
            stored = target.answers
            result = None
            try:
                result = call()
            except hitl_core.ConflictError as error:
                assert error.code == "already_answered"
            if result is not None:
                assert result.resumed is False and result.request.answers == stored
            return None
        result = call()
        target.status = "answered"
        target.answers = result.request.answers
        if target.kind == "plan":
            assert result.request.decision == ("approve" if approve_plan else "revise")
            run.plan_approved = run.plan_approved or approve_plan
        assert result.resumed == self.resolve(run)
        return None

    @rule(
        run_id=runs,
        pick=st.integers(0, 7),
        decision=st.sampled_from(["allow", "deny"]),
        remember=st.booleans(),
        pending_first=st.booleans(),
    )
    def approve(
        self, run_id: str, pick: int, decision: str, remember: bool, pending_first: bool
    ) -> None:
        run = self.model[run_id]
        tools = [r for r in run.requests.values() if r.kind == "tool"]
        if pending_first and any(r.status == "pending" for r in tools):
            tools = [r for r in tools if r.status == "pending"]
        target = tools[pick % len(tools)] if tools else None
        request_id = target.id if target else "req_missing"
        call = lambda: self.hitl.runs.approve(  # noqa: E731
            run_id, request_id=request_id, decision=decision, remember=remember
        )
        wanted = "allowed" if decision == "allow" else "denied"
        if run.terminal:
            return self.expect_error("run_not_active", call)
        if target is None:
            return self.expect_error("gate_not_found", call)
        if target.status == "cancelled":
            return self.expect_error("gate_cancelled", call)
        if target.status not in ("pending", wanted):
            return self.expect_error("gate_resolved_otherwise", call)
        result = call()
        assert result.request.status == wanted
        # a repeat changes nothing, except that it may upgrade remember (never downgrade)
        applies = remember and (target.status == "pending" or not target.remember)
        if applies:
            target.remember = True
            (run.allow if decision == "allow" else run.deny).add(target.tool)
            (run.deny if decision == "allow" else run.allow).discard(target.tool)
            if decision == "allow":
                self.policies.setdefault((run.user, target.tool), "run_approval")
        assert result.remembered == (target.tool in run.allow)
        if target.status == "pending":
            target.status = wanted
            assert result.resumed == self.resolve(run)
        else:
            assert result.resumed is False

    @rule(run_id=runs, mode=hs.modes)
    def switch_mode(self, run_id: str, mode: str) -> None:
        run = self.model[run_id]
        call = lambda: self.hitl.runs.update_permission_mode(run_id, permission_mode=mode)  # noqa: E731
        if run.terminal:
            return self.expect_error("run_not_active", call)
        if mode != "autonomous" and not run.hitl:
            return self.expect_error("hitl_required", call)
        changed = call()
        if mode == "autonomous" and mode != run.mode:
            tools = [r for r in run.pending if r.kind == "tool"]
            for request in tools:
                request.status = "allowed"
            if tools:
                self.resolve(run)
        run.mode = mode
        assert changed.permission_mode == mode and changed.status == run.status
        return None

    @rule(run_id=consumes(runs), how=st.sampled_from(["complete", "fail", "cancel"]))
    def end(self, run_id: str, how: str) -> None:
        run = self.model[run_id]
        agent_call = {
            "complete": lambda: self.hitl.agent(run_id).complete({"ok": True}),
            "fail": lambda: self.hitl.agent(run_id).fail("boom"),
            "cancel": lambda: self.hitl.runs.cancel(run_id),
        }[how]
        if run.terminal:
            return self.expect_error("run_not_active", agent_call)
        if how == "complete" and run.pending:
            return self.expect_error("pending_requests", agent_call)
        ended = agent_call()
        for request in run.pending:
            request.status = "cancelled"
        run.status = {"complete": "completed", "fail": "failed", "cancel": "cancelled"}[how]
        run.suspended = False
        assert ended.status == run.status
        return None

    @rule(user=hs.users, tool=hs.policy_tools)
    def create_policy(self, user: str | None, tool: str) -> None:
        policy = self.hitl.permissions.create(tool=tool, user_id=user)
        self.policies[(user, tool)] = "api"  # a remembered one is promoted (SPEC 5)
        assert policy.source == "api"

    @rule(seconds=st.sampled_from([0.5, 4.0, 10.0, 40.0]), tick=st.booleans())
    def advance(self, seconds: float, tick: bool) -> None:
        self.clock.advance(seconds)
        self.apply_deadlines()
        if tick:
            for event in self.hitl.tick():
                assert event.type == "run.suspended"

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def stores_agree_with_the_model(self) -> None:
        self.apply_deadlines()
        for run_id, expected in self.model.items():
            run = self.hitl.runs.get(run_id)
            assert run.status == expected.status, (run, expected)
            assert run.suspended == expected.suspended, (run, expected)
            assert run.permission_mode == expected.mode
            requests = self.hitl.runs.permissions(run_id)
            assert [r.request_id for r in requests] == list(expected.requests)
            assert [r.status for r in requests] == [r.status for r in expected.requests.values()]
            pending = any(r.status == "pending" for r in requests)
            if not run.is_terminal:
                assert (run.status == "awaiting_approval") == pending
            else:
                assert not pending
                previous = self.terminal_seen.setdefault(run_id, run)
                assert run == previous, "a terminal run changed"

    @invariant()
    def event_ids_are_unique(self) -> None:
        events = self.hitl.events.list(limit=1000)
        assert len({e.id for e in events}) == len(events)


HitlMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HITL_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestHitlMachine = HitlMachine.TestCase

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
