"""hitl-core for the OpenAI Agents SDK: `needs_approval` backed by hitl-core's tool gate, a
tool input guardrail that makes hitl-core's decision final, and helpers that apply
hitl-core's decisions to a paused `RunState` and resume it. Needs
`pip install 'hitl-core[openai-agents]'`."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any

from agents import (
    Agent,
    FunctionTool,
    RunContextWrapper,
    Runner,
    RunResult,
    RunState,
    ToolApprovalItem,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrail,
    ToolInputGuardrailData,
)

from hitl_core import Hitl, PermissionRequest, ToolGate, ValidationError

__all__ = ["RUN_ID_KEY", "HitlGate"]

RUN_ID_KEY = "hitl_run_id"
"""The key (or attribute) of the run context that names the hitl-core run."""


def _denial_message(tool: str, source: str | None, reason: str | None) -> str:
    """What the model reads instead of a tool's result when the call is denied: the
    person's reason as written, else a sentence that says why."""
    if reason:
        return reason
    if source == "run_ended":
        return f"{tool} did not run: the run ended before a person decided."
    return f"A person denied this call to {tool}; it was not run."


def _call_key(call_id: str, arguments: Any) -> str:
    """The hitl-core request key of a tool call: a digest of its id and its arguments, so
    the same call always names the same request, and a reused id with other arguments
    never gets the earlier call's decision."""
    text = json.dumps(arguments, sort_keys=True, default=str)
    return hashlib.sha256(f"{call_id}\0{text}".encode()).hexdigest()


