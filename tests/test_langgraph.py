"""hitl_langgraph against the real LangGraph and LangChain v1 packages, with a scripted chat
model: create_agent's middleware and a plain StateGraph's tool node pause on pending
calls, run or deny them from hitl-core's decisions, skip the pause for remembered and
pre-approved tools, ask questions, gate plan mode, survive a host restart on SQLite, and
resume after `hitl approve` in another process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain", reason="pip install -e '.[langgraph]'")

import hitl_langgraph as hl
from conftest import loop_stall_while_sqlite_is_locked
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command

import hitl_core

HITL = str(Path(sys.executable).parent / "hitl")


class ScriptedChat(GenericFakeChatModel):
    """A chat model that answers from a script and keeps what it was sent."""

    seen: list[list[BaseMessage]]

    def __init__(self, script: list[AIMessage]) -> None:
        super().__init__(messages=iter(script), seen=[])

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChat:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def calls(*specs: tuple[str, str, dict[str, Any]]) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": n, "id": i, "args": a} for i, n, a in specs])


DONE = AIMessage(content="done")


class Tools:
    """Two tools with side effects and one read-only tool, recording what ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @tool
        def send_email(to: str) -> str:
            """Send an email."""
            self.ran.append(f"send_email:{to}")
            return f"sent to {to}"

        @tool
        def read_inbox() -> str:
            """Read the inbox."""
            self.ran.append("read_inbox")
            return "3 unread"

        self.all: list[BaseTool] = [send_email, read_inbox]


@pytest.fixture
def hitl() -> Iterator[hitl_core.Hitl]:
    with hitl_core.connect("memory://") as engine:
        yield engine


def approval_run(hitl: hitl_core.Hitl, **settings: Any) -> hitl_core.Run:
    return hitl.runs.create(
        **{"human_in_the_loop": True, "permission_mode": "approval", **settings}
    )


def make_agent(hitl: hitl_core.Hitl, script: list[AIMessage], tools: Tools, **options: Any):  # type: ignore[no-untyped-def]
    model = ScriptedChat(script)
    middleware = hl.HitlMiddleware(hitl, safe_tools=["read_inbox"], **options)
    graph = create_agent(
        model, tools=tools.all, middleware=[middleware], checkpointer=InMemorySaver()
    )
    return graph, model


def tool_messages(out: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}


def test_a_pending_call_pauses_and_runs_once_a_person_allows_it(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "cfo"})), DONE], tools)
    config = hl.run_config(run.id)

    out = graph.invoke({"messages": [("user", "mail the cfo")]}, config)
    (request_id,) = hl.waiting_on(graph, config)
    [paused] = out["__interrupt__"]
    assert paused.value == {
        "type": hl.INTERRUPT_TYPE,
        "run_id": run.id,
        "request_id": request_id,
        "kind": "tool",
        "tool_call_id": "c1",
        "name": "send_email",
        "args": {"to": "cfo"},
    }
    assert tools.ran == [] and hitl.runs.get(run.id).status == "awaiting_approval"
    assert hitl.agent(run.id).result(request_id).tool_input == {"to": "cfo"}

    hitl.runs.approve(run.id, request_id=request_id, actor="alice")
    out = graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["send_email:cfo"]
    assert tool_messages(out)["c1"].content == "sent to cfo"
    assert out["messages"][-1].content == "done" and hl.waiting_on(graph, config) == []


def test_a_resume_before_the_decision_pauses_again_whatever_it_says(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "cfo"})), DONE], tools)
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    (request_id,) = hl.waiting_on(graph, config)

    # a resume value that claims approval does not win: hitl-core has no decision yet
    paused = graph.get_state(config).interrupts[0]
    out = graph.invoke(Command(resume={paused.id: {"type": "approve"}}), config)
    assert tools.ran == [] and hl.waiting_on(graph, config) == [request_id]
    assert "__interrupt__" in out
    assert len(hitl.runs.permissions(run.id)) == 1  # the re-run task opened nothing new

    hitl.runs.approve(run.id, request_id=request_id, decision="deny", reason="not today")
    out = graph.invoke(
        Command(resume={i.id: "approve!" for i in graph.get_state(config).interrupts}), config
    )
    assert tools.ran == [] and tool_messages(out)["c1"].content == "not today"


