"""hitl_openai_agents against the real OpenAI Agents SDK, with its own ScriptedModel: a
gated tool pauses the run, hitl-core's decisions are applied to the RunState (remember as
always_approve, the deny reason as the rejection message), remembered and pre-approved
tools skip the pause, a state the host approved by itself cannot overrule hitl-core, and a
RunState serialized by one process resumes in another after `hitl approve`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents", reason="pip install -e '.[openai-agents]'")

from agents import (
    Agent,
    FunctionTool,
    Runner,
    RunResult,
    RunState,
    function_tool,
    set_tracing_disabled,
)
from agents.exceptions import UserError
from agents.testing import ScriptedModel, assistant_message, function_call
from conftest import loop_stall_while_sqlite_is_locked
from hitl_openai_agents import HitlGate

import hitl_core

HITL = str(Path(sys.executable).parent / "hitl")

set_tracing_disabled(True)


class Tools:
    """A tool with side effects and a read-only one, recording what ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @function_tool
        def send_email(to: str) -> str:
            """Send an email."""
            self.ran.append(f"send_email:{to}")
            return f"sent to {to}"

        @function_tool
        def read_inbox() -> str:
            """Read the inbox."""
            self.ran.append("read_inbox")
            return "3 unread"

        self.all: list[FunctionTool] = [send_email, read_inbox]


def mail(*pairs: tuple[str, str]) -> list[Any]:
    return [function_call("send_email", {"to": to}, call_id=call_id) for call_id, to in pairs]


def outputs(model: ScriptedModel) -> dict[str, str]:
    """The tool outputs the model was sent in its last call, by call id."""
    last = model.last_call
    assert last is not None
    return {
        item["call_id"]: item["output"]
        for item in last.input
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    }


@pytest.fixture
def hitl() -> Iterator[hitl_core.Hitl]:
    with hitl_core.connect("memory://") as engine:
        yield engine


def approval_run(hitl: hitl_core.Hitl, **settings: Any) -> hitl_core.Run:
    return hitl.runs.create(
        **{"human_in_the_loop": True, "permission_mode": "approval", **settings}
    )


def setup(
    hitl: hitl_core.Hitl, script: list[Any]
) -> tuple[HitlGate, Agent[Any], ScriptedModel, Tools]:
    tools = Tools()
    gate = HitlGate(hitl, safe_tools=["read_inbox"])
    model = ScriptedModel(script)
    agent = Agent(name="mailer", model=model, tools=[gate.tool(t) for t in tools.all])
    return gate, agent, model, tools


def start(agent: Agent[Any], run: hitl_core.Run) -> RunResult:
    return asyncio.run(Runner.run(agent, "go", context={"hitl_run_id": run.id}))


def test_a_pending_call_interrupts_the_run_and_runs_once_allowed(hitl: hitl_core.Hitl) -> None:
    gate, agent, model, tools = setup(hitl, [mail(("c1", "cfo")), [assistant_message("done")]])
    run = approval_run(hitl)
    result = start(agent, run)
    assert result.final_output is None and tools.ran == []
    [item] = result.interruptions
    state = result.to_state()
    (request_id,) = gate.waiting_on(state)
    request = hitl.agent(run.id).result(request_id)
    assert (item.call_id, request.tool_name, request.tool_input) == (
        "c1",
        "send_email",
        {"to": "cfo"},
    )

    hitl.runs.approve(run.id, request_id=request_id, actor="alice")
    assert gate.apply_decisions(state) == []
    result = asyncio.run(Runner.run(agent, state))
    assert result.final_output == "done" and tools.ran == ["send_email:cfo"]
    assert outputs(model) == {"c1": "sent to cfo"}
    model.assert_complete()


def test_a_denial_s_reason_is_the_rejection_message_the_model_reads(hitl: hitl_core.Hitl) -> None:
    gate, agent, model, tools = setup(hitl, [mail(("c1", "all")), [assistant_message("ok")]])
    run = approval_run(hitl)
    state = start(agent, run).to_state()
    (request_id,) = gate.waiting_on(state)
    hitl.runs.approve(run.id, request_id=request_id, decision="deny", reason="use the staging list")
    result = asyncio.run(gate.resume(agent, state))
    assert result.final_output == "ok" and tools.ran == []
    assert outputs(model) == {"c1": "use the staging list"}


