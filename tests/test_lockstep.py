"""Lock-step: hypothesis drives the same random program through two engines with equal
ManualClocks and id sources, and every step must give equal results (records, refusals
with their codes, events): a memory engine against a SQLite engine on a real file, and
the synchronous engine against the asyncio one (`hitl_core.aio`); memory against
PostgreSQL is in test_postgres_lockstep.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

import hitl_core
import hitl_core.aio
from hitl_core import HitlError
from hitl_core.testing import strategies as hs
from hitl_core.testing.bridge import EventLoopThread, bridged
from hitl_core.testing.helpers import QUESTION, counter_ids, snapshot

USERS = (None, "cust_1", "cust_2")
TOOLS = st.sampled_from(["gmail.send", "slack.post", "db.query"])


class LockStepMachine(RuleBasedStateMachine):
    runs = Bundle("runs")
    tool_requests = Bundle("tool_requests")
    asks = Bundle("asks")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clocks = [hitl_core.ManualClock(start=0.0), hitl_core.ManualClock(start=0.0)]
        self.created = 0
        self.engines: list[Any] = self.open_engines()

    def open_engines(self) -> list[Any]:
        urls = ["memory://", f"sqlite:///{Path(self.tmp.name) / 'h.db'}?synchronous=NORMAL"]
        return [
            hitl_core.connect(url, clock=clock, ids=counter_ids())
            for url, clock in zip(urls, self.clocks, strict=True)
        ]

    def teardown(self) -> None:
        for engine in self.engines:
            engine.close()
        self.tmp.cleanup()

    def both(self, call: Any) -> tuple[Any, ...]:
        outcomes: list[tuple[Any, ...]] = []
        for engine in self.engines:
            try:
                outcomes.append(("ok", call(engine)))
            except HitlError as error:
                outcomes.append(("error", type(error).__name__, error.code))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0]

    @initialize(
        target=runs, mode=st.sampled_from(["approval", "plan"]), user=st.sampled_from(USERS)
    )
    def interactive(self, mode: str, user: str | None) -> str:
        return self.create(  # type: ignore[no-any-return]
            {
                "human_in_the_loop": True,
                "permission_mode": mode,
                "user_id": user,
                "input_timeout": 30.0,
            }
        )

    @precondition(lambda self: self.created < 6)
    @rule(target=runs, config=hs.configs())
    def create(self, config: dict[str, Any]) -> str:
        self.created += 1
        out = self.both(lambda e: e.runs.create(**config))
        return out[1].id if out[0] == "ok" else "run_missing"

    @rule(target=tool_requests, run_id=runs, tool=TOOLS, safe=st.sampled_from([False] * 3 + [True]))
    def request_tool(self, run_id: str, tool: str, safe: bool) -> Any:
        out = self.both(lambda e: e.agent(run_id).request_tool(tool, {"n": 1}, safe=safe))
        request_id = out[1].request_id if out[0] == "ok" else None
        return multiple((run_id, request_id)) if request_id else multiple()

    @rule(target=asks, run_id=runs)
    def ask(self, run_id: str) -> Any:
        out = self.both(lambda e: e.agent(run_id).ask([QUESTION]))
        return multiple((run_id, out[1].request_id)) if out[0] == "ok" else multiple()

    @rule(target=asks, run_id=runs)
    def propose(self, run_id: str) -> Any:
        out = self.both(lambda e: e.agent(run_id).propose_plan("the plan"))
        return multiple((run_id, out[1].request_id)) if out[0] == "ok" else multiple()

    @rule(
        target_=tool_requests,
        decision=st.sampled_from(["allow", "deny", "allow", "deny", "maybe"]),
        remember=st.booleans(),
    )
    def approve(self, target_: tuple[str, str], decision: str, remember: bool) -> None:
        run_id, request_id = target_
        self.both(
            lambda e: e.runs.approve(
                run_id, request_id=request_id, decision=decision, remember=remember
            )
        )

    @rule(
        target_=asks,
        answer=st.sampled_from(["SQLite", "Approve", "feedback", ""]),
        targeted=st.booleans(),
    )
    def answer(self, target_: tuple[str, str], answer: str, targeted: bool) -> None:
        run_id, request_id = target_
        answers = {QUESTION["question"]: answer, "Plan Approval": answer}

        def call(engine: hitl_core.Hitl) -> Any:
            request = engine.agent(run_id).result(request_id)
            mine = {
                k: v
                for k, v in answers.items()
                if (k == "Plan Approval") == request.is_plan_approval
            }
            return engine.runs.answer(
                run_id, answers=mine, request_id=request_id if targeted else None
            )

        self.both(call)

    @rule(run_id=runs, mode=hs.modes)
    def switch(self, run_id: str, mode: str) -> None:
        self.both(lambda e: e.runs.update_permission_mode(run_id, permission_mode=mode))

    @rule(run_id=consumes(runs), how=st.sampled_from(["complete", "fail", "cancel"]))
    def end(self, run_id: str, how: str) -> None:
        calls = {
            "complete": lambda e: e.agent(run_id).complete({"ok": 1}),
            "fail": lambda e: e.agent(run_id).fail("boom"),
            "cancel": lambda e: e.runs.cancel(run_id),
        }
        self.both(calls[how])

    @rule(
        run_id=runs,
        worker=st.sampled_from(["w1", "w2"]),
        then=st.sampled_from(["", "renew", "release"]),
    )
    def lease(self, run_id: str, worker: str, then: str) -> None:
        out = self.both(lambda e: e.runs.claim(run_id, worker=worker, seconds=20.0))
        if out[0] == "ok" and then:
            lease = out[1]
            self.both(lambda e: getattr(e.runs, then)(lease))

    @rule(run_id=runs, key=st.sampled_from(["k1", "k2"]), tool=TOOLS)
    def keyed(self, run_id: str, key: str, tool: str) -> None:
        self.both(lambda e: e.agent(run_id).request_tool(tool, key=key))

    @rule(user=st.sampled_from(USERS), tool=hs.policy_tools)
    def policy(self, user: str | None, tool: str) -> None:
        self.both(lambda e: e.permissions.create(tool=tool, user_id=user))

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0, 100.0]), tick=st.booleans())
    def advance(self, seconds: float, tick: bool) -> None:
        for clock in self.clocks:
            clock.advance(seconds)
        if tick:
            self.both(lambda e: e.tick())

    @invariant()
    def stores_hold_the_same(self) -> None:
        self.both(lambda e: snapshot(e, USERS))


LockStepMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HITL_LOCKSTEP_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLockStep = LockStepMachine.TestCase


class AsyncLockStepMachine(LockStepMachine):
    """The synchronous engine against the asyncio one, both on memory stores."""

    def open_engines(self) -> list[Any]:
        self.loop_thread = EventLoopThread()
        sync = hitl_core.connect("memory://", clock=self.clocks[0], ids=counter_ids())
        engine = hitl_core.aio.connect("memory://", clock=self.clocks[1], ids=counter_ids())
        return [sync, bridged(engine, self.loop_thread)]

    def teardown(self) -> None:
        super().teardown()
        self.loop_thread.stop()


AsyncLockStepMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HITL_LOCKSTEP_EXAMPLES", "30")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAsyncLockStep = AsyncLockStepMachine.TestCase
