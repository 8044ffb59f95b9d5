"""The tool gate shared by the create_agent middleware and the StateGraph tool node: open
hitl-core requests for a model turn's tool calls, then let each call run, answer it with a
denial, or pause the graph with `interrupt()` until hitl-core holds a decision."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt
from pydantic import BaseModel, Field

from hitl_core import Agent, ConflictError, Hitl, PermissionRequest, ValidationError

GATES_KEY = "hitl_gates"
"""The state key where the gate keeps, per tool call id, what hitl-core said."""

RUN_ID_KEY = "hitl_run_id"
"""The key that names the hitl-core run: in `config["configurable"]` or the runtime context."""

INTERRUPT_TYPE = "hitl_request"
"""`interrupt()` values of this bridge have `type == INTERRUPT_TYPE`."""

Gate = dict[str, Any]
ToolResult = ToolMessage | Command[Any]


class _Option(BaseModel):
    label: str = Field(description="a short answer the person can pick")
    description: str = Field(default="", description="what picking it means")


class _Question(BaseModel):
    question: str = Field(description="the question, a full sentence")
    header: str = Field(default="", description="a short label for the question")
    options: list[_Option] = Field(description="2 to 4 distinct answers to choose from")
    multiSelect: bool = Field(default=False, description="may the person pick several?")


class _AskInput(BaseModel):
    questions: list[_Question] = Field(description="1 to 4 questions")


class _PlanInput(BaseModel):
    plan: str = Field(description="the plan, step by step, in Markdown")


def _not_gated(**_: Any) -> str:
    return "error: this tool only works with the hitl-core gate (hitl_langgraph) in front of it"


def ask_tool(name: str) -> BaseTool:
    """The ask-a-person tool the model calls with multiple-choice questions."""
    return StructuredTool.from_function(
        func=_not_gated,
        name=name,
        description=(
            "Ask the person you work for 1 to 4 multiple-choice questions when you need "
            "a choice only they can make. The result maps each question to their answer."
        ),
        args_schema=_AskInput,
    )


def plan_tool(name: str) -> BaseTool:
    """The tool the model calls to propose its plan for approval (plan mode)."""
    return StructuredTool.from_function(
        func=_not_gated,
        name=name,
        description=(
            "Propose your plan before doing anything else. Tools stay blocked until a "
            "person approves it; if they ask for changes, propose a revised plan."
        ),
        args_schema=_PlanInput,
    )


def run_id_of(config: Mapping[str, Any] | None, context: object = None) -> str:
    """The hitl-core run id from `config["configurable"]["hitl_run_id"]`, else from the
    runtime context (a `hitl_run_id` key or attribute)."""
    configurable = (config or {}).get("configurable") or {}
    found = configurable.get(RUN_ID_KEY)
    if found is None and context is not None:
        if isinstance(context, Mapping):
            found = context.get(RUN_ID_KEY)
        else:
            found = getattr(context, RUN_ID_KEY, None)
    if not isinstance(found, str):
        raise ValidationError(
            "invalid_config",
            "no hitl-core run for this graph run: pass config={'configurable': "
            "{'thread_id': ..., 'hitl_run_id': run.id}} (hitl_langgraph.run_config(run.id)) "
            "or a context with a hitl_run_id",
        )
    return found


def denial_message(tool: str, source: str | None, reason: str | None) -> str:
    """What the model reads instead of a tool's result when the call is denied: the
    person's reason as written, else a sentence that says why."""
    if reason:
        return reason
    if source == "plan_not_approved":
        return f"{tool} cannot run before a plan is approved: propose a plan first."
    if source == "remembered":
        return f"A person denied {tool} for the rest of this run; it was not run."
    if source == "run_ended":
        return f"{tool} did not run: the run ended before a person decided."
    return f"A person denied this call to {tool}; it was not run."


