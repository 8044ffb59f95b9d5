"""The store contract suite: every promise of SPEC 2-11 written once against the public
API. An adapter's test module subclasses `HitlContract` and provides a `store_url`
fixture; pytest then runs the whole suite against that store.

    class TestMyStore(HitlContract):
        @pytest.fixture
        def store_url(self, tmp_path):
            return f"mystore://{tmp_path}/db"
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

import hitl_core
from hitl_core import (
    ConflictError,
    HitlError,
    ManualClock,
    NotFoundError,
    RunStatus,
    ValidationError,
)

from .helpers import QUESTION, snapshot, two_questions

__all__ = ["HitlContract", "refused"]

START = 1000.0


def refused(
    hitl: hitl_core.Hitl,
    kind: type[HitlError],
    code: str,
    call: Callable[[], Any],
    users: tuple[str | None, ...] = (None,),
) -> HitlError:
    """Assert that `call` raises `kind` with `code` and that nothing stored changed."""
    before = snapshot(hitl, users)
    with pytest.raises(kind) as caught:
        call()
    assert caught.value.code == code, f"expected {code}, got {caught.value!r}"
    assert (
        caught.value.status == {ValidationError: 422, NotFoundError: 404, ConflictError: 409}[kind]
    )
    assert snapshot(hitl, users) == before, "a refused call changed what is stored"
    return caught.value


class HitlContract:
    """Behaviour every store must give the engine. Subclass and define `store_url`."""

    @pytest.fixture
    def store_url(self) -> str:  # pragma: no cover - subclasses override
        raise NotImplementedError("a contract subclass must provide a store_url fixture")

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(start=START)

    @pytest.fixture
    def hitl(self, store_url: str, clock: ManualClock) -> Iterator[hitl_core.Hitl]:
        engine = hitl_core.connect(store_url, clock=clock)
        yield engine
        engine.close()

    @pytest.fixture
    def connect(self, store_url: str, clock: ManualClock) -> Iterator[Callable[..., Any]]:
        """Open more engines on the same store URL (closed at the end)."""
        opened: list[hitl_core.Hitl] = []

        def open_engine(**options: Any) -> hitl_core.Hitl:
            options.setdefault("clock", clock)
            engine = hitl_core.connect(store_url, **options)
            opened.append(engine)
            return engine

        yield open_engine
        for engine in opened:
            engine.close()

    # helpers ---------------------------------------------------------------------------
    @staticmethod
    def approval_run(hitl: hitl_core.Hitl, **options: Any) -> hitl_core.Run:
        options.setdefault("human_in_the_loop", True)
        options.setdefault("permission_mode", "approval")
        return hitl.runs.create(**options)

    # -- SPEC 2: configuration -------------------------------------------------------------
    def test_default_run_is_autonomous_and_never_pauses(self, hitl: hitl_core.Hitl) -> None:
        run = hitl.runs.create()
        assert run.status == "running" and run.status is RunStatus.RUNNING
        assert run.human_in_the_loop is False and run.permission_mode == "autonomous"
        assert run.input_timeout == 75.0 and run.suspended is False
        gate = hitl.agent(run.id).request_tool("shell.exec", {"cmd": "rm -rf /tmp/x"})
        assert (gate.status, gate.source, gate.request_id) == ("allowed", "autonomous", None)
        refused(hitl, ConflictError, "hitl_disabled", lambda: hitl.agent(run.id).ask([QUESTION]))
        assert hitl.runs.permissions(run.id) == []

    @pytest.mark.parametrize("mode", ["approval", "plan"])
    def test_approval_and_plan_need_the_master_switch(
        self, hitl: hitl_core.Hitl, mode: str
    ) -> None:
        error = refused(
            hitl,
            ValidationError,
            "hitl_required",
            lambda: hitl.runs.create(human_in_the_loop=False, permission_mode=mode),
        )
        assert isinstance(error, ValueError)
        refused(
            hitl, ValidationError, "hitl_required", lambda: hitl.runs.create(permission_mode=mode)
        )

    @pytest.mark.parametrize("mode", ["yolo", "Approval", "", None, 3])
    def test_unknown_mode_is_refused(self, hitl: hitl_core.Hitl, mode: Any) -> None:
        refused(
            hitl,
            ValidationError,
            "invalid_permission_mode",
            lambda: hitl.runs.create(human_in_the_loop=True, permission_mode=mode),
        )

    @pytest.mark.parametrize("switch", [1, 0, "true", None, [True]])
    def test_non_bool_switch_is_refused(self, hitl: hitl_core.Hitl, switch: Any) -> None:
        refused(
            hitl,
            ValidationError,
            "invalid_config",
            lambda: hitl.runs.create(human_in_the_loop=switch),
        )

    @pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), "75", True])
    def test_input_timeout_must_be_positive_seconds(
        self, hitl: hitl_core.Hitl, timeout: Any
    ) -> None:
        refused(
            hitl, ValidationError, "invalid_config", lambda: hitl.runs.create(input_timeout=timeout)
        )

    def test_hitl_with_autonomous_mode_asks_but_never_gates_tools(
        self, hitl: hitl_core.Hitl
    ) -> None:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="autonomous")
        agent = hitl.agent(run.id)
        assert agent.request_tool("gmail.send").source == "autonomous"
        request = agent.ask([QUESTION])
        assert request.kind == "question"
        assert hitl.runs.get(run.id).status == "awaiting_approval"

    @pytest.mark.parametrize("mode", ["approval", "plan"])
    def test_safe_tools_are_never_gated(self, hitl: hitl_core.Hitl, mode: str) -> None:
        run = self.approval_run(hitl, permission_mode=mode)
        gate = hitl.agent(run.id).request_tool("files.read", {"path": "a"}, safe=True)
        assert (gate.status, gate.source, gate.request_id) == ("allowed", "safe", None)
        assert hitl.runs.permissions(run.id) == []

    # -- SPEC 3: lifecycle -----------------------------------------------------------------
    def test_lifecycle_and_events(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl, user_id="cust_1", metadata={"ticket": 7})
        assert run.status == "running" and run.created_at == run.updated_at == START
        assert run.user_id == "cust_1" and run.task_id is None and run.metadata == {"ticket": 7}
        agent = hitl.agent(run.id)
        gate = agent.request_tool("gmail.send", {"to": "a@b.c"})
        assert gate.status == "pending" and gate.source is None and gate.request_id
        assert hitl.runs.get(run.id).status == "awaiting_approval"
        clock.advance(5)
        result = hitl.runs.approve(run.id, request_id=gate.request_id)
        assert result.resumed is False and result.request.status == "allowed"
        assert hitl.runs.get(run.id).status == "running"
        done = agent.complete(output={"sent": True})
        assert done.status == "completed" and done.output == {"sent": True}
        assert [e.type for e in hitl.events.list(run_id=run.id)] == [
            "run.started",
            "run.awaiting_input",
            "request.resolved",
            "run.completed",
        ]
        awaiting = hitl.events.list(run_id=run.id)[1]
        assert awaiting.data["request_id"] == gate.request_id and awaiting.data["kind"] == "tool"

    def test_parallel_requests_each_resolved_on_their_own(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        first = agent.request_tool("a.one")
        second = agent.request_tool("b.two")
        question = agent.ask([QUESTION])
        awaiting = [e for e in hitl.events.list(run_id=run.id) if e.type == "run.awaiting_input"]
        assert [e.data["request_id"] for e in awaiting] == [
            first.request_id,
            second.request_id,
            question.request_id,
        ]
        refused(hitl, ConflictError, "pending_requests", agent.complete)
        hitl.runs.approve(run.id, request_id=second.request_id, decision="deny")
        assert hitl.runs.get(run.id).status == "awaiting_approval"
        hitl.runs.answer(run.id, answers={QUESTION["question"]: "SQLite"})
        assert hitl.runs.get(run.id).status == "awaiting_approval"
        hitl.runs.approve(run.id, request_id=first.request_id)
        assert hitl.runs.get(run.id).status == "running"
        statuses = [r.status for r in hitl.runs.permissions(run.id)]
        assert statuses == ["allowed", "denied", "answered"]

    def test_fail_cancels_pending_requests(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("a.one")
        clock.advance(1)
        failed = agent.fail("the model crashed")
        assert failed.status == "failed" and failed.error == "the model crashed"
        request = agent.result(gate.request_id)
        assert (request.status, request.source, request.resolved_at) == (
            "cancelled",
            "run_ended",
            START + 1,
        )
        types = [e.type for e in hitl.events.list(run_id=run.id)]
        assert types[-2:] == ["request.resolved", "run.failed"]

    def test_cancel(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("a.one")
        cancelled = hitl.runs.cancel(run.id)
        assert cancelled.status == "cancelled" and cancelled.suspended is False
        assert hitl.agent(run.id).result(gate.request_id).status == "cancelled"
        assert hitl.events.list(run_id=run.id)[-1].type == "run.cancelled"
        refused(hitl, ConflictError, "run_not_active", lambda: hitl.runs.cancel(run.id))
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.runs.cancel("run_missing"))

    @pytest.mark.parametrize("ending", ["complete", "fail", "cancel"])
    def test_terminal_runs_refuse_every_change_first(
        self, hitl: hitl_core.Hitl, ending: str
    ) -> None:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="plan")
        agent = hitl.agent(run.id)
        plan = agent.propose_plan("1. read\n2. write")
        hitl.runs.answer(run.id, answers={"Plan Approval": "Approve"})
        gate = agent.request_tool("x.y")
        hitl.runs.approve(run.id, request_id=gate.request_id)
        if ending == "complete":
            agent.complete()
        elif ending == "fail":
            agent.fail("boom")
        else:
            hitl.runs.cancel(run.id)
        final = hitl.runs.get(run.id)
        assert final.is_terminal
        calls: list[Callable[[], Any]] = [
            lambda: agent.ask([QUESTION]),
            lambda: agent.ask("not questions"),  # bad input still gets run_not_active
            lambda: agent.request_tool("x.y"),
            lambda: agent.request_tool(""),
            lambda: agent.request_tool("x.y", safe=True),
            lambda: agent.propose_plan("again"),
            lambda: agent.complete(),
            lambda: agent.fail("again"),
            lambda: hitl.runs.cancel(run.id),
            lambda: hitl.runs.answer(run.id, answers={}),
            lambda: hitl.runs.answer(
                run.id, answers={"Plan Approval": "Approve"}, request_id=plan.request_id
            ),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id, decision="maybe"),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id),
            lambda: hitl.runs.approve(run.id, request_id="req_missing"),
            lambda: hitl.runs.update_permission_mode(run.id, permission_mode="autonomous"),
            lambda: hitl.runs.update_permission_mode(run.id, permission_mode="bogus"),
        ]
        for call in calls:
            refused(hitl, ConflictError, "run_not_active", call)
        assert hitl.runs.get(run.id) == final
        # reads still work on a terminal run
        assert agent.result(gate.request_id).status == "allowed"
        assert len(hitl.runs.permissions(run.id)) == 2

    # -- SPEC 4: requests ------------------------------------------------------------------
    def test_request_records(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("gmail.send")
        clock.advance(2)
        question = agent.ask([QUESTION])
        first, second = hitl.runs.permissions(run.id)
        assert first.request_id == gate.request_id and second == question
        assert first.run_id == run.id and first.kind == "tool" and first.tool_name == "gmail.send"
        assert first.tool_input == {} and first.status == "pending"
        assert first.created_at == START and first.resolved_at is None
        assert first.decision is None and first.reason is None and first.answers is None
        assert first.remember is False and first.actor is None and first.source is None
        assert first.is_plan_approval is False and first.plan_text is None
        assert second.created_at == START + 2

    def test_ask_shapes_the_request(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        request = hitl.agent(run.id).ask(two_questions())
        assert request.tool_name == "AskUserQuestion" and request.kind == "question"
        assert request.tool_input == {
            "questions": [
                QUESTION,
                {
                    "question": "Which regions?",
                    "header": "Regions",
                    "options": [
                        {"label": "eu", "description": ""},
                        {"label": "us", "description": ""},
                        {"label": "asia", "description": ""},
                    ],
                    "multiSelect": True,
                },
            ]
        }

    @pytest.mark.parametrize(
        "questions",
        [
            [],
            [dict(QUESTION, question=f"q{i}") for i in range(5)],
            [QUESTION, QUESTION],
            [dict(QUESTION, question="")],
            [dict(QUESTION, question="   ")],
            [dict(QUESTION, question=7)],
            [dict(QUESTION, options=["only one"])],
            [dict(QUESTION, options=["same", "same"])],
            [dict(QUESTION, options=[{"label": ""}, {"label": "b"}])],
            [dict(QUESTION, options="a,b")],
            [dict(QUESTION, multiSelect="yes")],
            [dict(QUESTION, header=3)],
            [dict(QUESTION, surprise=True)],
            ["a question as a string"],
            "not a list",
            None,
        ],
    )
    def test_malformed_questions_are_refused(self, hitl: hitl_core.Hitl, questions: Any) -> None:
        run = self.approval_run(hitl)
        refused(hitl, ValidationError, "invalid_request", lambda: hitl.agent(run.id).ask(questions))
        assert hitl.runs.get(run.id).status == "running"

    def test_answer_questions(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl)
        request = hitl.agent(run.id).ask(two_questions())
        clock.advance(3)
        result = hitl.runs.answer(
            run.id,
            answers={QUESTION["question"]: "Postgres", "Which regions?": ["eu", "mars"]},
            actor="alice",
        )
        assert result.status == "ok" and result.resumed is False
        answered = hitl.agent(run.id).result(request.request_id)
        assert answered == result.request
        assert answered.status == "answered" and answered.source == "human"
        assert answered.actor == "alice" and answered.resolved_at == START + 3
        assert answered.answers == {
            QUESTION["question"]: "Postgres",
            "Which regions?": ["eu", "mars"],
        }
        assert hitl.runs.get(run.id).status == "running"
        resolved = hitl.events.list(run_id=run.id)[-1]
        assert resolved.type == "request.resolved"
        assert resolved.data["request_id"] == request.request_id

    def test_multi_select_takes_a_comma_separated_string(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        request = hitl.agent(run.id).ask(two_questions())
        hitl.runs.answer(
            run.id,
            answers={QUESTION["question"]: "something else entirely", "Which regions?": "eu, us"},
        )
        answers = hitl.agent(run.id).result(request.request_id).answers
        assert answers == {
            QUESTION["question"]: "something else entirely",
            "Which regions?": ["eu", "us"],
        }
        # the same answers given the other way are the same answers: an idempotent retry
        again = hitl.runs.answer(
            run.id,
            request_id=request.request_id,
            answers={
                QUESTION["question"]: "something else entirely",
                "Which regions?": ["eu", "us"],
            },
        )
        assert again.resumed is False

    @pytest.mark.parametrize(
        "answers",
        [
            {QUESTION["question"]: "Postgres"},  # one question missing
            {QUESTION["question"]: "Postgres", "Which regions?": "eu", "Extra?": "x"},
            {QUESTION["question"]: 3, "Which regions?": "eu"},
            {QUESTION["question"]: "", "Which regions?": "eu"},
            {QUESTION["question"]: "Postgres", "Which regions?": [1, 2]},
            {QUESTION["question"]: "Postgres", "Which regions?": " , "},
            {QUESTION["question"]: ["Postgres"], "Which regions?": "eu"},
            ["not", "a", "dict"],
        ],
    )
    def test_bad_answers_are_refused(self, hitl: hitl_core.Hitl, answers: Any) -> None:
        run = self.approval_run(hitl)
        hitl.agent(run.id).ask(two_questions())
        refused(
            hitl,
            ValidationError,
            "invalid_answers",
            lambda: hitl.runs.answer(run.id, answers=answers),
        )

    def test_answer_refusals(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        refused(
            hitl,
            NotFoundError,
            "run_not_found",
            lambda: hitl.runs.answer("run_x", answers={"a": "b"}),
        )
        refused(
            hitl,
            ConflictError,
            "not_awaiting_input",
            lambda: hitl.runs.answer(run.id, answers={"a": "b"}),
        )
        gate = hitl.agent(run.id).request_tool("x.y")
        # a pending tool request is not answerable
        refused(
            hitl,
            ConflictError,
            "not_awaiting_input",
            lambda: hitl.runs.answer(run.id, answers={"a": "b"}),
        )
        refused(
            hitl,
            ConflictError,
            "not_awaiting_input",
            lambda: hitl.runs.answer(run.id, answers={"a": "b"}, request_id=gate.request_id),
        )
        refused(
            hitl, ValidationError, "empty_answers", lambda: hitl.runs.answer(run.id, answers={})
        )
        request = hitl.agent(run.id).ask([QUESTION])
        other = self.approval_run(hitl)
        refused(
            hitl,
            ConflictError,
            "not_awaiting_input",
            lambda: hitl.runs.answer(
                other.id, answers={QUESTION["question"]: "SQLite"}, request_id=request.request_id
            ),
        )
        hitl.runs.answer(run.id, answers={QUESTION["question"]: "SQLite"})
        again = hitl.runs.answer(
            run.id, answers={QUESTION["question"]: "SQLite"}, request_id=request.request_id
        )
        assert again.status == "ok" and again.resumed is False
        refused(
            hitl,
            ConflictError,
            "already_answered",
            lambda: hitl.runs.answer(
                run.id, answers={QUESTION["question"]: "Postgres"}, request_id=request.request_id
            ),
        )

    def test_answer_targets_the_oldest_pending_question_or_a_named_one(
        self, hitl: hitl_core.Hitl
    ) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        first = agent.ask([QUESTION])
        second = agent.ask([dict(QUESTION, question="Which cache?")])
        hitl.runs.answer(run.id, request_id=second.request_id, answers={"Which cache?": "SQLite"})
        assert agent.result(first.request_id).status == "pending"
        hitl.runs.answer(run.id, answers={QUESTION["question"]: "Postgres"})
        assert agent.result(first.request_id).status == "answered"

    # -- SPEC 4.2: tool approval -----------------------------------------------------------
    def test_approve_with_reason_and_actor(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("gmail.send", {"to": "x"})
        result = hitl.runs.approve(
            run.id, request_id=gate.request_id, decision="deny", reason="use slack", actor="bob"
        )
        assert result.remembered is False and result.resumed is False
        seen = agent.result(gate.request_id)
        assert seen == result.request
        assert (seen.status, seen.decision, seen.reason, seen.actor, seen.source) == (
            "denied",
            "deny",
            "use slack",
            "bob",
            "human",
        )

    def test_approve_refusals_in_order(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("a.b")
        question = agent.ask([QUESTION])
        rid = gate.request_id
        refused(
            hitl, NotFoundError, "run_not_found", lambda: hitl.runs.approve("run_x", request_id=rid)
        )
        refused(
            hitl,
            ValidationError,
            "invalid_decision",
            lambda: hitl.runs.approve(run.id, request_id="req_missing", decision="maybe"),
        )
        for decision in ("ALLOW", "", None, "approve"):
            refused(
                hitl,
                ValidationError,
                "invalid_decision",
                lambda d=decision: hitl.runs.approve(run.id, request_id=rid, decision=d),
            )
        refused(
            hitl,
            NotFoundError,
            "gate_not_found",
            lambda: hitl.runs.approve(run.id, request_id="req_x"),
        )
        refused(
            hitl,
            NotFoundError,
            "gate_not_found",
            lambda: hitl.runs.approve(run.id, request_id=question.request_id),
        )
        other = self.approval_run(hitl)
        refused(
            hitl,
            NotFoundError,
            "gate_not_found",
            lambda: hitl.runs.approve(other.id, request_id=rid),
        )
        hitl.runs.approve(run.id, request_id=rid, decision="allow")
        refused(
            hitl,
            NotFoundError,
            "gate_resolved_otherwise",
            lambda: hitl.runs.approve(run.id, request_id=rid, decision="deny"),
        )
        cancelled_run = self.approval_run(hitl)
        cancelled_gate = hitl.agent(cancelled_run.id).request_tool("a.b")
        refused(
            hitl,
            NotFoundError,
            "gate_not_found",
            lambda: hitl.runs.approve(run.id, request_id=cancelled_gate.request_id),
        )

    def test_approve_cancelled_gate(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("a.b")
        keep = agent.request_tool("c.d")
        hitl.runs.approve(run.id, request_id=keep.request_id)
        hitl.agent(run.id)  # still active
        # a gate cancelled with its run: the run is terminal, so run_not_active comes first
        hitl.runs.cancel(run.id)
        refused(
            hitl,
            ConflictError,
            "run_not_active",
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id),
        )

    def test_repeat_decision_and_remember_upgrade(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl, user_id="cust_1")
        agent = hitl.agent(run.id)
        gate = agent.request_tool("slack.post")
        first = hitl.runs.approve(run.id, request_id=gate.request_id, reason="ok")
        assert first.remembered is False
        before = snapshot(hitl, ("cust_1",))
        repeat = hitl.runs.approve(run.id, request_id=gate.request_id)
        assert repeat.request == first.request and repeat.resumed is False
        assert snapshot(hitl, ("cust_1",)) == before
        upgraded = hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        assert upgraded.remembered is True and upgraded.request.remember is True
        assert (
            upgraded.request.reason == "ok"
            and upgraded.request.resolved_at == first.request.resolved_at
        )
        assert agent.request_tool("slack.post").source == "remembered"
        # never the reverse
        again = hitl.runs.approve(run.id, request_id=gate.request_id, remember=False)
        assert again.request.remember is True and again.remembered is True
        policies = hitl.permissions.list(user_id="cust_1").data
        assert [(p.tool_name, p.source) for p in policies] == [("slack.post", "run_approval")]

    def test_gate_rule_order(self, hitl: hitl_core.Hitl) -> None:
        hitl.permissions.create(tool="calendar.*", user_id="u")
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="plan", user_id="u")
        agent = hitl.agent(run.id)
        # plan not approved: denied without a request, even for a pre-approved tool
        for tool in ("calendar.read", "gmail.send"):
            gate = agent.request_tool(tool)
            assert (gate.status, gate.source, gate.request_id) == (
                "denied",
                "plan_not_approved",
                None,
            )
            assert gate.reason and "plan" in gate.reason
        assert hitl.runs.permissions(run.id) == []
        agent.propose_plan("do it")
        hitl.runs.answer(run.id, answers={"Plan Approval": "Approve"})
        assert agent.request_tool("calendar.read").source == "policy"
        gate = agent.request_tool("gmail.send")
        assert gate.status == "pending"
        hitl.runs.approve(run.id, request_id=gate.request_id, decision="deny", remember=True)
        denied = agent.request_tool("gmail.send")
        assert (denied.status, denied.source, denied.request_id) == ("denied", "remembered", None)
        assert denied.reason and "denied" in denied.reason
        assert agent.request_tool("calendar.read").reason is None
        assert agent.request_tool("gmail.send", safe=True).source == "safe"
        hitl.runs.update_permission_mode(run.id, permission_mode="autonomous")
        assert agent.request_tool("gmail.send").source == "autonomous"

    @pytest.mark.parametrize("name", ["", "   ", None, 5, ["a"]])
    def test_bad_tool_names(self, hitl: hitl_core.Hitl, name: Any) -> None:
        run = self.approval_run(hitl)
        refused(
            hitl, ValidationError, "invalid_request", lambda: hitl.agent(run.id).request_tool(name)
        )

    @pytest.mark.parametrize(
        "call",
        [
            lambda agent: agent.request_tool("x", ["not", "a", "dict"]),
            lambda agent: agent.request_tool("x", {"a": object()}),
            lambda agent: agent.request_tool("x", {1: "non-string key"}),
            lambda agent: agent.request_tool("x", safe="yes"),
        ],
    )
    def test_bad_tool_arguments(self, hitl: hitl_core.Hitl, call: Any) -> None:
        run = self.approval_run(hitl)
        refused(hitl, ValidationError, "invalid_request", lambda: call(hitl.agent(run.id)))

    # -- SPEC 4.3: plans -------------------------------------------------------------------
    def test_plan_cycle(self, hitl: hitl_core.Hitl) -> None:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="plan")
        agent = hitl.agent(run.id)
        plan = agent.propose_plan("1. read the logs\n2. restart")
        assert plan.kind == "plan" and plan.tool_name == "AskUserQuestion"
        assert plan.is_plan_approval is True and plan.plan_text == "1. read the logs\n2. restart"
        question = plan.tool_input["questions"][0]
        assert question["header"] == "Plan Approval"
        assert question["question"] == plan.plan_text
        assert [o["label"] for o in question["options"]] == ["Approve", "Revise"]
        assert plan.tool_input["revision"] == 1
        assert hitl.runs.get(run.id).status == "awaiting_approval"
        hitl.runs.answer(run.id, answers={"Plan Approval": "Also check the disk"})
        revised = agent.result(plan.request_id)
        assert (revised.status, revised.decision, revised.reason) == (
            "answered",
            "revise",
            "Also check the disk",
        )
        assert agent.request_tool("shell.exec").source == "plan_not_approved"
        second = agent.propose_plan("1. read logs\n2. check disk\n3. restart")
        assert second.tool_input["revision"] == 2
        hitl.runs.answer(run.id, answers={second.plan_text: "  approve "})
        approved = agent.result(second.request_id)
        assert approved.decision == "approve" and approved.status == "answered"
        assert hitl.runs.get(run.id).status == "running"
        # after approval, tools follow the approval-mode rules
        assert agent.request_tool("shell.exec").status == "pending"

    def test_plan_refusals(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        refused(hitl, ConflictError, "not_plan_mode", lambda: hitl.agent(run.id).propose_plan("x"))
        plan_run = hitl.runs.create(human_in_the_loop=True, permission_mode="plan")
        for text in ("", "  ", None, 3):
            refused(
                hitl,
                ValidationError,
                "invalid_request",
                lambda t=text: hitl.agent(plan_run.id).propose_plan(t),
            )
        plan = hitl.agent(plan_run.id).propose_plan("the plan")
        for answers in (
            {"Wrong key": "Approve"},
            {"Plan Approval": "Approve", "the plan": "Approve"},
            {"Plan Approval": ""},
            {"Plan Approval": 1},
        ):
            refused(
                hitl,
                ValidationError,
                "invalid_answers",
                lambda a=answers: hitl.runs.answer(plan_run.id, answers=a),
            )
        hitl.runs.answer(plan_run.id, answers={"Plan Approval": "Approve"})
        hitl.runs.answer(plan_run.id, answers={"the plan": "APPROVE"}, request_id=plan.request_id)
        refused(
            hitl,
            ConflictError,
            "already_answered",
            lambda: hitl.runs.answer(
                plan_run.id, answers={"Plan Approval": "no"}, request_id=plan.request_id
            ),
        )

    # -- SPEC 4.4: remember ----------------------------------------------------------------
    def test_remember_allow_crosses_runs_of_the_same_user(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl, user_id="cust_1")
        gate = hitl.agent(run.id).request_tool("slack.post")
        result = hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        assert result.remembered is True
        assert hitl.agent(run.id).request_tool("slack.post").source == "remembered"
        later = self.approval_run(hitl, user_id="cust_1")
        assert hitl.agent(later.id).request_tool("slack.post").source == "remembered"
        (policy,) = hitl.permissions.list(user_id="cust_1").data
        assert policy.source == "run_approval" and policy.tool_name == "slack.post"
        for other in (self.approval_run(hitl, user_id="cust_2"), self.approval_run(hitl)):
            assert hitl.agent(other.id).request_tool("slack.post").status == "pending"

    def test_remember_scope_run(self, connect: Callable[..., Any]) -> None:
        hitl = connect(remember_scope="run")
        run = self.approval_run(hitl, user_id="cust_1")
        gate = hitl.agent(run.id).request_tool("slack.post")
        assert hitl.runs.approve(run.id, request_id=gate.request_id, remember=True).remembered
        assert hitl.agent(run.id).request_tool("slack.post").source == "remembered"
        later = self.approval_run(hitl, user_id="cust_1")
        assert hitl.agent(later.id).request_tool("slack.post").status == "pending"
        assert hitl.permissions.list(user_id="cust_1").data == []

    def test_remember_deny_stays_in_the_run(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl, user_id="cust_1")
        gate = hitl.agent(run.id).request_tool("rm.rf")
        result = hitl.runs.approve(
            run.id, request_id=gate.request_id, decision="deny", remember=True
        )
        assert result.remembered is False
        assert hitl.agent(run.id).request_tool("rm.rf").source == "remembered"
        later = self.approval_run(hitl, user_id="cust_1")
        assert hitl.agent(later.id).request_tool("rm.rf").status == "pending"
        assert hitl.permissions.list(user_id="cust_1").data == []

    def test_remembered_policy_reports_remembered_api_policy_reports_policy(
        self, hitl: hitl_core.Hitl
    ) -> None:
        hitl.permissions.create(tool="linear.create", user_id="cust_1")
        run = self.approval_run(hitl, user_id="cust_1")
        assert hitl.agent(run.id).request_tool("linear.create").source == "policy"
        gate = hitl.agent(run.id).request_tool("slack.post")
        hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        later = hitl.agent(self.approval_run(hitl, user_id="cust_1").id)
        assert later.request_tool("linear.create").source == "policy"
        assert later.request_tool("slack.post").source == "remembered"

    def test_remembering_a_tool_named_like_a_pattern_allows_only_that_name(
        self, hitl: hitl_core.Hitl
    ) -> None:
        run = self.approval_run(hitl, user_id="u")
        agent = hitl.agent(run.id)
        for name in ("*", "fs.read[*]", "a?c"):
            gate = agent.request_tool(name)
            hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        later = hitl.agent(self.approval_run(hitl, user_id="u").id)
        for name in ("*", "fs.read[*]", "a?c"):
            assert later.request_tool(name).source == "remembered", name
        for name in ("shell.exec", "fs.read*", "fs.readx", "abc"):
            assert later.request_tool(name).status == "pending", name

    def test_pre_approving_a_remembered_tool_makes_it_an_api_policy(
        self, hitl: hitl_core.Hitl
    ) -> None:
        run = self.approval_run(hitl, user_id="u")
        gate = hitl.agent(run.id).request_tool("slack.post")
        hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        (remembered,) = hitl.permissions.list(user_id="u").data
        assert remembered.source == "run_approval"
        policy = hitl.permissions.create(tool="slack.post", user_id="u")
        assert policy.source == "api" and policy.id == remembered.id
        assert hitl.permissions.list(user_id="u").data == [policy]
        later = hitl.agent(self.approval_run(hitl, user_id="u").id)
        assert later.request_tool("slack.post").source == "policy"

    # -- SPEC 5: policies ------------------------------------------------------------------
    def test_policies(self, hitl: hitl_core.Hitl) -> None:
        policy = hitl.permissions.create(tool="slack.*", user_id="cust_123")
        assert policy.source == "api" and policy.user_id == "cust_123"
        assert policy.tool_name == "slack.*" and policy.created_at == START and policy.id
        assert hitl.permissions.create(tool="slack.*", user_id="cust_123") == policy
        account = hitl.permissions.create(tool="slack.*")
        assert account.id != policy.id and account.user_id is None
        run = self.approval_run(hitl, user_id="cust_123")
        agent = hitl.agent(run.id)
        assert agent.request_tool("slack.post").source == "policy"
        for name in ("Slack.post", "slack", "myslack.post", "linear.create"):
            assert agent.request_tool(name).status == "pending", name
        deleted = hitl.permissions.delete(policy.id, user_id="cust_123")
        assert deleted == policy
        assert agent.request_tool("slack.post").status == "pending"
        again = hitl.permissions.create(tool="slack.*", user_id="cust_123")
        assert again.id != policy.id

    def test_policy_patterns(self, hitl: hitl_core.Hitl) -> None:
        hitl.permissions.create(tool="db.[rw]ead?")
        hitl.permissions.create(tool="fs.read")
        agent = hitl.agent(self.approval_run(hitl).id)
        assert agent.request_tool("db.reads").source == "policy"
        assert agent.request_tool("fs.read").source == "policy"
        assert agent.request_tool("db.read").status == "pending"
        assert agent.request_tool("fs.read.all").status == "pending"
        hitl.permissions.create(tool="*.send")  # no literal prefix
        hitl.permissions.create(tool="long" + "x" * 240 + "*")  # names are at most 256 long
        assert agent.request_tool("gmail.send").source == "policy"
        assert agent.request_tool("long" + "x" * 252).source == "policy"
        assert agent.request_tool("long" + "x" * 239).status == "pending"

    def test_policy_scopes_never_cross(self, hitl: hitl_core.Hitl) -> None:
        users = (None, "cust_1", "cust_2")
        hitl.permissions.create(tool="a.tool", user_id="cust_1")
        hitl.permissions.create(tool="b.tool")
        expectations = {
            None: ("b.tool", "a.tool"),
            "cust_1": ("a.tool", "b.tool"),
            "cust_2": (None, "a.tool"),
        }
        for user, (allowed, gated) in expectations.items():
            agent = hitl.agent(self.approval_run(hitl, user_id=user).id)
            if allowed:
                assert agent.request_tool(allowed).source == "policy"
            assert agent.request_tool(gated).status == "pending"
        pol = hitl.permissions.list(user_id="cust_1").data[0]
        refused(
            hitl, NotFoundError, "policy_not_found", lambda: hitl.permissions.delete(pol.id), users
        )
        refused(
            hitl,
            NotFoundError,
            "policy_not_found",
            lambda: hitl.permissions.delete(pol.id, user_id="cust_2"),
            users,
        )
        refused(
            hitl, NotFoundError, "policy_not_found", lambda: hitl.permissions.delete("pol_x"), users
        )

    @pytest.mark.parametrize("tool", ["", None, 3, ["a"]])
    def test_bad_policy_tool(self, hitl: hitl_core.Hitl, tool: Any) -> None:
        refused(
            hitl, ValidationError, "invalid_request", lambda: hitl.permissions.create(tool=tool)
        )

    def test_policy_paging(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        made = []
        for index in range(7):
            made.append(hitl.permissions.create(tool=f"t{index}", user_id="cust_1"))
            clock.advance(1)
        hitl.permissions.create(tool="other")
        first = hitl.permissions.list(user_id="cust_1", limit=3)
        assert first.data == made[:3] and first.has_more is True
        assert first.next_starting_after == made[2].id
        second = hitl.permissions.list(user_id="cust_1", limit=3, starting_after=made[2].id)
        assert second.data == made[3:6] and second.has_more is True
        third = hitl.permissions.list(user_id="cust_1", limit=3, starting_after=made[5].id)
        assert third.data == made[6:] and third.has_more is False
        assert third.next_starting_after is None
        for limit in (0, -1, 101, "5", True):
            refused(
                hitl,
                ValidationError,
                "invalid_request",
                lambda n=limit: hitl.permissions.list(user_id="cust_1", limit=n),
            )

    # -- SPEC 6: the timeout clock ---------------------------------------------------------
    def test_suspension_and_resume(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl, input_timeout=75.0)
        gate = hitl.agent(run.id).request_tool("a.b")
        clock.advance(74.9)
        assert hitl.tick() == []
        assert hitl.runs.get(run.id).suspended is False
        clock.advance(0.1)
        events = hitl.tick()
        assert [(e.type, e.run_id, e.created_at) for e in events] == [
            ("run.suspended", run.id, START + 75)
        ]
        suspended = hitl.runs.get(run.id)
        assert suspended.suspended is True and suspended.status == "awaiting_approval"
        clock.advance(10 * 24 * 3600)  # no limit on the pause
        assert hitl.tick() == []
        result = hitl.runs.approve(run.id, request_id=gate.request_id)
        assert result.resumed is True and result.request.resumed is True
        assert hitl.agent(run.id).result(gate.request_id).resumed is True
        resumed = hitl.runs.get(run.id)
        assert resumed.status == "running" and resumed.suspended is False
        types = [e.type for e in hitl.events.list(run_id=run.id)]
        assert types == [
            "run.started",
            "run.awaiting_input",
            "run.suspended",
            "request.resolved",
            "run.resumed",
        ]

    def test_deadlines_apply_lazily_without_tick(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl, input_timeout=10.0)
        question = hitl.agent(run.id).ask([QUESTION])
        clock.advance(30)
        assert hitl.runs.get(run.id).suspended is True
        suspended = [e for e in hitl.events.list() if e.type == "run.suspended"]
        assert [(e.run_id, e.created_at) for e in suspended] == [(run.id, START + 10)]
        result = hitl.runs.answer(run.id, answers={QUESTION["question"]: "SQLite"})
        assert result.resumed is True
        assert question.request_id == result.request.request_id

    def test_decision_that_leaves_others_pending_does_not_resume(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl, input_timeout=20.0)
        agent = hitl.agent(run.id)
        first = agent.request_tool("a")
        clock.advance(15)
        second = agent.request_tool("b")
        clock.advance(5)  # the first has waited 20 s
        assert hitl.runs.get(run.id).suspended is True
        assert hitl.runs.approve(run.id, request_id=second.request_id).resumed is False
        assert hitl.runs.get(run.id).suspended is True
        assert hitl.runs.approve(run.id, request_id=first.request_id).resumed is True
        assert [e.type for e in hitl.events.list(run_id=run.id)].count("run.suspended") == 1

    def test_deadline_follows_the_oldest_still_pending_request(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl, input_timeout=20.0)
        agent = hitl.agent(run.id)
        first = agent.request_tool("a")
        clock.advance(15)
        agent.request_tool("b")
        hitl.runs.approve(run.id, request_id=first.request_id)
        clock.advance(19)  # b has waited 19 s
        assert hitl.runs.get(run.id).suspended is False
        clock.advance(1)
        assert [e.created_at for e in hitl.tick()] == [START + 35]

    def test_a_refused_call_after_a_deadline_does_not_lose_it(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl, input_timeout=10.0)
        gate = hitl.agent(run.id).request_tool("a")
        clock.advance(20)
        with pytest.raises(ValidationError):  # applies the deadline, then is refused
            hitl.runs.approve(run.id, request_id=gate.request_id, decision="maybe")
        assert hitl.runs.get(run.id).suspended is True
        assert [
            e.created_at for e in hitl.events.list(run_id=run.id) if e.type == "run.suspended"
        ] == [START + 10]

    def test_live_decision_does_not_resume(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("a")
        clock.advance(74)
        assert hitl.runs.approve(run.id, request_id=gate.request_id).resumed is False
        assert hitl.agent(run.id).result(gate.request_id).resumed is False
        clock.advance(100)
        assert hitl.tick() == []
        assert "run.resumed" not in [e.type for e in hitl.events.list(run_id=run.id)]

    def test_outcome_does_not_depend_on_when_tick_runs(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        def scenario(ticking: bool) -> list[tuple[str, float, str]]:
            start = clock.now()
            run = self.approval_run(hitl, input_timeout=30.0)
            agent = hitl.agent(run.id)
            first = agent.request_tool("a")
            for _ in range(12):
                clock.advance(5)
                if ticking:
                    hitl.tick()
            second = agent.request_tool("b")
            for gate in (first, second):
                hitl.runs.approve(run.id, request_id=gate.request_id)
            return [
                (e.type, e.created_at - start, e.data.get("kind", ""))
                for e in hitl.events.list(run_id=run.id)
            ]

        ticked = scenario(ticking=True)
        assert ("run.suspended", 30.0, "") in ticked
        assert scenario(ticking=False) == ticked

    # -- SPEC 7: mode switch ---------------------------------------------------------------
    def test_switch_to_autonomous_allows_pending_tools_only(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        tool = agent.request_tool("a")
        question = agent.ask([QUESTION])
        clock.advance(1)
        switched = hitl.runs.update_permission_mode(run.id, permission_mode="autonomous")
        assert switched.permission_mode == "autonomous" and switched.status == "awaiting_approval"
        allowed = agent.result(tool.request_id)
        assert (allowed.status, allowed.source, allowed.resolved_at) == (
            "allowed",
            "mode_switch",
            START + 1,
        )
        assert agent.result(question.request_id).status == "pending"
        hitl.runs.answer(run.id, answers={QUESTION["question"]: "SQLite"})
        assert hitl.runs.get(run.id).status == "running"

    def test_switch_to_autonomous_resumes_a_suspended_run(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl)
        hitl.agent(run.id).request_tool("a")
        clock.advance(100)
        switched = hitl.runs.update_permission_mode(run.id, permission_mode="autonomous")
        assert switched.status == "running" and switched.suspended is False
        assert hitl.events.list(run_id=run.id)[-1].type == "run.resumed"

    def test_mode_switch_refusals(self, hitl: hitl_core.Hitl) -> None:
        plain = hitl.runs.create()
        for mode in ("approval", "plan"):
            refused(
                hitl,
                ValidationError,
                "hitl_required",
                lambda m=mode: hitl.runs.update_permission_mode(plain.id, permission_mode=m),
            )
        refused(
            hitl,
            ValidationError,
            "invalid_permission_mode",
            lambda: hitl.runs.update_permission_mode(plain.id, permission_mode="yolo"),
        )
        refused(
            hitl,
            NotFoundError,
            "run_not_found",
            lambda: hitl.runs.update_permission_mode("run_x", permission_mode="plan"),
        )
        run = self.approval_run(hitl)
        to_plan = hitl.runs.update_permission_mode(run.id, permission_mode="plan")
        assert to_plan.permission_mode == "plan"
        assert hitl.agent(run.id).request_tool("a").source == "plan_not_approved"

    # -- SPEC 8: tasks ---------------------------------------------------------------------
    def test_tasks(self, hitl: hitl_core.Hitl) -> None:
        task = hitl.tasks.create(
            name="Triage", human_in_the_loop=True, permission_mode="approval", user_id="cust_1"
        )
        assert hitl.tasks.get(task.id) == task
        run = hitl.tasks.run(task.id)
        assert (run.task_id, run.human_in_the_loop, run.permission_mode, run.user_id) == (
            task.id,
            True,
            "approval",
            "cust_1",
        )
        override = hitl.tasks.run(task.id, permission_mode="plan", user_id="cust_2")
        assert (override.permission_mode, override.user_id) == ("plan", "cust_2")
        bare = hitl.tasks.create(name="Bare")
        defaults = hitl.tasks.run(bare.id)
        assert (defaults.human_in_the_loop, defaults.permission_mode) == (False, "autonomous")
        refused(
            hitl,
            ValidationError,
            "hitl_required",
            lambda: hitl.tasks.run(bare.id, permission_mode="plan"),
        )
        refused(
            hitl,
            ValidationError,
            "hitl_required",
            lambda: hitl.tasks.run(task.id, human_in_the_loop=False),
        )
        refused(hitl, NotFoundError, "task_not_found", lambda: hitl.tasks.run("task_x"))
        refused(hitl, NotFoundError, "task_not_found", lambda: hitl.tasks.get("task_x"))
        refused(
            hitl, ValidationError, "invalid_request", lambda: hitl.tasks.run(task.id, colour="red")
        )
        refused(hitl, ValidationError, "invalid_request", lambda: hitl.tasks.create(name=""))
        refused(
            hitl,
            ValidationError,
            "invalid_permission_mode",
            lambda: hitl.tasks.create(name="x", permission_mode="yolo"),
        )
        refused(
            hitl,
            ValidationError,
            "invalid_config",
            lambda: hitl.tasks.create(name="x", human_in_the_loop="yes"),
        )

    # -- SPEC 9: events --------------------------------------------------------------------
    def test_events_paging(self, hitl: hitl_core.Hitl) -> None:
        runs = [hitl.runs.create() for _ in range(5)]
        events = hitl.events.list()
        assert [e.run_id for e in events] == [r.id for r in runs]
        assert hitl.events.list(after=events[1].id, limit=2) == events[2:4]
        assert hitl.events.list(after=events[-1].id) == []
        assert hitl.events.list(run_id=runs[3].id) == [events[3]]
        assert hitl.events.list(run_id=runs[3].id, after=events[3].id) == []
        assert hitl.events.list(run_id="run_unknown") == []
        refused(hitl, ValidationError, "invalid_cursor", lambda: hitl.events.list(after="evt_x"))
        assert len({e.id for e in events}) == 5

    # -- SPEC 9: the webhook outbox (no network: the claim/record protocol itself) --------
    def test_webhook_endpoints(self, hitl: hitl_core.Hitl) -> None:
        created = hitl.webhooks.create(url="https://example.test/a")
        assert len(created.secret) == 64
        assert created.events == ("run.completed", "run.failed", "run.cancelled")
        shown = hitl.webhooks.get(created.id)
        assert shown.secret == created.secret[:4] + "..."
        second = hitl.webhooks.create(url="http://127.0.0.1:9/b", events=["run.started"])
        page = hitl.webhooks.list(limit=1)
        assert [e.id for e in page.data] == [created.id] and page.has_more
        assert [e.id for e in hitl.webhooks.list(starting_after=created.id).data] == [second.id]
        rotated = hitl.webhooks.update(created.id, rotate_secret=True, events=[])
        assert rotated.secret != created.secret and len(rotated.secret) == 64
        assert hitl.webhooks.get(created.id).events == ()
        for bad in ({"url": "ftp://x"}, {"url": "https://x", "events": ["nope"]}):
            with pytest.raises(ValidationError):
                hitl.webhooks.create(**bad)
        hitl.webhooks.delete(second.id)
        assert [e.id for e in hitl.webhooks.list().data] == [created.id]
        with pytest.raises(NotFoundError) as caught:
            hitl.webhooks.delete(second.id)
        assert caught.value.code == "webhook_not_found"

    def test_outbox_fans_out_once_per_subscribed_active_endpoint(
        self, hitl: hitl_core.Hitl
    ) -> None:
        hitl.runs.create()  # before any endpoint: never delivered
        ends = hitl.webhooks.create(url="https://example.test/ends")
        starts = hitl.webhooks.create(url="https://example.test/starts", events=["run.started"])
        off = hitl.webhooks.create(url="https://example.test/off", events=["run.started"])
        hitl.webhooks.update(off.id, active=False)
        run = hitl.runs.create()
        hitl.agent(run.id).complete()
        assert hitl.webhooks.enqueue() == 2
        assert hitl.webhooks.enqueue() == 0
        (done,) = hitl.webhooks.list_deliveries(ends.id).data
        (started,) = hitl.webhooks.list_deliveries(starts.id).data
        assert (done.event_type, done.run_id, done.status) == ("run.completed", run.id, "pending")
        assert started.event_type == "run.started" and started.attempts == 0
        assert hitl.webhooks.list_deliveries(off.id).data == []

    def test_outbox_claims_retries_and_gives_up(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        endpoint = hitl.webhooks.create(url="https://example.test/hook")
        hitl.agent(hitl.runs.create().id).complete()
        hitl.webhooks.enqueue()
        (first,) = hitl.webhooks.claim(lease_seconds=30)
        assert first.url == endpoint.url and first.delivery.attempts == 1
        assert first.headers["Webhook-Id"] == first.delivery.event_id
        assert hitl_core.webhooks.verify_signature(first.body, first.headers, endpoint.secret)
        assert hitl.webhooks.claim() == []  # leased
        failed = hitl.webhooks.record(first.delivery.id, attempt=1, status_code=500)
        assert (failed.status, failed.next_retry_at) == ("pending", START + 2)
        clock.advance(2)
        (second,) = hitl.webhooks.claim(lease_seconds=30)
        hitl.webhooks.record(second.delivery.id, attempt=2, error="refused")
        clock.advance(4)
        (third,) = hitl.webhooks.claim(lease_seconds=30)
        last = hitl.webhooks.record(third.delivery.id, attempt=3, status_code=503)
        assert (last.status, last.attempts, last.next_retry_at) == ("failed", 3, None)
        clock.advance(100)
        assert hitl.webhooks.claim() == []
        assert hitl.webhooks.list_deliveries(endpoint.id, status="failed").data == [last]

    def test_outbox_lease_expiry_and_stale_outcomes(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        endpoint = hitl.webhooks.create(url="https://example.test/hook")
        hitl.agent(hitl.runs.create().id).complete()
        hitl.webhooks.enqueue()
        (lost,) = hitl.webhooks.claim(lease_seconds=10)  # this worker dies
        clock.advance(11)
        (again,) = hitl.webhooks.claim(lease_seconds=10)
        assert again.delivery.id == lost.delivery.id and again.delivery.attempts == 2
        late = hitl.webhooks.record(lost.delivery.id, attempt=1, status_code=200)
        assert late.status == "pending"  # an outcome for an old attempt changes nothing
        done = hitl.webhooks.record(again.delivery.id, attempt=2, status_code=204)
        assert done.status == "delivered" and done.response_status_code == 204
        hitl.webhooks.update(endpoint.id, active=False)
        assert hitl.webhooks.get(endpoint.id).active is False

    def test_deactivating_or_deleting_an_endpoint_settles_its_deliveries(
        self, hitl: hitl_core.Hitl
    ) -> None:
        endpoint = hitl.webhooks.create(url="https://example.test/hook")
        for _ in range(3):
            hitl.agent(hitl.runs.create().id).complete()
        hitl.webhooks.enqueue()
        page = hitl.webhooks.list_deliveries(endpoint.id, limit=2)
        assert len(page.data) == 2 and page.has_more
        rest = hitl.webhooks.list_deliveries(endpoint.id, starting_after=page.next_starting_after)
        assert len(rest.data) == 1 and not rest.has_more
        hitl.webhooks.update(endpoint.id, active=False)
        statuses = {d.status for d in hitl.webhooks.list_deliveries(endpoint.id).data}
        assert statuses == {"failed"}
        assert hitl.webhooks.claim() == []
        hitl.webhooks.delete(endpoint.id)
        with pytest.raises(NotFoundError):
            hitl.webhooks.list_deliveries(endpoint.id)

    # -- SPEC 10: errors -------------------------------------------------------------------
    def test_error_tree(self) -> None:
        assert issubclass(ValidationError, HitlError) and issubclass(ValidationError, ValueError)
        assert issubclass(NotFoundError, HitlError) and issubclass(NotFoundError, LookupError)
        assert issubclass(ConflictError, HitlError)
        error = ValidationError("invalid_request", "bad")
        assert (error.status, error.code) == (422, "invalid_request")

    @pytest.mark.parametrize(
        "bad", [None, 5, 3.5, ["x"], {"a": 1}, b"run", object(), 10**400, float("nan")]
    )
    def test_wrong_types_never_escape_as_other_errors(self, hitl: hitl_core.Hitl, bad: Any) -> None:
        run = self.approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("a")
        calls: list[Callable[[], Any]] = [
            lambda: hitl.runs.get(bad),
            lambda: hitl.agent(bad),
            lambda: hitl.runs.permissions(bad),
            lambda: hitl.runs.cancel(bad),
            lambda: hitl.runs.answer(run.id, answers=bad),
            lambda: hitl.runs.answer(run.id, answers={"q": "a"}, request_id=bad),
            lambda: hitl.runs.approve(run.id, request_id=bad),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id, remember=bad),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id, reason=bad),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id, actor=bad),
            lambda: hitl.runs.approve(run.id, request_id=gate.request_id, decision=bad),
            lambda: hitl.runs.update_permission_mode(run.id, permission_mode=bad),
            lambda: hitl.runs.list(user_id=bad),
            lambda: hitl.runs.list(status=bad),
            lambda: hitl.runs.list(limit=bad),
            lambda: hitl.runs.list(starting_after=bad),
            lambda: hitl.runs.create(metadata=bad),
            lambda: hitl.runs.create(user_id=bad),
            lambda: hitl.agent(run.id).result(bad),
            lambda: hitl.agent(run.id).fail(bad),
            lambda: hitl.agent(run.id).propose_plan(bad),
            lambda: hitl.permissions.create(tool="x", user_id=bad),
            lambda: hitl.permissions.delete(bad),
            lambda: hitl.permissions.list(starting_after=bad),
            lambda: hitl.tasks.get(bad),
            lambda: hitl.tasks.create(name=bad),
            lambda: hitl.events.list(after=bad),
            lambda: hitl.events.list(run_id=bad),
            lambda: hitl.events.list(limit=bad),
        ]
        for call in calls:  # each either works or is refused with nothing changed
            before = snapshot(hitl)
            try:
                call()
            except HitlError as error:
                assert error.status in (404, 409, 422), error
                assert snapshot(hitl) == before, error

    def test_text_without_a_utf8_form_is_refused_by_every_store(self, hitl: hitl_core.Hitl) -> None:
        bad = "caf\udce9"  # a lone surrogate: no UTF-8 form, so no store could keep it
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("invalid_config", lambda: hitl.runs.create(metadata={"note": bad})),
            ("invalid_config", lambda: hitl.runs.create(user_id=bad)),
            ("invalid_request", lambda: agent.request_tool(bad)),
            ("invalid_request", lambda: agent.request_tool("x", {bad: 1})),
            ("invalid_request", lambda: agent.ask([dict(QUESTION, header=bad)])),
            ("invalid_request", lambda: hitl.permissions.create(tool=bad)),
        ]
        for code, call in calls:
            refused(hitl, ValidationError, code, call)
        agent.ask([QUESTION])
        refused(
            hitl,
            ValidationError,
            "invalid_answers",
            lambda: hitl.runs.answer(run.id, answers={QUESTION["question"]: bad}),
        )

    def test_odd_json_is_refused_not_a_crash(self, hitl: hitl_core.Hitl) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        deep: Any = []
        for _ in range(5000):
            deep = [deep]
        run = self.approval_run(hitl)
        for value in (loop, deep, {"n": 10**5000}, {"n": 2**63}):
            refused(
                hitl,
                ValidationError,
                "invalid_config",
                lambda v=value: hitl.runs.create(metadata=v if isinstance(v, dict) else {"v": v}),
            )
            refused(
                hitl,
                ValidationError,
                "invalid_request",
                lambda v=value: hitl.agent(run.id).request_tool("x", {"v": v}),
            )
        refused(
            hitl, ValidationError, "invalid_config", lambda: hitl.runs.create(input_timeout=10**400)
        )
        assert hitl.runs.create(metadata={"n": 2**63 - 1}).metadata == {"n": 2**63 - 1}

    def test_failing_with_any_exception_works_in_every_store(self, hitl: hitl_core.Hitl) -> None:
        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        for error, expected in (
            (OSError("cannot open caf\udce9.txt"), "OSError: cannot open caf\\udce9.txt"),
            (Unprintable(), "Unprintable: <unprintable>"),
            (KeyError(), "KeyError"),
        ):
            run = hitl.runs.create()
            assert hitl.agent(run.id).fail(error).error == expected
            assert hitl.runs.get(run.id).error == expected

    # -- SPEC 11: records and entry points -------------------------------------------------
    def test_records_are_immutable_values(self, hitl: hitl_core.Hitl) -> None:
        metadata: dict[str, Any] = {"tags": ["a"]}
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", metadata=metadata
        )
        metadata["tags"].append("changed")
        assert hitl.runs.get(run.id).metadata == {"tags": ["a"]}
        handed = hitl.runs.get(run.id).metadata
        assert handed is not None
        handed["tags"].append("again")
        assert hitl.runs.get(run.id).metadata == {"tags": ["a"]}
        arguments: dict[str, Any] = {"to": ["x"]}
        gate = hitl.agent(run.id).request_tool("mail", arguments)
        arguments["to"].append("y")
        request = hitl.agent(run.id).result(gate.request_id)
        request.tool_input["to"].append("z")
        assert hitl.agent(run.id).result(gate.request_id).tool_input == {"to": ["x"]}
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            run.status = RunStatus.FAILED
        assert type(run.human_in_the_loop) is bool and type(request.remember) is bool
        events = hitl.events.list()
        events[0].data["changed"] = True
        assert "changed" not in hitl.events.list()[0].data

    def test_ids_are_unique_and_not_sequential(self, hitl: hitl_core.Hitl) -> None:
        runs = [hitl.runs.create() for _ in range(20)]
        ids = [run.id for run in runs]
        assert len(set(ids)) == 20
        assert all(len(run_id) >= 20 for run_id in ids)
        # random ids are not in creation order: 20 sorted by chance is a 2 in 20! event
        rises = sum(a < b for a, b in itertools.pairwise(ids))
        assert rises not in (0, len(ids) - 1)

    def test_runs_list(self, hitl: hitl_core.Hitl) -> None:
        a = hitl.runs.create(user_id="u1")
        b = self.approval_run(hitl, user_id="u2")
        c = hitl.runs.create(user_id="u1")
        hitl.agent(b.id).request_tool("x")
        assert [r.id for r in hitl.runs.list().data] == [a.id, b.id, c.id]
        assert [r.id for r in hitl.runs.list(user_id="u1").data] == [a.id, c.id]
        assert [r.id for r in hitl.runs.list(status="awaiting_approval").data] == [b.id]
        page = hitl.runs.list(limit=1, starting_after=a.id)
        assert [r.id for r in page.data] == [b.id] and page.has_more
        refused(hitl, ValidationError, "invalid_request", lambda: hitl.runs.list(status="paused"))
        refused(
            hitl, ValidationError, "invalid_cursor", lambda: hitl.runs.list(starting_after="run_x")
        )

    def test_get_unknown_run(self, hitl: hitl_core.Hitl) -> None:
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.runs.get("run_x"))
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.agent("run_x"))
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.runs.permissions("run_x"))
        run = hitl.runs.create()
        refused(hitl, NotFoundError, "gate_not_found", lambda: hitl.agent(run.id).result("req_x"))

    def test_context_manager_closes(self, store_url: str, clock: ManualClock) -> None:
        with hitl_core.connect(store_url, clock=clock) as engine:
            engine.runs.create()
        with pytest.raises(ConflictError) as caught:
            engine.runs.create()
        assert caught.value.code == "closed"
