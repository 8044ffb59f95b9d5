"""The plain-StateGraph side: `HitlToolNode` (a gated tool node), and the host's helpers
`run_config`, `waiting_on` and `resume_command`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from langgraph.pregel import Pregel
from langgraph.types import Command, Send

from hitl_core import Hitl

from ._gate import INTERRUPT_TYPE, RUN_ID_KEY, ToolGateCore


class HitlToolNode:
    """A tool node for a plain `StateGraph` (state with `messages`) that sends every tool
    call through hitl-core's tool gate.

    `graph` is the node to add (`builder.add_node("tools", node.graph)`); `tools` is what
    to bind to the model (yours, plus the ask-a-person and plan tools when named). Each
    tool call of the model turn runs in its own task, as in `create_agent`: allowed calls
    run at once, denied ones answer with the reason, pending ones pause the graph with
    `interrupt()` until hitl-core has a decision, and a call that ran is not run again
    when the graph resumes."""

    def __init__(
        self,
        hitl: Hitl,
        tools: Sequence[BaseTool],
        *,
        safe_tools: Collection[str] = (),
        ask_tool_name: str | None = "ask_person",
        plan_tool_name: str | None = None,
    ) -> None:
        gate = ToolGateCore(
            hitl, safe_tools=safe_tools, ask_tool_name=ask_tool_name, plan_tool_name=plan_tool_name
        )
        self.tools: list[BaseTool] = [*tools, *gate.tools]
        builder = StateGraph(MessagesState)
        builder.add_node(
            "call", ToolNode(self.tools, wrap_tool_call=gate.wrap, awrap_tool_call=gate.awrap)
        )
        builder.add_conditional_edges(START, _each_call, ["call", END])
        builder.add_edge("call", END)
        self.graph: CompiledStateGraph[Any, Any, Any, Any] = builder.compile(name="hitl_tools")


def _each_call(state: MessagesState) -> list[Send] | str:
    """One task per tool call without a result yet, so each pauses on its own."""
    messages = state.get("messages") or []
    last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    calls = [c for c in (last.tool_calls if last else []) if c["id"] not in answered]
    return [Send("call", [call]) for call in calls] or END


def run_config(run_id: str, *, thread_id: str | None = None, **configurable: Any) -> RunnableConfig:
    """The config for a graph run gated by hitl-core run `run_id`: its thread is
    `thread_id` (the run id when None), other `configurable` values pass through."""
    return {"configurable": {**configurable, "thread_id": thread_id or run_id, RUN_ID_KEY: run_id}}


def waiting_on(graph: Pregel[Any, Any, Any, Any], config: RunnableConfig) -> list[str]:
    """The hitl-core request ids the paused graph waits on, in the order the model made
    the calls (empty when this bridge has not paused it)."""
    snapshot = graph.get_state(config, subgraphs=True)
    values = snapshot.values if isinstance(snapshot.values, dict) else {}
    order = {
        call["id"]: index
        for index, call in enumerate(
            c for m in values.get("messages", []) if isinstance(m, AIMessage) for c in m.tool_calls
        )
    }
    ours = [
        interrupt.value
        for interrupt in snapshot.interrupts
        if isinstance(interrupt.value, dict) and interrupt.value.get("type") == INTERRUPT_TYPE
    ]
    ours.sort(key=lambda value: order.get(value["tool_call_id"], len(order)))
    return [value["request_id"] for value in ours]


def resume_command(graph: Pregel[Any, Any, Any, Any], config: RunnableConfig) -> Command[Any]:
    """A `Command` that resumes every pending interrupt of the graph. The values are only
    wake-up calls: each gated call reads its decision from hitl-core, and pauses again if
    there is none yet."""
    interrupts = graph.get_state(config, subgraphs=True).interrupts
    return Command(resume={interrupt.id: "hitl_core" for interrupt in interrupts})
