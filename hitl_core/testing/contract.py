"""The store contract suite: every promise of SPEC 2-14 written once against the public
API, and the store port's own promises (all-or-nothing transactions, compare-and-set,
cascades, order and cursors, several engines on one store, reopening) written against
the port. An adapter's test module subclasses `HitlContract` and provides a `store_url`
fixture; pytest then runs the whole suite against that store.

    class TestMyStore(HitlContract):
        @pytest.fixture
        def store_url(self, tmp_path):
            return f"mystore://{tmp_path}/db"

`store_factory` opens the store again on the same data (by default: the URL once more).
A store whose URL gives a fresh store each time (like `memory://`) overrides it to hand
out one shared object and sets `durable = False`, which skips the reopening tests."""

from __future__ import annotations

import itertools
import threading
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

from ..adapter import (
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    Store,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
    open_store,
)
from .helpers import QUESTION, snapshot, two_questions

__all__ = ["HitlContract", "refused", "within"]

START = 1000.0


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`, made in a thread: its result, or a test failure if it has not returned
    after `seconds` of real time (a wait that never ends must not hang the suite)."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as error:  # handed to the test's thread
            outcome.append((False, error))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        pytest.fail(f"still waiting after {seconds} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


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

    durable = True
    """Whether a store opened again by `store_factory` holds what was committed before."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> Iterator[Callable[[], Store]]:
        """Open the store under test again, on the same data; each is closed at the end."""
        opened: list[Store] = []

        def factory() -> Store:
            store = open_store(store_url)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            store.close()

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(start=START)

    def open_engine(self, store: str | Store, **options: Any) -> hitl_core.Hitl:
        """The engine the tests use on `store` (a URL or a Store): `hitl_core.connect`.
        A subclass may hand out another face of the engine (the asyncio one, bridged)."""
        return hitl_core.connect(store, **options)

    @pytest.fixture
    def hitl(self, store_url: str, clock: ManualClock) -> Iterator[hitl_core.Hitl]:
        engine = self.open_engine(store_url, clock=clock)
        yield engine
        engine.close()

    @pytest.fixture
    def connect(self, store_url: str, clock: ManualClock) -> Iterator[Callable[..., Any]]:
        """Open more engines on the same store URL (closed at the end)."""
        opened: list[hitl_core.Hitl] = []

        def open_engine(**options: Any) -> hitl_core.Hitl:
            options.setdefault("clock", clock)
            engine = self.open_engine(store_url, **options)
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

    def test_plain_text_with_a_nul_is_refused_by_every_store(self, hitl: hitl_core.Hitl) -> None:
        """PostgreSQL's text cannot hold NUL, so no store takes it in a name or a reason;
        inside JSON data (arguments, metadata) it is an escape every store keeps."""
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        gate = agent.request_tool("deploy")
        for code, call in (
            ("invalid_config", lambda: hitl.runs.create(user_id="cust\x00")),
            ("invalid_request", lambda: agent.request_tool("nul\x00tool")),
            ("invalid_request", lambda: hitl.permissions.create(tool="a\x00*")),
            (
                "invalid_request",
                lambda: hitl.runs.approve(run.id, request_id=gate.request_id, reason="a\x00"),
            ),
        ):
            error = refused(hitl, ValidationError, code, call)
            assert "NUL" in error.message
        kept = hitl.runs.create(metadata={"k": "nul\x00"})
        assert hitl.runs.get(kept.id).metadata == {"k": "nul\x00"}

    def test_webhook_ids_are_checked_like_every_id(self, hitl: hitl_core.Hitl) -> None:
        for bad in (5, "w" * 1000):
            for call in (
                lambda b=bad: hitl.webhooks.get(b),
                lambda b=bad: hitl.webhooks.delete(b),
                lambda b=bad: hitl.webhooks.update(b, active=False),
                lambda b=bad: hitl.webhooks.list_deliveries(b),
                lambda b=bad: hitl.webhooks.record(b, attempt=1),
            ):
                refused(hitl, ValidationError, "invalid_request", call)

    def test_an_exception_holding_a_nul_still_fails_the_run(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        hitl.agent(run.id).request_tool("t")
        failed = hitl.agent(run.id).fail(ValueError("bad header b'\x89PNG\x00'"))
        assert failed.status == "failed" and "\x00" not in (failed.error or "")
        assert "PNG" in (hitl.runs.get(run.id).error or "")

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
        with self.open_engine(store_url, clock=clock) as engine:
            engine.runs.create()
        with pytest.raises(ConflictError) as caught:
            engine.runs.create()
        assert caught.value.code == "closed"

    # -- runs.create(idempotency_key=...) --------------------------------------------------
    def test_idempotent_creation(self, hitl: hitl_core.Hitl) -> None:
        first = hitl.runs.create(
            user_id="alice", metadata={"a": 1, "b": {"x": 1, "y": 2}}, idempotency_key="k1"
        )
        again = hitl.runs.create(  # the same metadata, built in another order
            user_id="alice", metadata={"b": {"y": 2, "x": 1}, "a": 1}, idempotency_key="k1"
        )
        assert again == first
        assert [r.id for r in hitl.runs.list().data] == [first.id]
        for changed in ({"user_id": "bob"}, {"metadata": {"a": 2}}, {"human_in_the_loop": True}):
            options: dict[str, Any] = {
                "user_id": "alice",
                "metadata": {"a": 1, "b": {"x": 1, "y": 2}},
                **changed,
            }
            refused(
                hitl,
                ValidationError,
                "idempotency_key_reused",
                lambda o=options: hitl.runs.create(idempotency_key="k1", **o),
                users=(None, "alice", "bob"),
            )
        assert hitl.runs.create(idempotency_key="k2").id != first.id

    def test_idempotent_task_runs(self, hitl: hitl_core.Hitl) -> None:
        task = hitl.tasks.create(name="report", user_id="alice")
        first = hitl.tasks.run(task.id, checkpoint={"step": 0}, idempotency_key="t1")
        assert (first.task_id, first.user_id, first.checkpoint) == (task.id, "alice", {"step": 0})
        again = hitl.tasks.run(task.id, checkpoint={"step": 0}, idempotency_key="t1")
        assert again == first
        other = hitl.tasks.create(name="other", user_id="alice")
        for call in (
            lambda: hitl.tasks.run(task.id, checkpoint={"step": 1}, idempotency_key="t1"),
            lambda: hitl.tasks.run(other.id, checkpoint={"step": 0}, idempotency_key="t1"),
            lambda: hitl.tasks.run(task.id, idempotency_key="t1", metadata={"a": 1}),
            lambda: hitl.runs.create(user_id="alice", checkpoint={"step": 0}, idempotency_key="t1"),
        ):
            refused(hitl, ValidationError, "idempotency_key_reused", call, users=(None, "alice"))
        assert [r.id for r in hitl.runs.list(user_id="alice").data] == [first.id]
        refused(
            hitl,
            ValidationError,
            "invalid_request",
            lambda: hitl.tasks.run(task.id, checkpoint={1: 2}),
        )

    # -- leases ----------------------------------------------------------------------------
    def test_a_lease_fences_the_agent_side(self, hitl: hitl_core.Hitl, clock: ManualClock) -> None:
        run = self.approval_run(hitl)
        lease = hitl.runs.claim(run.id, worker="host-a", seconds=30)
        assert (lease.run_id, lease.worker, lease.expires_at) == (run.id, "host-a", START + 30)
        assert hitl.runs.get(run.id).lease_at(clock.now()) == lease
        mine = hitl.agent(run.id, lease=lease)
        gate = mine.request_tool("deploy")
        assert gate.status == "pending"
        # while it holds, nobody else acts as the agent, nor claims the run
        refused(hitl, ConflictError, "run_leased", lambda: hitl.agent(run.id).fail("x"))
        refused(hitl, ConflictError, "run_leased", lambda: hitl.runs.claim(run.id, worker="host-b"))
        # a person still decides
        hitl.runs.approve(run.id, request_id=gate.request_id)
        clock.advance(31)  # the lease lapses: another worker takes the run over
        assert [r.id for r in hitl.runs.claimable()] == [run.id]
        taken = hitl.runs.claim(run.id, worker="host-b")
        assert taken.token > lease.token
        refused(hitl, ConflictError, "lease_lost", lambda: mine.request_tool("again"))
        refused(hitl, ConflictError, "lease_lost", lambda: hitl.runs.renew(lease))
        assert hitl.runs.release(lease) is False  # an old lease changes nothing
        assert hitl.runs.claimable() == []
        renewed = hitl.runs.renew(taken, seconds=60)
        assert renewed.expires_at == clock.now() + 60 and renewed.token == taken.token
        assert hitl.agent(run.id, lease=renewed).complete().status == "completed"
        assert hitl.runs.get(run.id).lease_at(clock.now()) is None
        refused(hitl, ConflictError, "run_not_active", lambda: hitl.runs.claim(run.id, worker="c"))

    def test_claimable_runs_are_those_no_live_worker_holds(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        new = hitl.runs.create()
        held = self.approval_run(hitl)
        waiting = self.approval_run(hitl)
        lease = hitl.runs.claim(held.id, worker="w", seconds=10)
        gate = hitl.agent(waiting.id).request_tool("t")
        assert [r.id for r in hitl.runs.claimable()] == [new.id]  # a person is awaited
        hitl.runs.approve(waiting.id, request_id=gate.request_id)  # decided, no worker
        assert [r.id for r in hitl.runs.claimable()] == [new.id, waiting.id]
        clock.advance(11)  # held's worker stopped renewing
        claimable = [r.id for r in hitl.runs.claimable()]
        assert sorted(claimable) == sorted([new.id, waiting.id, held.id])
        assert claimable[-1] == held.id  # lapsed last: the longest unattended come first
        assert hitl.runs.release(lease) is True
        hitl.runs.cancel(new.id)
        assert new.id not in [r.id for r in hitl.runs.claimable(limit=1000)]
        assert len(hitl.runs.claimable(limit=1)) == 1

    def test_checkpoints(self, hitl: hitl_core.Hitl) -> None:
        run = hitl.runs.create(checkpoint={"step": 0})
        assert run.checkpoint == {"step": 0}
        lease = hitl.runs.claim(run.id, worker="w")
        agent = hitl.agent(run.id, lease=lease)
        saved = agent.save_checkpoint({"step": 3, "notes": ["a"]})
        assert saved.checkpoint == {"step": 3, "notes": ["a"]}
        assert hitl.runs.get(run.id).checkpoint == {"step": 3, "notes": ["a"]}
        refused(hitl, ConflictError, "run_leased", lambda: hitl.agent(run.id).save_checkpoint(1))
        refused(
            hitl, ValidationError, "invalid_request", lambda: agent.save_checkpoint({1: object()})
        )

    def test_an_ended_run_is_refused_before_any_argument_is_looked_at(
        self, hitl: hitl_core.Hitl
    ) -> None:
        run = self.approval_run(hitl)
        hitl.runs.cancel(run.id)
        agent = hitl.agent(run.id)
        for call in (
            lambda: agent.ask([QUESTION], key=""),
            lambda: agent.propose_plan("p", key=""),
            lambda: agent.request_tool("t", key=""),
            lambda: hitl.runs.claim(run.id, worker=""),
            lambda: hitl.runs.claim(run.id, worker="w", seconds=0),
        ):
            refused(hitl, ConflictError, "run_not_active", call)
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.runs.claim("run_x", worker=""))

    # -- keyed requests: a replaying host opens nothing twice -----------------------------
    def test_a_key_names_one_request_per_run(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        agent = hitl.agent(run.id)
        first = agent.request_tool("deploy", {"v": 1}, key="step-1")
        again = agent.request_tool("deploy", {"v": 1}, key="step-1")
        assert again == first and first.status == "pending"
        assert len(hitl.runs.permissions(run.id)) == 1
        hitl.runs.approve(run.id, request_id=first.request_id, reason="ok")
        replayed = agent.request_tool("deploy", {"v": 1}, key="step-1")
        assert (replayed.status, replayed.source, replayed.request_id, replayed.reason) == (
            "allowed",
            "human",
            first.request_id,
            "ok",
        )
        refused(
            hitl, ValidationError, "key_reused", lambda: agent.request_tool("other", key="step-1")
        )
        refused(hitl, ValidationError, "key_reused", lambda: agent.ask([QUESTION], key="step-1"))
        question = agent.ask([QUESTION], key="step-2")
        assert agent.ask([QUESTION], key="step-2") == question
        other = self.approval_run(hitl)
        assert hitl.agent(other.id).request_tool("deploy", key="step-1").request_id != (
            first.request_id
        )

    # -- prune -----------------------------------------------------------------------------
    def test_prune_deletes_ended_runs_and_what_belongs_to_them(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/h", events=["run.completed"])
        old = self.approval_run(hitl, idempotency_key="old")
        gate = hitl.agent(old.id).request_tool("t")
        hitl.runs.approve(old.id, request_id=gate.request_id)
        hitl.agent(old.id).complete()
        hitl.webhooks.enqueue()
        (sent,) = hitl.webhooks.claim()
        hitl.webhooks.record(sent.delivery.id, attempt=1, status_code=200)
        cancelled = hitl.runs.create()
        hitl.runs.cancel(cancelled.id)  # its events are not fanned out yet
        clock.advance(100)
        active = self.approval_run(hitl)
        recent = hitl.runs.create()
        hitl.agent(recent.id).complete()
        assert hitl.runs.prune(before=clock.now() - 50) == 2
        assert [r.id for r in hitl.runs.list().data] == [active.id, recent.id]
        refused(hitl, NotFoundError, "run_not_found", lambda: hitl.runs.permissions(old.id))
        assert hitl.events.list(run_id=old.id) == []
        assert [e.run_id for e in hitl.events.list()] == [active.id, recent.id, recent.id]
        # the key is gone with its run: it may be used again
        assert hitl.runs.create(idempotency_key="old").id != old.id
        # delivered deliveries went with their run; the recent run's completion is still due
        hitl.webhooks.enqueue()
        log = hitl.webhooks.list_deliveries(endpoint.id).data
        assert [(d.run_id, d.status) for d in log] == [(recent.id, "pending")]
        assert hitl.runs.prune(before=clock.now() - 50) == 0
        # a delivery still pending when its run is pruned is sent, then goes too
        clock.advance(100)
        assert hitl.runs.prune(before=clock.now()) == 1  # recent, its delivery pending
        (due,) = hitl.webhooks.claim()
        assert due.delivery.run_id == recent.id
        hitl.webhooks.record(due.delivery.id, attempt=1, status_code=200)
        assert hitl.webhooks.list_deliveries(endpoint.id).data == []
        refused(hitl, ValidationError, "invalid_request", lambda: hitl.runs.prune(before="x"))

    # -- SPEC 14: waiting ------------------------------------------------------------------
    def test_wait_returns_at_once_for_a_decided_request(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("t")
        hitl.runs.approve(run.id, request_id=gate.request_id)
        assert hitl.agent(run.id).wait(gate.request_id).status == "allowed"
        assert hitl.agent(run.id).wait(gate.request_id, timeout=0).status == "allowed"
        refused(hitl, NotFoundError, "gate_not_found", lambda: hitl.agent(run.id).wait("req_x"))
        refused(
            hitl,
            ValidationError,
            "invalid_request",
            lambda: hitl.agent(run.id).wait(gate.request_id, timeout=-1),
        )

    def test_wait_ends_on_a_decision_from_another_thread(
        self, store_factory: Callable[[], Store], clock: ManualClock
    ) -> None:
        agent_side = self.open_engine(store_factory(), clock=clock)
        person_side = self.open_engine(store_factory(), clock=clock)
        run = self.approval_run(agent_side)
        gate = agent_side.agent(run.id).request_tool("deploy")
        assert gate.request_id is not None
        threading.Timer(
            0.2, lambda: person_side.runs.approve(run.id, request_id=gate.request_id)
        ).start()
        done = within(30, lambda: agent_side.agent(run.id).wait(gate.request_id))
        assert done.status == "allowed"

    def test_wait_ends_when_a_manual_clock_passes_the_deadline_or_the_timeout(
        self, hitl: hitl_core.Hitl, clock: ManualClock
    ) -> None:
        run = self.approval_run(hitl, input_timeout=30.0)
        gate = hitl.agent(run.id).request_tool("deploy")
        agent = hitl.agent(run.id)
        threading.Timer(0.2, lambda: clock.advance(10)).start()
        waited = within(30, lambda: agent.wait(gate.request_id, timeout=5))
        assert waited.status == "pending" and clock.now() == START + 10
        threading.Timer(0.2, lambda: clock.advance(25)).start()
        waited = within(30, lambda: agent.wait(gate.request_id))  # until the deadline
        assert waited.status == "pending" and hitl.runs.get(run.id).suspended is True
        assert within(30, lambda: agent.wait(gate.request_id)).status == "pending"  # at once

    def test_events_wait_follows_the_log(
        self, store_factory: Callable[[], Store], clock: ManualClock
    ) -> None:
        follower = self.open_engine(store_factory(), clock=clock)
        writer = self.open_engine(store_factory(), clock=clock)
        assert follower.events.last_id() is None
        first = writer.runs.create()
        start = follower.events.last_id()
        assert start is not None and follower.events.wait(after=None)[0].run_id == first.id
        threading.Timer(0.2, writer.runs.create).start()
        found = within(30, lambda: follower.events.wait(after=start))
        assert [e.type for e in found] == ["run.started"] and found[0].run_id != first.id
        other = writer.runs.create()
        mine = within(30, lambda: follower.events.wait(after=found[-1].id, run_id=other.id))
        assert [e.run_id for e in mine] == [other.id]
        threading.Timer(0.2, lambda: clock.advance(5)).start()
        quiet = within(30, lambda: follower.events.wait(after=mine[-1].id, timeout=3))
        assert quiet == []

    def test_wait_ends_when_the_run_ends(self, hitl: hitl_core.Hitl) -> None:
        run = self.approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("deploy")
        threading.Timer(0.2, lambda: hitl.runs.cancel(run.id)).start()
        waited = within(30, lambda: hitl.agent(run.id).wait(gate.request_id))
        assert (waited.status, waited.source) == ("cancelled", "run_ended")

    # -- the store port's own promises -----------------------------------------------------
    @staticmethod
    def port_run(run_id: str, **changes: Any) -> Run:
        values: dict[str, Any] = {
            "id": run_id,
            "status": "running",
            "human_in_the_loop": True,
            "permission_mode": "approval",
            "user_id": None,
            "task_id": None,
            "metadata": None,
            "input_timeout": 10.0,
            "created_at": START,
            "updated_at": START,
            **changes,
        }
        return Run(**values)

    @staticmethod
    def port_request(request_id: str, run_id: str, status: str = "pending") -> PermissionRequest:
        return PermissionRequest(
            request_id=request_id,
            run_id=run_id,
            kind="tool",
            tool_name="t",
            tool_input={"a": [1]},
            status=RequestStatus(status),
            created_at=START,
        )

    @staticmethod
    def port_delivery(delivery_id: str, run_id: str, status: str, **more: Any) -> WebhookDelivery:
        values: dict[str, Any] = {
            "id": delivery_id,
            "endpoint_id": "whk_1",
            "event_id": f"evt_{run_id}",
            "event_type": "run.started",
            "run_id": run_id,
            "payload": "{}",
            "status": status,
            "created_at": START,
            "updated_at": START,
            **more,
        }
        return WebhookDelivery(**values)

    def fill(self, store: Store, run_id: str) -> None:
        """One of every record, all belonging to `run_id` where they can."""
        with store.transaction(write=True) as tx:
            tx.insert_run(self.port_run(run_id))
            tx.save_requests([self.port_request(f"req_{run_id}", run_id)])
            tx.append_events(
                [Event(id=f"evt_{run_id}", type="run.started", run_id=run_id, created_at=START)]
            )
            tx.insert_idempotency_key(
                IdempotencyKey(key=f"key_{run_id}", run_id=run_id, fingerprint="f", created_at=1.0)
            )
            if tx.get_endpoint("whk_1") is None:
                tx.insert_endpoint(
                    WebhookEndpoint(
                        id="whk_1",
                        url="http://127.0.0.1:9/",
                        events=("run.started",),
                        secret="s",
                        active=True,
                        created_at=START,
                        updated_at=START,
                    )
                )
            tx.save_deliveries(
                [
                    self.port_delivery(f"dlv_{run_id}_done", run_id, "delivered"),
                    self.port_delivery(f"dlv_{run_id}_due", run_id, "pending"),
                ]
            )

    @staticmethod
    def contents(store: Store, run_id: str) -> list[Any]:
        with store.transaction(write=False) as tx:
            return [
                tx.get_run(run_id),
                tx.list_requests(run_id),
                tx.list_events(after=None, run_id=run_id, limit=10),
                tx.get_idempotency_key(f"key_{run_id}"),
                tx.get_delivery(f"dlv_{run_id}_done"),
                tx.get_delivery(f"dlv_{run_id}_due"),
            ]

    def test_port_a_transaction_that_raises_leaves_nothing(
        self, store_factory: Callable[[], Store]
    ) -> None:
        store = store_factory()
        with pytest.raises(RuntimeError), store.transaction(write=True) as tx:
            tx.insert_run(self.port_run("run_a"))
            tx.save_requests([self.port_request("req_a", "run_a")])
            tx.insert_policy(
                PermissionPolicy(
                    id="pol_a", user_id=None, tool_name="t", source="api", created_at=1
                )
            )
            tx.insert_task(
                Task(
                    id="task_a",
                    name="n",
                    human_in_the_loop=None,
                    permission_mode=None,
                    user_id=None,
                    created_at=1.0,
                )
            )
            tx.set_cursor("webhooks", "start")
            assert tx.get_run("run_a") is not None  # writes are visible inside
            raise RuntimeError("the call failed halfway")
        with store.transaction(write=False) as tx:
            assert tx.get_run("run_a") is None
            assert tx.get_request("req_a") is None
            assert tx.get_policy("pol_a") is None and tx.find_policy(None, "t") is None
            assert tx.get_task("task_a") is None and tx.get_cursor("webhooks") is None
        self.fill(store, "run_b")  # the store still works
        with pytest.raises(RuntimeError), store.transaction(write=True) as tx:
            tx.update_run(attrs.evolve(self.port_run("run_b"), version=2, error="x"))
            tx.delete_runs(["run_b"])
            raise RuntimeError("again")
        kept = self.contents(store, "run_b")
        assert kept[0] == self.port_run("run_b") and all(item for item in kept[1:])

    def test_port_update_run_compares_the_version(self, store_factory: Callable[[], Store]) -> None:
        store = store_factory()
        with store.transaction(write=True) as tx:
            tx.insert_run(self.port_run("run_a"))
        stale = attrs.evolve(self.port_run("run_a"), version=3, error="stale")
        with pytest.raises(ConflictError) as caught, store.transaction(write=True) as tx:
            tx.update_run(stale)
        assert caught.value.code == "concurrent_update"
        with store.transaction(write=True) as tx:
            assert tx.get_run("run_a") == self.port_run("run_a")
            tx.update_run(attrs.evolve(self.port_run("run_a"), version=2, error="ok"))
        with store.transaction(write=False) as tx:
            found = tx.get_run("run_a")
            assert found is not None and (found.version, found.error) == (2, "ok")

    def test_port_deletions_cascade(self, store_factory: Callable[[], Store]) -> None:
        store = store_factory()
        self.fill(store, "run_a")
        self.fill(store, "run_b")
        with store.transaction(write=True) as tx:
            tx.delete_runs(["run_a"])
        run, requests, events, key, done, due = self.contents(store, "run_a")
        assert (run, requests, events, key, done) == (None, [], [], None, None)
        assert due is not None  # a delivery still pending is kept: it is sent all the same
        assert all(self.contents(store, "run_b"))
        with store.transaction(write=True) as tx:
            tx.delete_endpoint("whk_1")
        with store.transaction(write=False) as tx:
            assert tx.get_endpoint("whk_1") is None
            assert tx.get_delivery("dlv_run_b_due") is None
            assert tx.get_delivery("dlv_run_a_due") is None
            assert tx.due_deliveries(START + 1e9, 10) == []
            found = tx.list_deliveries("whk_1", status=None, limit=10, starting_after=None)
            assert found in (None, ([], False))

    def test_port_order_and_cursors(self, store_factory: Callable[[], Store]) -> None:
        store = store_factory()
        names = [f"run_{n}" for n in "cadb"]  # creation order is not id order
        with store.transaction(write=True) as tx:
            for index, name in enumerate(names):
                tx.insert_run(
                    self.port_run(
                        name,
                        user_id="u" if index % 2 else None,
                        deadline=START + 5,  # equal deadlines: creation order
                        lease_expires=START + (3 - index if index < 2 else 1),
                    )
                )
            tx.append_events(
                [
                    Event(id=f"evt_{n}", type="run.started", run_id=names[n % 4], created_at=1.0)
                    for n in range(8)
                ]
            )
        with store.transaction(write=False) as tx:
            page = tx.list_runs(user_id=None, status=None, limit=3, starting_after=None)
            assert page is not None and [r.id for r in page[0]] == names[:3] and page[1]
            page = tx.list_runs(user_id=None, status=None, limit=3, starting_after=names[2])
            assert page is not None and [r.id for r in page[0]] == names[3:] and not page[1]
            page = tx.list_runs(user_id="u", status="running", limit=5, starting_after=names[0])
            assert page is not None and [r.id for r in page[0]] == [names[1], names[3]]
            assert tx.list_runs(user_id=None, status=None, limit=1, starting_after="run_x") is None
            assert [r.id for r in tx.due_runs(START + 5, 10)] == names
            assert [r.id for r in tx.due_runs(START + 4, 10)] == []
            # claimable: lapsed leases by when they lapsed, ties in creation order
            assert [r.id for r in tx.claimable_runs(START + 3, 10)] == [
                names[2],
                names[3],
                names[1],
                names[0],
            ]
            assert [r.id for r in tx.claimable_runs(START + 1, 10)] == names[2:]
            events = tx.list_events(after="evt_2", run_id=None, limit=3)
            assert events is not None and [e.id for e in events] == ["evt_3", "evt_4", "evt_5"]
            events = tx.list_events(after="evt_2", run_id=names[1], limit=10)
            assert events is not None and [e.id for e in events] == ["evt_5"]
            assert tx.list_events(after="evt_x", run_id=None, limit=3) is None
            assert tx.last_event_id() == "evt_7"

    def test_port_ended_runs(self, store_factory: Callable[[], Store]) -> None:
        store = store_factory()
        with store.transaction(write=True) as tx:
            tx.insert_run(self.port_run("run_a", status="completed", updated_at=30.0))
            tx.insert_run(self.port_run("run_b", status="cancelled", updated_at=10.0))
            tx.insert_run(self.port_run("run_c", status="running", updated_at=5.0))
            tx.insert_run(self.port_run("run_d", status="failed", updated_at=20.0))
        with store.transaction(write=False) as tx:
            assert tx.ended_runs(30.0, 10) == ["run_b", "run_d"]
            assert tx.ended_runs(31.0, 2) == ["run_b", "run_d"]

    def test_two_engines_on_one_store_decide_one_request_once(
        self, store_factory: Callable[[], Store], clock: ManualClock
    ) -> None:
        engines = [self.open_engine(store_factory(), clock=clock) for _ in range(4)]
        for round_ in range(5):
            run = self.approval_run(engines[0])
            gate = engines[0].agent(run.id).request_tool(f"t{round_}")
            assert gate.request_id is not None
            outcomes = self.contend(engines, run.id, gate.request_id)
            winners = [o for o in outcomes if o[1] is True]
            assert len(winners) == 1, outcomes
            final = engines[1].agent(run.id).result(gate.request_id)
            assert final.decision == winners[0][0]
            for decision, outcome in outcomes:
                if outcome is not True:
                    expected = False if decision == final.decision else "gate_resolved_otherwise"
                    assert outcome == expected, outcomes
            events = engines[2].events.list(run_id=run.id)
            assert len([e for e in events if e.type == "request.resolved"]) == 1

    @staticmethod
    def contend(engines: list[hitl_core.Hitl], run_id: str, request_id: str) -> list[Any]:
        """Every engine decides the request at once (alternating allow and deny), each in
        its own thread; (decision, applied or error code) for each."""
        outcomes: list[Any] = []
        barrier = threading.Barrier(len(engines))

        def decide(engine: hitl_core.Hitl, decision: str) -> None:
            barrier.wait()
            try:
                result = engine.runs.approve(run_id, request_id=request_id, decision=decision)
                outcomes.append((decision, result.applied))
            except HitlError as error:
                outcomes.append((decision, error.code))

        threads = [
            threading.Thread(target=decide, args=(engine, "allow" if n % 2 else "deny"))
            for n, engine in enumerate(engines)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return outcomes

    def test_reopening_gives_back_what_was_committed(
        self, store_factory: Callable[[], Store], clock: ManualClock
    ) -> None:
        if not self.durable:
            pytest.skip("this store keeps nothing once closed")
        first = self.open_engine(store_factory(), clock=clock)
        run = self.approval_run(first, user_id="u", input_timeout=30.0)
        gate = first.agent(run.id).request_tool("deploy")
        first.permissions.create(tool="slack.*", user_id="u")
        before = snapshot(first, ("u",))
        first.close()
        again = self.open_engine(store_factory(), clock=clock)
        assert snapshot(again, ("u",)) == before
        clock.advance(30)  # the deadline kept counting from its stored time
        assert again.runs.get(run.id).suspended is True
        assert again.agent(run.id).request_tool("slack.post").source == "policy"
        assert again.runs.approve(run.id, request_id=gate.request_id).resumed is True