def test_a_denial_hands_the_person_s_reason_to_the_model(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    graph, model = make_agent(hitl, [calls(("c1", "send_email", {"to": "all"})), DONE], tools)
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    (request_id,) = hl.waiting_on(graph, config)
    hitl.runs.approve(run.id, request_id=request_id, decision="deny", reason="use the staging list")
    graph.invoke(hl.resume_command(graph, config), config)

    assert tools.ran == []
    answer = model.seen[-1][-1]
    assert isinstance(answer, ToolMessage) and answer.tool_call_id == "c1"
    assert answer.content == "use the staging list" and answer.status == "error"


def test_parallel_calls_are_separate_requests_and_each_goes_its_own_way(
    hitl: hitl_core.Hitl,
) -> None:
    tools = Tools()
    run = approval_run(hitl)
    turn = calls(
        ("c1", "send_email", {"to": "a"}),
        ("c2", "send_email", {"to": "b"}),
        ("c3", "read_inbox", {}),
    )
    graph, _ = make_agent(hitl, [turn, DONE], tools)
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    first, second = hl.waiting_on(graph, config)
    assert tools.ran == ["read_inbox"]  # safe: never gated, ran at once
    # one request per call; waiting_on lists them in the order the model made the calls
    agent = hitl.agent(run.id)
    assert [agent.result(r).tool_input for r in (first, second)] == [{"to": "a"}, {"to": "b"}]
    assert len(hitl.runs.permissions(run.id)) == 2

    hitl.runs.approve(run.id, request_id=first)
    graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["read_inbox", "send_email:a"]  # ran once, and only it
    assert hl.waiting_on(graph, config) == [second]

    hitl.runs.approve(run.id, request_id=second, decision="deny")
    out = graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["read_inbox", "send_email:a"]
    assert (
        tool_messages(out)["c2"].content
        == "A person denied this call to send_email; it was not run."
    )
    assert out["messages"][-1].content == "done"


def test_remembered_and_pre_approved_tools_skip_the_pause(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    first = approval_run(hitl, user_id="cust_123")
    graph, _ = make_agent(
        hitl,
        [calls(("c1", "send_email", {"to": "a"})), calls(("c2", "send_email", {"to": "b"})), DONE],
        tools,
    )
    config = hl.run_config(first.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    (request_id,) = hl.waiting_on(graph, config)
    hitl.runs.approve(first.id, request_id=request_id, remember=True)
    out = graph.invoke(hl.resume_command(graph, config), config)
    assert "__interrupt__" not in out and tools.ran == ["send_email:a", "send_email:b"]

    # the same customer's next run: remembered across runs, no pause at all
    again = approval_run(hitl, user_id="cust_123")
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "c"})), DONE], tools)
    out = graph.invoke({"messages": [("user", "go")]}, hl.run_config(again.id))
    assert "__interrupt__" not in out and tools.ran[-1] == "send_email:c"

    # a pre-approval of another customer's runs: no pause for them, a pause for others
    hitl.permissions.create(tool="send_*", user_id="cust_9")
    other = approval_run(hitl, user_id="cust_9")
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "d"})), DONE], tools)
    out = graph.invoke({"messages": [("user", "go")]}, hl.run_config(other.id))
    assert "__interrupt__" not in out and tools.ran[-1] == "send_email:d"
    stranger = approval_run(hitl, user_id="cust_10")
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "e"})), DONE], tools)
    out = graph.invoke({"messages": [("user", "go")]}, hl.run_config(stranger.id))
    assert "__interrupt__" in out and tools.ran[-1] == "send_email:d"