class HitlGate:
    """hitl-core's tool gate for the OpenAI Agents SDK, bound to one engine.

    Wrap each function tool with `gate.tool(...)`: every call becomes
    `agent.request_tool(name, arguments, key=...)` in the run named by the run context's
    `hitl_run_id` (a dict key, or an attribute), keyed by the call id and arguments so
    that asking again names the same request. Allowed calls run, denied ones answer the
    model with the reason, pending ones interrupt the run (`result.interruptions`).
    `apply_decisions` and `resume` carry hitl-core's decisions into the paused
    `RunState`."""

    def __init__(self, hitl: Hitl, *, safe_tools: Collection[str] = ()) -> None:
        self.hitl = hitl
        self.safe_tools = frozenset(safe_tools)
        self.guardrail: ToolInputGuardrail[Any] = ToolInputGuardrail(
            guardrail_function=self._guard, name="hitl_core"
        )

    def tool(self, function_tool: FunctionTool) -> FunctionTool:
        """A copy of `function_tool` whose calls go through hitl-core: its
        `needs_approval` asks the gate, and a tool input guardrail (added to its own)
        asks again just before the tool runs, so only hitl-core's allow runs it."""
        name = function_tool.name

        async def needs_approval(
            ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            # denied at once (remembered, plan not approved): no pause; the guardrail answers
            # (the engine is synchronous: its store call runs off the event loop)
            gate = await asyncio.to_thread(self._ask, ctx.context, name, params, call_id)
            return gate.status == "pending"

        setattr(needs_approval, _MARK, True)
        gated = copy.copy(function_tool)
        gated.needs_approval = needs_approval
        gated.tool_input_guardrails = [*(function_tool.tool_input_guardrails or []), self.guardrail]
        return gated

    def _ask(self, context: object, name: str, arguments: Any, call_id: str) -> ToolGate:
        agent = self.hitl.agent(_run_id(context))
        key = _call_key(call_id, arguments)
        return agent.request_tool(name, arguments, safe=name in self.safe_tools, key=key)

    async def _guard(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        tool = data.context
        gate = await asyncio.to_thread(
            self._ask,
            tool.context,
            tool.tool_name,
            _arguments(tool.tool_arguments),
            tool.tool_call_id,
        )
        if gate.status == "allowed":
            return ToolGuardrailFunctionOutput.allow()
        if gate.status == "pending":  # the SDK state was approved, hitl-core was not
            return ToolGuardrailFunctionOutput.reject_content(
                f"{tool.tool_name} did not run: no person has approved it yet."
            )
        return ToolGuardrailFunctionOutput.reject_content(
            _denial_message(tool.tool_name, gate.source, gate.reason)
        )

    # -- when the run is paused ------------------------------------------------------------
    def _decisions(
        self, state: RunState[Any, Any]
    ) -> list[tuple[ToolApprovalItem, PermissionRequest | None]]:
        """Each interruption with the hitl-core request it waits on (None: not the gate's)."""
        context = _state_context(state)
        found: list[tuple[ToolApprovalItem, PermissionRequest | None]] = []
        agent = None
        for item in state.get_interruptions():
            if not item.call_id or not item.tool_name or not _gated(item):
                found.append((item, None))
                continue
            if agent is None:
                agent = self.hitl.agent(_run_id(context))
            gate = self._ask(context, item.tool_name, _arguments(item.arguments), item.call_id)
            request = agent.result(gate.request_id) if gate.request_id else None
            found.append((item, request))
        return found

    def waiting_on(self, state: RunState[Any, Any]) -> list[str]:
        """The hitl-core request ids of the paused run's interruptions, in order."""
        return [request.request_id for _, request in self._decisions(state) if request]

    def apply_decisions(self, state: RunState[Any, Any]) -> list[ToolApprovalItem]:
        """Apply hitl-core's decision to each interruption of `state`: an allow approves
        it (`always_approve` when the person said remember), a deny rejects it with the
        reason as the rejection message (`always_reject` when remembered). Returns the
        interruptions that still wait for a person (or are not the gate's)."""
        waiting: list[ToolApprovalItem] = []
        for item, decided in self._decisions(state):
            if decided is None or decided.is_pending:
                waiting.append(item)
            elif decided.status.value == "allowed":
                state.approve(item, always_approve=decided.remember)
            else:
                state.reject(
                    item,
                    always_reject=decided.remember,
                    rejection_message=_denial_message(
                        item.tool_name or decided.tool_name, decided.source, decided.reason
                    ),
                )
        return waiting

    async def resume(
        self, agent: Agent[Any], state: RunState[Any, Any], **run_options: Any
    ) -> RunResult:
        """Apply hitl-core's decisions to `state` and run on (`Runner.run(agent, state,
        **run_options)`). Calls that still wait stay interruptions of the result."""
        self.apply_decisions(state)
        return await Runner.run(agent, state, **run_options)


_MARK = "_hitl_core_gate"
"""Set on the `needs_approval` functions of gated tools, so a gate (this process's or a
restarted host's) knows which interruptions are hitl-core's."""


def _gated(item: ToolApprovalItem) -> bool:
    """True when the interruption is a call of a tool that `HitlGate.tool` wrapped."""
    tools = getattr(item.agent, "tools", None) or []
    for tool in tools:
        if isinstance(tool, FunctionTool) and tool.name == item.tool_name:
            return bool(getattr(tool.needs_approval, _MARK, False))
    return False


def _arguments(text: str | None) -> Any:
    """A call's arguments as the SDK hands them to `needs_approval` (a dict), from the
    JSON text the model sent."""
    try:
        parsed = json.loads(text or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _run_id(context: object) -> str:
    found = (
        context.get(RUN_ID_KEY)
        if isinstance(context, Mapping)
        else getattr(context, RUN_ID_KEY, None)
    )
    if not isinstance(found, str):
        raise ValidationError(
            "invalid_config",
            "no hitl-core run for this agent run: pass context={'hitl_run_id': run.id} "
            "(or a context object with a hitl_run_id attribute) to Runner.run",
        )
    return found


def _state_context(state: RunState[Any, Any]) -> Mapping[str, Any]:
    """The run context of a paused state, as `RunState.to_json()` serializes it."""
    context = state.to_json()["context"]["context"]
    return context if isinstance(context, Mapping) else {}