class ToolGateCore:
    """Both halves of the gate, bound to one engine: `open_calls` for a model turn and
    `decide` for each call before it runs."""

    def __init__(
        self,
        hitl: Hitl,
        *,
        safe_tools: Collection[str] = (),
        ask_tool_name: str | None = "ask_person",
        plan_tool_name: str | None = None,
    ) -> None:
        self.hitl = hitl
        self.safe_tools = frozenset(safe_tools)
        self.ask_name = ask_tool_name
        self.plan_name = plan_tool_name
        self.tools: list[BaseTool] = []
        if ask_tool_name:
            self.tools.append(ask_tool(ask_tool_name))
        if plan_tool_name:
            self.tools.append(plan_tool(plan_tool_name))

    # -- the first half: one node per model turn, before any tool runs -----------------
    def open_calls(
        self, messages: list[AnyMessage], gates: object, run_id: str
    ) -> dict[str, Any] | None:
        """The state update that records hitl-core's answer for every tool call of the
        last AI message that has no result yet. A call already gated (a replayed node)
        keeps its entry, so no request is opened twice."""
        last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if last is None or not last.tool_calls:
            return None
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        known: dict[str, Gate] = dict(gates) if isinstance(gates, Mapping) else {}
        agent = self.hitl.agent(run_id)
        turn: dict[str, Gate] = {}
        opened = False
        for call in last.tool_calls:
            call_id = call["id"]
            if call_id is None or call_id in answered:
                continue
            if call_id in known:
                turn[call_id] = known[call_id]
            else:
                turn[call_id] = self._open(agent, call)
                opened = True
        return {GATES_KEY: turn} if opened else None

    def _open(self, agent: Agent, call: ToolCall) -> Gate:
        name, args = call["name"], dict(call["args"])
        # hitl-core checks what the model sent (422 with the reason when it is wrong)
        questions: Any = args.get("questions")
        plan: Any = args.get("plan")
        if name == self.ask_name:
            return self._open_request("question", name, lambda: agent.ask(questions))
        if name == self.plan_name:
            return self._open_request("plan", name, lambda: agent.propose_plan(plan))
        gate = agent.request_tool(name, args, safe=name in self.safe_tools)
        return {
            "kind": "tool",
            "status": gate.status,
            "source": gate.source,
            "request_id": gate.request_id,
            "reason": gate.reason,
        }

    @staticmethod
    def _open_request(kind: str, name: str, open_it: Callable[[], PermissionRequest]) -> Gate:
        try:
            request = open_it()
        except (ValidationError, ConflictError) as refused:
            if isinstance(refused, ConflictError) and refused.code == "run_not_active":
                raise
            # The model asked wrongly (bad questions, no plan mode): it reads why.
            return {
                "kind": kind,
                "status": "denied",
                "source": refused.code,
                "request_id": None,
                "reason": f"{name} refused: {refused}",
            }
        return {
            "kind": kind,
            "status": "pending",
            "source": None,
            "request_id": request.request_id,
            "reason": None,
        }

    # -- the second half: per tool call, where the call would run -----------------------
    def decide(self, request: ToolCallRequest) -> ToolCallRequest | ToolMessage:
        """The request to run, or the message the model gets instead. Pauses the graph
        (LangGraph's `interrupt()`) while hitl-core has no decision; on resume it reads
        the decision again, so a resume value never overrides hitl-core."""
        call = request.tool_call
        gates = _state_get(request.state, GATES_KEY) or {}
        gate = gates.get(call["id"] or "")
        if gate is None:
            raise ValidationError(
                "invalid_request",
                f"tool call {call['id']} ({call['name']}) was not gated by hitl-core: the "
                "gate node (or HitlMiddleware's after_model) must see every tool call first",
            )
        if gate["status"] == "allowed":
            return request
        if gate["status"] == "denied":
            return _message(call, denial_message(call["name"], gate["source"], gate["reason"]))
        runtime = request.runtime
        agent = self.hitl.agent(run_id_of(runtime.config, runtime.context))
        decided = agent.result(gate["request_id"])
        while decided.is_pending:
            interrupt(_interrupt_value(agent.run_id, decided, call))
            decided = agent.result(gate["request_id"])
        return self._outcome(request, decided)

    def _outcome(
        self, request: ToolCallRequest, decided: PermissionRequest
    ) -> ToolCallRequest | ToolMessage:
        call = request.tool_call
        if decided.status.value == "cancelled":
            return _message(call, denial_message(call["name"], "run_ended", None))
        if decided.kind == "question":
            return _message(call, json.dumps(decided.answers), error=False)
        if decided.kind == "plan":
            if decided.decision == "approve":
                who = f" by {decided.actor}" if decided.actor else ""
                return _message(call, f"The plan was approved{who}. Carry it out.", error=False)
            return _message(
                call,
                f"The person asked for changes: {decided.reason}. Propose a revised plan.",
                error=False,
            )
        if decided.status.value == "allowed":
            return request
        return _message(call, denial_message(call["name"], decided.source, decided.reason))

    def wrap(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]
    ) -> ToolResult:
        """`wrap_tool_call`: run the call only when hitl-core allows it."""
        decided = self.decide(request)
        return decided if isinstance(decided, ToolMessage) else handler(decided)

    async def awrap(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> ToolResult:
        """`awrap_tool_call`: the same, for async graphs."""
        decided = self.decide(request)
        return decided if isinstance(decided, ToolMessage) else await handler(decided)


def _state_get(state: Any, key: str) -> Any:
    if isinstance(state, Mapping):
        return state.get(key)
    return getattr(state, key, None)


def _message(call: ToolCall, content: str, *, error: bool = True) -> ToolMessage:
    return ToolMessage(
        content=content,
        name=call["name"],
        tool_call_id=call["id"] or "",
        status="error" if error else "success",
    )


def _interrupt_value(run_id: str, request: PermissionRequest, call: ToolCall) -> dict[str, Any]:
    return {
        "type": INTERRUPT_TYPE,
        "run_id": run_id,
        "request_id": request.request_id,
        "kind": request.kind,
        "tool_call_id": call["id"],
        "name": call["name"],
        "args": dict(call["args"]),
    }
