"""`hitl demo`: a scripted agent and a scripted person through all six
human_in_the_loop x permission_mode combinations, printed as one timeline per run."""

from __future__ import annotations

import secrets
import time
from typing import Any

import hitl_core
from hitl_core import HitlError

__all__ = ["run_demo"]

QUESTION: dict[str, Any] = {
    "question": "Which report format do you want?",
    "header": "Format",
    "options": ["PDF", "Slides"],
    "multiSelect": False,
}


class Timeline:
    """Prints one run's story with times relative to its start."""

    def __init__(self, clock: hitl_core.ManualClock) -> None:
        self.clock = clock
        self.start = clock.now()

    def __call__(self, who: str, what: str, result: str = "") -> None:
        at = f"+{self.clock.now() - self.start:.0f}s"
        line = f"  {at:>6}  {who:<6} {what:<40}"
        print(line + (f" -> {result}" if result else ""))


def _opened(gate: hitl_core.ToolGate) -> str:
    """The id of the request a pending gate opened."""
    assert gate.request_id is not None, gate
    return gate.request_id


def _gate(gate: hitl_core.ToolGate) -> str:
    if gate.status == "pending":
        return f"pending ({gate.request_id}): the run awaits approval"
    return f"{gate.status} (source: {gate.source})"


def _status(hitl: hitl_core.Hitl, run_id: str) -> str:
    run = hitl.runs.get(run_id)
    return run.status.value + (", suspended" if run.suspended else "")


def _header(title: str, detail: str = "") -> None:
    print()
    print(f"== {title}" + (f"  [{detail}]" if detail else ""))


def run_demo(store: str | hitl_core.Store, shown: str | None = None) -> int:
    """Play the demo on `store` (a URL or a Store; `shown` names it) and print what
    happens."""
    clock = hitl_core.ManualClock(start=time.time())
    user = f"cust_demo_{secrets.token_hex(2)}"
    with hitl_core.connect(store, clock=clock) as hitl:
        print(f"hitl-core demo on {shown or store} (simulated time; customer {user})")
        print("The agent side calls hitl.agent(run_id); the person answers through hitl.runs.")
        hitl.permissions.create(tool="calendar.*", user_id=user)
        print(f"Pre-approved for {user}: calendar.* (permissions.create)")
        _autonomous(hitl, clock)
        for mode in ("approval", "plan"):
            _refused(hitl, mode)
        _questions_only(hitl, clock, user)
        _approval(hitl, clock, user)
        _plan(hitl, clock, user)
        _remembered_later(hitl, clock, user)
        print()
        print("Done. Every step above is stored, with its events, in the store.")
        print("Next: hitl runs list | hitl events | hitl simulate docs/scenarios/approval.toml")
    return 0


def _autonomous(hitl: hitl_core.Hitl, clock: hitl_core.ManualClock) -> None:
    _header("human_in_the_loop=False, permission_mode=autonomous", "the default")
    run = hitl.runs.create()
    say, agent = Timeline(clock), hitl.agent(run.id)
    say("host", "runs.create()", run.status.value)
    say("agent", "request_tool('shell.exec')", _gate(agent.request_tool("shell.exec")))
    try:
        agent.ask([QUESTION])
    except HitlError as error:
        say("agent", "ask([...])", f"refused {error.status} {error.code}")
    say("agent", "complete()", agent.complete().status.value)


def _refused(hitl: hitl_core.Hitl, mode: str) -> None:
    _header(f"human_in_the_loop=False, permission_mode={mode}", "not allowed")
    try:
        hitl.runs.create(human_in_the_loop=False, permission_mode=mode)
    except HitlError as error:
        print(
            f"  {'+0s':>6}  host   runs.create(...)"
            f"{'':<24} -> refused {error.status} {error.code}: {error.message}"
        )


def _questions_only(hitl: hitl_core.Hitl, clock: hitl_core.ManualClock, user: str) -> None:
    _header("human_in_the_loop=True, permission_mode=autonomous", "questions, no tool gates")
    run = hitl.runs.create(human_in_the_loop=True, user_id=user)
    say, agent = Timeline(clock), hitl.agent(run.id)
    question = agent.ask([QUESTION])
    say("agent", f"ask({QUESTION['question']!r})", _status(hitl, run.id))
    clock.advance(12)
    result = hitl.runs.answer(run.id, answers={QUESTION["question"]: "Slides"}, actor="alice")
    say("person", "answer('Slides')", f"{result.request.status.value}; run {_status(hitl, run.id)}")
    say("agent", "result(...)", f"answers {agent.result(question.request_id).answers}")
    say("agent", "request_tool('gmail.send')", _gate(agent.request_tool("gmail.send")))
    say("agent", "complete()", agent.complete().status.value)