def test_a_resume_before_the_decision_keeps_the_call_waiting(hitl: hitl_core.Hitl) -> None:
    gate, agent, model, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    run = approval_run(hitl)
    state = start(agent, run).to_state()
    (request_id,) = gate.waiting_on(state)
    result = asyncio.run(gate.resume(agent, state))  # nobody decided yet
    assert [i.call_id for i in result.interruptions] == ["c1"] and tools.ran == []
    assert len(model.calls) == 1

    hitl.runs.approve(run.id, request_id=request_id)
    result = asyncio.run(gate.resume(agent, result.to_state()))
    assert result.final_output == "done" and tools.ran == ["send_email:a"]


def test_an_approval_the_host_gives_the_sdk_itself_does_not_overrule_hitl_core(
    hitl: hitl_core.Hitl,
) -> None:
    gate, agent, model, tools = setup(
        hitl, [mail(("c1", "a"), ("c2", "b")), [assistant_message("done")]]
    )
    run = approval_run(hitl)
    state = start(agent, run).to_state()
    first, _ = gate.waiting_on(state)
    hitl.runs.approve(run.id, request_id=first, decision="deny", reason="no")
    for item in state.get_interruptions():  # the host approves both in the SDK, by hand
        state.approve(item)
    result = asyncio.run(Runner.run(agent, state))
    assert result.final_output == "done" and tools.ran == []
    assert outputs(model) == {
        "c1": "no",
        "c2": "send_email did not run: no person has approved it yet.",
    }


def test_parallel_calls_are_separate_requests(hitl: hitl_core.Hitl) -> None:
    script = [
        [*mail(("c1", "a"), ("c2", "b")), function_call("read_inbox", {}, call_id="c3")],
        [assistant_message("done")],
    ]
    gate, agent, model, tools = setup(hitl, script)
    run = approval_run(hitl)
    result = start(agent, run)
    assert tools.ran == ["read_inbox"]  # safe: ran before the pause
    state = result.to_state()
    first, second = gate.waiting_on(state)
    agent_side = hitl.agent(run.id)
    assert [agent_side.result(r).tool_input for r in (first, second)] == [{"to": "a"}, {"to": "b"}]
    assert len(hitl.runs.permissions(run.id)) == 2

    hitl.runs.approve(run.id, request_id=first)
    result = asyncio.run(gate.resume(agent, state))
    assert tools.ran == ["read_inbox", "send_email:a"]
    state = result.to_state()
    assert gate.waiting_on(state) == [second]

    hitl.runs.approve(run.id, request_id=second, decision="deny")
    result = asyncio.run(gate.resume(agent, state))
    assert result.final_output == "done" and tools.ran == ["read_inbox", "send_email:a"]
    assert outputs(model) == {
        "c3": "3 unread",
        "c1": "sent to a",
        "c2": "A person denied this call to send_email; it was not run.",
    }


def test_remember_is_always_approve_and_skips_later_pauses(hitl: hitl_core.Hitl) -> None:
    script = [mail(("c1", "a")), mail(("c2", "b")), [assistant_message("done")]]
    gate, agent, _, tools = setup(hitl, script)
    run = approval_run(hitl, user_id="cust_123")
    state = start(agent, run).to_state()
    (request_id,) = gate.waiting_on(state)
    hitl.runs.approve(run.id, request_id=request_id, remember=True)
    result = asyncio.run(gate.resume(agent, state))
    assert result.final_output == "done" and tools.ran == ["send_email:a", "send_email:b"]
    assert len(hitl.runs.permissions(run.id)) == 1

    # remembered for the customer: their next run does not pause either
    gate, agent, _, tools = setup(hitl, [mail(("c1", "c")), [assistant_message("done")]])
    result = start(agent, approval_run(hitl, user_id="cust_123"))
    assert result.final_output == "done" and tools.ran == ["send_email:c"]


def test_a_customer_s_pre_approval_skips_the_pause_for_that_customer_only(
    hitl: hitl_core.Hitl,
) -> None:
    hitl.permissions.create(tool="send_*", user_id="cust_9")
    _, agent, _, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    assert start(agent, approval_run(hitl, user_id="cust_9")).final_output == "done"
    assert tools.ran == ["send_email:a"]
    _, agent, _, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    assert start(agent, approval_run(hitl, user_id="cust_10")).interruptions
    assert tools.ran == []