def test_a_remembered_denial_answers_the_model_without_a_pause(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    graph, _ = make_agent(
        hitl,
        [calls(("c1", "send_email", {"to": "a"})), calls(("c2", "send_email", {"to": "b"})), DONE],
        tools,
    )
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    (request_id,) = hl.waiting_on(graph, config)
    hitl.runs.approve(run.id, request_id=request_id, decision="deny", remember=True)
    out = graph.invoke(hl.resume_command(graph, config), config)
    assert "__interrupt__" not in out and tools.ran == []
    # the model reads hitl-core's own reason (asking again opens no request)
    remembered = hitl.agent(run.id).request_tool("send_email")
    assert remembered.source == "remembered" and remembered.reason
    assert tool_messages(out)["c2"].content == remembered.reason


def test_questions_go_through_the_ask_a_person_tool(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    question = {"question": "Which list?", "header": "List", "options": ["staging", "prod"]}
    graph, model = make_agent(
        hitl, [calls(("q1", "ask_person", {"questions": [question]})), DONE], tools
    )
    assert "ask_person" in {
        t.name for t in graph.get_graph().nodes["tools"].data.tools_by_name.values()
    }
    config = hl.run_config(run.id)
    out = graph.invoke({"messages": [("user", "go")]}, config)
    (request_id,) = hl.waiting_on(graph, config)
    assert out["__interrupt__"][0].value["kind"] == "question"
    asked = hitl.agent(run.id).result(request_id)
    assert asked.kind == "question" and asked.questions[0]["question"] == "Which list?"

    hitl.runs.answer(run.id, answers={"Which list?": "staging"}, actor="bob")
    graph.invoke(hl.resume_command(graph, config), config)
    answer = model.seen[-1][-1]
    assert isinstance(answer, ToolMessage) and json.loads(str(answer.content)) == {
        "Which list?": "staging"
    }


def test_a_malformed_question_is_refused_with_hitl_core_s_reason(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    bad = {"questions": [{"question": "Which?", "options": ["only one"]}]}
    graph, _ = make_agent(hitl, [calls(("q1", "ask_person", bad)), DONE], tools)
    out = graph.invoke({"messages": [("user", "go")]}, hl.run_config(run.id))
    reply = tool_messages(out)["q1"]
    assert "__interrupt__" not in out and reply.status == "error"
    assert reply.content.startswith("ask_person refused: invalid_request")
    assert hitl.runs.permissions(run.id) == []


def test_plan_mode_blocks_tools_until_the_plan_step_is_approved(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl, permission_mode="plan")
    script = [
        calls(("c0", "send_email", {"to": "a"})),
        calls(("p1", "propose_plan", {"plan": "1. mail a"})),
        calls(("p2", "propose_plan", {"plan": "1. mail a\n2. mail b"})),
        calls(("c1", "send_email", {"to": "a"})),
        DONE,
    ]
    graph, model = make_agent(hitl, script, tools, plan_tool_name="propose_plan")
    config = hl.run_config(run.id)
    out = graph.invoke({"messages": [("user", "go")]}, config)
    blocked = hitl.agent(run.id).request_tool("send_email")  # denied at once, no request
    assert blocked.source == "plan_not_approved" and blocked.reason
    assert tool_messages(out)["c0"].content == blocked.reason
    (plan_request,) = hl.waiting_on(graph, config)
    hitl.runs.answer(run.id, answers={"Plan Approval": "Also mail b"})
    graph.invoke(hl.resume_command(graph, config), config)
    assert model.seen[-1][-1].content == (
        "The person asked for changes: Also mail b. Propose a revised plan."
    )
    (revised,) = hl.waiting_on(graph, config)
    assert hitl.agent(run.id).result(revised).plan_text == "1. mail a\n2. mail b"
    hitl.runs.answer(run.id, answers={"Plan Approval": "Approve"}, actor="carol")
    graph.invoke(hl.resume_command(graph, config), config)
    assert model.seen[-1][-1].content == "The plan was approved by carol. Carry it out."
    # after the plan, tools follow the approval rules: a pause, then the call
    (tool_request,) = hl.waiting_on(graph, config)
    hitl.runs.approve(run.id, request_id=tool_request)
    graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["send_email:a"] and plan_request != revised


def test_a_run_suspended_by_the_timeout_resumes_later(hitl: hitl_core.Hitl) -> None:
    clock = hitl_core.ManualClock(start=0.0)
    tools = Tools()
    with hitl_core.connect("memory://", clock=clock) as timed:
        run = approval_run(timed, input_timeout=30.0)
        graph, _ = make_agent(timed, [calls(("c1", "send_email", {"to": "a"})), DONE], tools)
        config = hl.run_config(run.id)
        graph.invoke({"messages": [("user", "go")]}, config)
        (request_id,) = hl.waiting_on(graph, config)
        clock.advance(31.0)
        assert timed.runs.get(run.id).suspended
        clock.advance(86_400.0)  # a day later
        decided = timed.runs.approve(run.id, request_id=request_id)
        assert decided.resumed  # the host restarts the agent: here, it resumes the graph
        out = graph.invoke(hl.resume_command(graph, config), config)
        assert tools.ran == ["send_email:a"] and out["messages"][-1].content == "done"


def test_the_async_graph_is_gated_the_same_way(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "a"})), DONE], tools)
    config = hl.run_config(run.id)

    async def scenario() -> dict[str, Any]:
        await graph.ainvoke({"messages": [("user", "go")]}, config)
        (request_id,) = hl.waiting_on(graph, config)
        hitl.runs.approve(run.id, request_id=request_id)
        result: dict[str, Any] = await graph.ainvoke(hl.resume_command(graph, config), config)
        return result

    out = asyncio.run(scenario())
    assert tools.ran == ["send_email:a"] and out["messages"][-1].content == "done"