def _approval(hitl: hitl_core.Hitl, clock: hitl_core.ManualClock, user: str) -> None:
    _header("human_in_the_loop=True, permission_mode=approval", "tool approval")
    run = hitl.runs.create(
        human_in_the_loop=True, permission_mode="approval", user_id=user, input_timeout=75.0
    )
    say, agent = Timeline(clock), hitl.agent(run.id)
    say(
        "agent",
        "request_tool('files.read', safe=True)",
        _gate(agent.request_tool("files.read", {"path": "q3.csv"}, safe=True)),
    )
    say("agent", "request_tool('calendar.create')", _gate(agent.request_tool("calendar.create")))
    gate = agent.request_tool("gmail.send", {"to": "cfo@example.com"})
    say("agent", "request_tool('gmail.send')", _gate(gate))
    clock.advance(20)
    decided = hitl.runs.approve(run.id, request_id=_opened(gate), remember=True, actor="alice")
    say(
        "person",
        "approve(gmail.send, remember=True)",
        f"{decided.request.status.value}; resumed={decided.resumed} (agent was waiting live)",
    )
    say("agent", "request_tool('gmail.send')", _gate(agent.request_tool("gmail.send")))
    risky = agent.request_tool("db.drop_table", {"table": "orders"})
    say("agent", "request_tool('db.drop_table')", _gate(risky))
    clock.advance(80)
    for event in hitl.tick():
        since = event.created_at - say.start
        say(
            "clock",
            "tick(): 80 s and no answer",
            f"{event.type} (at +{since:.0f}s): free the worker",
        )
    say("host", "runs.get()", _status(hitl, run.id))
    clock.advance(3600)
    denied = hitl.runs.approve(
        run.id,
        request_id=_opened(risky),
        decision="deny",
        reason="never drop production tables",
        actor="bob",
    )
    say(
        "person",
        "deny(db.drop_table) an hour later",
        f"{denied.request.status.value}; resumed={denied.resumed} (restart the agent)",
    )
    say("agent", "result(...)", f"reason: {agent.result(_opened(risky)).reason!r}")
    say("agent", "complete()", agent.complete().status.value)


def _plan(hitl: hitl_core.Hitl, clock: hitl_core.ManualClock, user: str) -> None:
    _header("human_in_the_loop=True, permission_mode=plan", "plan approval first")
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="plan", user_id=user)
    say, agent = Timeline(clock), hitl.agent(run.id)
    say("agent", "request_tool('crm.update')", _gate(agent.request_tool("crm.update")))
    first = agent.propose_plan("1. Export the leads\n2. Update the CRM")
    say("agent", "propose_plan(revision 1)", _status(hitl, run.id))
    clock.advance(30)
    hitl.runs.answer(run.id, answers={"Plan Approval": "Skip leads older than 2024"})
    feedback = agent.result(first.request_id)
    say("person", "answer(feedback)", f"{feedback.decision}: {feedback.reason!r}")
    agent.propose_plan("1. Export leads since 2024\n2. Update the CRM")
    say("agent", "propose_plan(revision 2)", _status(hitl, run.id))
    clock.advance(15)
    approved = hitl.runs.answer(run.id, answers={"Plan Approval": "Approve"})
    say("person", "answer('Approve')", f"{approved.request.decision}; run {_status(hitl, run.id)}")
    gate = agent.request_tool("crm.update", {"leads": 120})
    say("agent", "request_tool('crm.update')", _gate(gate))
    clock.advance(5)
    hitl.runs.approve(run.id, request_id=_opened(gate))
    say("person", "approve(crm.update)", _status(hitl, run.id))
    say("agent", "complete()", agent.complete().status.value)


def _remembered_later(hitl: hitl_core.Hitl, clock: hitl_core.ManualClock, user: str) -> None:
    _header(f"a later approval-mode run of {user}", "remembered across runs")
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval", user_id=user)
    say, agent = Timeline(clock), hitl.agent(run.id)
    say("agent", "request_tool('gmail.send')", _gate(agent.request_tool("gmail.send")))
    say("agent", "request_tool('db.drop_table')", _gate(agent.request_tool("db.drop_table")))
    hitl.runs.cancel(run.id)
    say("person", "runs.cancel()", _status(hitl, run.id))
    policies: list[Any] = hitl.permissions.list(user_id=user).data
    print("  policies now: " + ", ".join(f"{p.tool_name} ({p.source})" for p in policies))