def test_a_denial_hitl_core_already_has_answers_without_a_pause(hitl: hitl_core.Hitl) -> None:
    script = [mail(("c1", "a")), mail(("c2", "b")), [assistant_message("done")]]
    gate, agent, model, tools = setup(hitl, script)
    run = approval_run(hitl)
    state = start(agent, run).to_state()
    (request_id,) = gate.waiting_on(state)
    hitl.runs.approve(run.id, request_id=request_id, decision="deny", remember=True, reason="never")
    result = asyncio.run(gate.resume(agent, state))
    assert result.final_output == "done" and tools.ran == []
    assert outputs(model) == {"c1": "never", "c2": "never"}  # always_reject keeps the reason

    # plan mode before a plan: hitl-core denies at once, the model reads why, no pause
    gate, agent, model, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    plan_run = approval_run(hitl, permission_mode="plan")
    result = start(agent, plan_run)
    blocked = hitl.agent(plan_run.id).request_tool("send_email")
    assert result.final_output == "done" and tools.ran == []
    assert outputs(model) == {"c1": blocked.reason} and blocked.source == "plan_not_approved"


def test_a_run_suspended_by_the_timeout_resumes_later() -> None:
    clock = hitl_core.ManualClock(start=0.0)
    with hitl_core.connect("memory://", clock=clock) as timed:
        gate, agent, _, tools = setup(timed, [mail(("c1", "a")), [assistant_message("done")]])
        run = approval_run(timed, input_timeout=30.0)
        saved = start(agent, run).to_state().to_string()  # the worker stores the state, exits
        clock.advance(31.0)
        assert timed.runs.get(run.id).suspended
        clock.advance(86_400.0)
        (request_id,) = gate.waiting_on(asyncio.run(RunState.from_string(agent, saved)))
        assert timed.runs.approve(run.id, request_id=request_id).resumed
        state = asyncio.run(RunState.from_string(agent, saved))
        result = asyncio.run(gate.resume(agent, state))
        assert result.final_output == "done" and tools.ran == ["send_email:a"]


def test_the_gate_leaves_the_context_alone(hitl: hitl_core.Hitl) -> None:
    gate, agent, _, _ = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    run = approval_run(hitl)
    context: dict[str, Any] = {"hitl_run_id": run.id, "tenant": "acme"}
    result = asyncio.run(Runner.run(agent, "go", context=context))
    assert context == {"hitl_run_id": run.id, "tenant": "acme"}
    # asking again names the same request: the key is the call
    state = result.to_state()
    assert gate.waiting_on(state) == gate.waiting_on(state)
    assert len(hitl.runs.permissions(run.id)) == 1


@dataclasses.dataclass
class MailContext:
    """A typed run context, as many hosts use."""

    hitl_run_id: str
    tenant: str


def test_a_dataclass_context_survives_a_saved_state(hitl: hitl_core.Hitl) -> None:
    gate, agent, _, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    run = approval_run(hitl)
    result = asyncio.run(Runner.run(agent, "go", context=MailContext(run.id, "acme")))
    saved = result.to_state().to_string()
    state = asyncio.run(
        RunState.from_string(agent, saved, context_deserializer=lambda data: MailContext(**data))
    )
    (request_id,) = gate.waiting_on(state)
    hitl.runs.approve(run.id, request_id=request_id)
    assert asyncio.run(gate.resume(agent, state)).final_output == "done"
    assert tools.ran == ["send_email:a"]


def test_an_interruption_of_an_ungated_tool_is_left_to_the_host(hitl: hitl_core.Hitl) -> None:
    @function_tool(needs_approval=True)
    def wipe_disk() -> str:
        """Its own approval, not hitl-core's."""
        return "wiped"

    tools = Tools()
    gate = HitlGate(hitl)
    script = [
        [function_call("wipe_disk", {}, call_id="w1"), *mail(("c1", "a"))],
        [assistant_message("done")],
    ]
    agent = Agent(
        name="mixed", model=ScriptedModel(script), tools=[wipe_disk, gate.tool(tools.all[0])]
    )
    run = approval_run(hitl)
    state = start(agent, run).to_state()
    (request_id,) = gate.waiting_on(state)  # only the gated call has a request
    hitl.runs.approve(run.id, request_id=request_id)
    waiting = gate.apply_decisions(state)
    assert [item.call_id for item in waiting] == ["w1"]
    assert [r.tool_name for r in hitl.runs.permissions(run.id)] == ["send_email"]


