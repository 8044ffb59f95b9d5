"""The tool gate shared by the create_agent middleware and the StateGraph tool node: each
tool call becomes a hitl-core request where the call would run, and runs, is answered
with a denial, or pauses the graph with `interrupt()` until hitl-core holds a decision."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt
from pydantic import BaseModel, Field

from hitl_core import Agent, ConflictError, Hitl, PermissionRequest, ToolGate, ValidationError

RUN_ID_KEY = "hitl_run_id"
"""The key that names the hitl-core run: in `config["configurable"]` or the runtime context."""

INTERRUPT_TYPE = "hitl_request"
"""`interrupt()` values of this bridge have `type == INTERRUPT_TYPE`."""

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
    """The gate, bound to one engine: `decide` asks hitl-core about a tool call where the
    call would run, and pauses the graph while a person decides."""

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

    def decide(self, request: ToolCallRequest) -> ToolCallRequest | ToolMessage:
        """The request to run, or the message the model gets instead.

        The call's hitl-core request is keyed by the tool call (its id and arguments), so
        the task LangGraph re-runs on resume finds the request it opened instead of
        opening another. While hitl-core has no decision the graph pauses with
        `interrupt()`; on resume the decision is read again, so a resume value never
        overrides hitl-core."""
        call = request.tool_call
        if not call.get("id"):
            raise ValidationError(
                "invalid_request",
                f"tool call {call['name']} has no id: hitl-core keys its request by the id",
            )
        runtime = request.runtime
        agent = self.hitl.agent(run_id_of(runtime.config, runtime.context))
        opened = self._open(agent, call)
        if isinstance(opened, ToolMessage):
            return opened
        if isinstance(opened, ToolGate):
            if opened.status == "allowed":
                return request
            if opened.status == "denied":
                return _message(call, denial_message(call["name"], opened.source, opened.reason))
            assert opened.request_id is not None
            decided = agent.result(opened.request_id)
        else:
            decided = opened
        while decided.is_pending:
            interrupt(_interrupt_value(agent.run_id, decided, call))
            decided = agent.result(decided.request_id)
        return self._outcome(request, decided)

    def _open(self, agent: Agent, call: ToolCall) -> ToolGate | PermissionRequest | ToolMessage:
        """What hitl-core says about the call now (its keyed request, if one is open)."""
        name, args, key = call["name"], dict(call["args"]), call_key(call)
        # hitl-core checks what the model sent (422 with the reason when it is wrong)
        questions: Any = args.get("questions")
        plan: Any = args.get("plan")
        if name not in (self.ask_name, self.plan_name):
            return agent.request_tool(name, args, safe=name in self.safe_tools, key=key)
        try:
            if name == self.ask_name:
                return agent.ask(questions, key=key)
            return agent.propose_plan(plan, key=key)
        except (ValidationError, ConflictError) as refused:
            if refused.code == "run_not_active":
                raise
            # The model asked wrongly (bad questions, no plan mode): it reads why.
            return _message(call, f"{name} refused: {refused}")

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
        """`awrap_tool_call`: the same, for async graphs; the engine's synchronous store
        calls run off the event loop (with the graph's context, so `interrupt()` works)."""
        decided = await asyncio.to_thread(self.decide, request)
        return decided if isinstance(decided, ToolMessage) else await handler(decided)


def call_key(call: ToolCall) -> str:
    """The hitl-core request key of a tool call: a digest of its id and its arguments, so
    a model that reuses an id for another call never gets the earlier call's decision."""
    arguments = json.dumps(call["args"], sort_keys=True, default=str)
    return hashlib.sha256(f"{call['id']}\0{arguments}".encode()).hexdigest()


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