def test_the_async_gate_does_not_block_the_event_loop_while_the_store_waits(
    tmp_path: Path,
) -> None:
    # awrap_tool_call runs in the graph's loop; the engine is synchronous, so a store call
    # waiting for a lock froze every task of the loop. It runs off the loop now, and
    # interrupt() still pauses the graph from there.
    db = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        tools = Tools()
        run = approval_run(engine)
        graph, _ = make_agent(engine, [calls(("c1", "send_email", {"to": "a"})), DONE], tools)
        config = hl.run_config(run.id)
        stall, _ = loop_stall_while_sqlite_is_locked(
            db, lambda: graph.ainvoke({"messages": [("user", "go")]}, config)
        )
        (request_id,) = hl.waiting_on(graph, config)  # paused for a person
        assert tools.ran == []
        assert stall < 0.5, f"the event loop stood still for {stall:.2f} s"
        engine.runs.approve(run.id, request_id=request_id)
        out = asyncio.run(graph.ainvoke(hl.resume_command(graph, config), config))
        assert tools.ran == ["send_email:a"] and out["messages"][-1].content == "done"

def test_the_run_can_come_from_the_runtime_context(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    model = ScriptedChat([calls(("c1", "send_email", {"to": "a"})), DONE])
    graph = create_agent(
        model,
        tools=tools.all,
        middleware=[hl.HitlMiddleware(hitl)],
        checkpointer=InMemorySaver(),
        context_schema=dict,
    )
    config = {"configurable": {"thread_id": "t-1"}}
    graph.invoke({"messages": [("user", "go")]}, config, context={"hitl_run_id": run.id})
    assert [r.tool_name for r in hitl.runs.permissions(run.id)] == ["send_email"]


def test_a_graph_run_without_a_hitl_run_is_refused(hitl: hitl_core.Hitl) -> None:
    graph, _ = make_agent(hitl, [calls(("c1", "send_email", {"to": "a"})), DONE], Tools())
    with pytest.raises(hitl_core.ValidationError) as refused:
        graph.invoke({"messages": [("user", "go")]}, {"configurable": {"thread_id": "t"}})
    assert refused.value.code == "invalid_config" and "hitl_run_id" in str(refused.value)


def test_run_config_names_the_thread_and_the_run() -> None:
    assert hl.run_config("run_1") == {
        "configurable": {"thread_id": "run_1", "hitl_run_id": "run_1"}
    }
    assert hl.run_config("run_1", thread_id="t", user="u") == {
        "configurable": {"user": "u", "thread_id": "t", "hitl_run_id": "run_1"}
    }


# -- a plain StateGraph --------------------------------------------------------------


def state_graph(hitl: hitl_core.Hitl, script: list[AIMessage], tools: Tools, checkpointer: Any):  # type: ignore[no-untyped-def]
    node = hl.HitlToolNode(hitl, tools.all, safe_tools=["read_inbox"])
    model = ScriptedChat(script).bind_tools(node.tools)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", node.graph)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=checkpointer), model, node


def test_a_state_graph_tool_node_gates_each_call(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    turn = calls(
        ("c1", "send_email", {"to": "a"}),
        ("c2", "send_email", {"to": "b"}),
        ("c3", "read_inbox", {}),
    )
    graph, model, node = state_graph(hitl, [turn, DONE], tools, InMemorySaver())
    assert [t.name for t in node.tools] == ["send_email", "read_inbox", "ask_person"]
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    first, second = hl.waiting_on(graph, config)
    assert tools.ran == ["read_inbox"]

    hitl.runs.approve(run.id, request_id=first)
    graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["read_inbox", "send_email:a"] and hl.waiting_on(graph, config) == [second]
    hitl.runs.approve(run.id, request_id=second, decision="deny", reason="b left")
    out = graph.invoke(hl.resume_command(graph, config), config)
    assert tools.ran == ["read_inbox", "send_email:a"]
    replies = {"c1": "sent to a", "c2": "b left", "c3": "3 unread"}
    assert {k: m.content for k, m in tool_messages(out).items()} == replies
    # the model's next turn saw every reply, each once
    sent = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert sorted(m.tool_call_id for m in sent) == ["c1", "c2", "c3"]
    assert out["messages"][-1].content == "done"


def test_a_state_graph_skips_the_pause_for_a_policy(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    hitl.permissions.create(tool="send_email", user_id="cust_1")
    run = approval_run(hitl, user_id="cust_1")
    graph, _, _ = state_graph(
        hitl, [calls(("c1", "send_email", {"to": "a"})), DONE], tools, InMemorySaver()
    )
    out = graph.invoke({"messages": [("user", "go")]}, hl.run_config(run.id))
    assert "__interrupt__" not in out and tools.ran == ["send_email:a"]
    assert hitl.runs.permissions(run.id) == []


def test_a_tool_call_without_an_id_is_refused(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    # the middleware's wrapper on a plain tool node, fed a call with no id
    wrapper = hl.HitlMiddleware(hitl).wrap_tool_call
    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode(tools.all, wrap_tool_call=wrapper))
    builder.add_edge(START, "tools")
    graph = builder.compile(checkpointer=InMemorySaver())
    anonymous = AIMessage(
        content="", tool_calls=[{"name": "send_email", "id": None, "args": {"to": "x"}}]
    )
    with pytest.raises(hitl_core.ValidationError) as refused:
        graph.invoke({"messages": [anonymous]}, hl.run_config(run.id))
    assert refused.value.code == "invalid_request" and "no id" in str(refused.value)
    assert tools.ran == [] and hitl.runs.permissions(run.id) == []


def test_a_reused_call_id_with_other_arguments_is_a_new_request(hitl: hitl_core.Hitl) -> None:
    tools = Tools()
    run = approval_run(hitl)
    script = [
        calls(("c1", "send_email", {"to": "a"})),
        calls(("c1", "send_email", {"to": "b"})),
        DONE,
    ]
    graph, _ = make_agent(hitl, script, tools)
    config = hl.run_config(run.id)
    graph.invoke({"messages": [("user", "go")]}, config)
    (first,) = hl.waiting_on(graph, config)
    hitl.runs.approve(run.id, request_id=first)
    graph.invoke(hl.resume_command(graph, config), config)
    # the model said "c1" again, for another recipient: a person decides again
    (second,) = hl.waiting_on(graph, config)
    assert second != first and tools.ran == ["send_email:a"]
    assert hitl.agent(run.id).result(second).tool_input == {"to": "b"}


# -- SQLite files, other processes, host restarts ------------------------------------

HOST = textwrap.dedent(
    """
    import json, sqlite3, sys
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver
    import hitl_core, hitl_langgraph as hl

    class ScriptedChat(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    @tool
    def send_email(to: str) -> str:
        "Send an email."
        with open("sent.txt", "a") as sent:
            sent.write(to + "\\n")
        return f"sent to {to}"

    step, run_id = sys.argv[1], sys.argv[2]
    script = {
        "start": [AIMessage(content="", tool_calls=[
            {"name": "send_email", "id": "c1", "args": {"to": "cfo"}}])],
        "resume": [AIMessage(content="done")],
    }[step]
    with hitl_core.connect("sqlite:///hitl.db") as hitl:
        saver = SqliteSaver(sqlite3.connect("graph.db", check_same_thread=False))
        graph = create_agent(ScriptedChat(messages=iter(script)), tools=[send_email],
                             middleware=[hl.HitlMiddleware(hitl)], checkpointer=saver)
        config = hl.run_config(run_id)
        if step == "start":
            graph.invoke({"messages": [("user", "mail the cfo")]}, config)
        else:
            out = graph.invoke(hl.resume_command(graph, config), config)
            print(json.dumps([m.content for m in out["messages"] if isinstance(m, ToolMessage)]))
        print(json.dumps(hl.waiting_on(graph, config)))
    """
)


def host(tmp_path: Path, step: str, run_id: str) -> list[str]:
    """One host process: it starts (or resumes) the graph, then exits."""
    result = subprocess.run(
        [sys.executable, "host.py", step, run_id],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def hitl_command(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [HITL, "--db", str(tmp_path / "hitl.db"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_hitl_approve_in_another_process_resumes_a_restarted_host(
    tmp_path: Path, decision: str
) -> None:
    (tmp_path / "host.py").write_text(HOST)
    with hitl_core.connect(f"sqlite:///{tmp_path / 'hitl.db'}") as hitl:
        run = approval_run(hitl, user_id="cust_123")
    # the host pauses on the SQLite files and exits
    (waiting,) = json.loads(host(tmp_path, "start", run.id)[-1])
    assert not (tmp_path / "sent.txt").exists()
    assert waiting in hitl_command(tmp_path, "pending")

    if decision == "allow":
        hitl_command(tmp_path, "approve", run.id, waiting)
    else:
        hitl_command(tmp_path, "approve", run.id, waiting, "--deny", "--reason", "wrong recipient")
    # a new host process resumes the graph from LangGraph's checkpoint
    contents, still_waiting = host(tmp_path, "resume", run.id)
    assert json.loads(still_waiting) == []
    if decision == "allow":
        assert json.loads(contents) == ["sent to cfo"]
        assert (tmp_path / "sent.txt").read_text() == "cfo\n"
    else:
        assert json.loads(contents) == ["wrong recipient"]
        assert not (tmp_path / "sent.txt").exists()