def test_a_run_without_a_hitl_run_is_refused(hitl: hitl_core.Hitl) -> None:
    _, agent, _, tools = setup(hitl, [mail(("c1", "a")), [assistant_message("done")]])
    with pytest.raises(UserError) as refused:  # the SDK wraps what a tool check raises
        asyncio.run(Runner.run(agent, "go", context={}))
    cause = refused.value.__cause__
    assert isinstance(cause, hitl_core.ValidationError) and cause.code == "invalid_config"
    assert tools.ran == []


def test_gating_a_tool_leaves_the_original_alone(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    gated = HitlGate(hitl).tool(tools.all[0])
    assert tools.all[0].needs_approval is False and not tools.all[0].tool_input_guardrails
    assert callable(gated.needs_approval) and gated.name == "send_email"


# -- another process decides; another host process resumes ---------------------------

HOST = textwrap.dedent(
    """
    import asyncio, json, sys
    from agents import Agent, Runner, RunState, function_tool, set_tracing_disabled
    from agents.testing import ScriptedModel, assistant_message, function_call
    import hitl_core
    from hitl_openai_agents import HitlGate

    set_tracing_disabled(True)

    @function_tool
    def send_email(to: str) -> str:
        "Send an email."
        with open("sent.txt", "a") as sent:
            sent.write(to + "\\n")
        return f"sent to {to}"

    async def main(step, run_id):
        with hitl_core.connect("sqlite:///hitl.db") as hitl:
            gate = HitlGate(hitl)
            model = ScriptedModel(
                [[function_call("send_email", {"to": "cfo"}, call_id="c1")]]
                if step == "start" else [[assistant_message("done")]]
            )
            agent = Agent(name="mailer", model=model, tools=[gate.tool(send_email)])
            if step == "start":
                result = await Runner.run(agent, "mail the cfo", context={"hitl_run_id": run_id})
                state = result.to_state()
                with open("state.json", "w") as saved:
                    saved.write(state.to_string())
                print(json.dumps(gate.waiting_on(state)))
            else:
                with open("state.json") as saved:
                    state = await RunState.from_string(agent, saved.read())
                result = await gate.resume(agent, state)
                print(json.dumps([result.final_output, model.last_call.input[-1]["output"]]))

    asyncio.run(main(*sys.argv[1:]))
    """
)


def host(tmp_path: Path, step: str, run_id: str) -> Any:
    result = subprocess.run(
        [sys.executable, "host.py", step, run_id],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_hitl_approve_in_another_process_resumes_a_restarted_host(
    tmp_path: Path, decision: str
) -> None:
    (tmp_path / "host.py").write_text(HOST)
    with hitl_core.connect(f"sqlite:///{tmp_path / 'hitl.db'}") as hitl:
        run = approval_run(hitl, user_id="cust_123")
    (waiting,) = host(tmp_path, "start", run.id)
    assert not (tmp_path / "sent.txt").exists()

    command = [HITL, "--db", str(tmp_path / "hitl.db"), "approve", run.id, waiting]
    if decision == "deny":
        command += ["--deny", "--reason", "wrong recipient"]
    approved = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert approved.returncode == 0, approved.stderr

    final, tool_output = host(tmp_path, "resume", run.id)
    assert final == "done"
    if decision == "allow":
        assert tool_output == "sent to cfo" and (tmp_path / "sent.txt").read_text() == "cfo\n"
    else:
        assert tool_output == "wrong recipient" and not (tmp_path / "sent.txt").exists()


def test_the_gate_does_not_block_the_event_loop_while_the_store_waits(tmp_path: Path) -> None:
    # needs_approval and the guardrail are coroutines of the SDK's loop; the engine is
    # synchronous, so a store call that waits for a lock froze every task of the loop.
    db = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = approval_run(engine)
        _, agent, _, tools = setup(engine, [mail(("c1", "a@x"))])
        stall, result = loop_stall_while_sqlite_is_locked(
            db, lambda: Runner.run(agent, "go", context={"hitl_run_id": run.id})
        )
        assert [i.call_id for i in result.interruptions] == ["c1"]  # paused for a person
        assert tools.ran == []
        assert stall < 0.5, f"the event loop stood still for {stall:.2f} s"
