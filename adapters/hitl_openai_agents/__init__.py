"""hitl-core for the OpenAI Agents SDK: `needs_approval` backed by hitl-core's tool gate, a
tool input guardrail that makes hitl-core's decision final, and helpers that apply
hitl-core's decisions to a paused `RunState` and resume it. Needs
`pip install 'hitl-core[openai-agents]'`."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, MutableMapping
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

from hitl_core import Hitl, PermissionRequest, ValidationError

__all__ = ["REQUESTS_KEY", "RUN_ID_KEY", "HitlGate"]

RUN_ID_KEY = "hitl_run_id"
"""The key (or attribute) of the run context that names the hitl-core run."""

REQUESTS_KEY = "hitl_requests"
"""The key (or attribute) of the run context where the gate keeps, per tool call id, the
hitl-core request it waits on or the denial it already has. It travels with the context
through `RunState.to_string()`."""

Entry = dict[str, Any]


def _denial_message(tool: str, source: str | None, reason: str | None) -> str:
    """What the model reads instead of a tool's result when the call is denied: the
    person's reason as written, else a sentence that says why."""
    if reason:
        return reason
    if source == "run_ended":
        return f"{tool} did not run: the run ended before a person decided."
    return f"A person denied this call to {tool}; it was not run."


class HitlGate:
    """hitl-core's tool gate for the OpenAI Agents SDK, bound to one engine.

    Wrap each function tool with `gate.tool(...)`: every call becomes
    `agent.request_tool(name, arguments)` in the run named by the run context's
    `hitl_run_id` (a dict context, or an object with that attribute). Allowed calls run,
    denied ones answer the model with the reason, pending ones interrupt the run
    (`result.interruptions`). `apply_decisions` and `resume` carry hitl-core's decisions
    into the paused `RunState`."""

    def __init__(self, hitl: Hitl, *, safe_tools: Collection[str] = ()) -> None:
        self.hitl = hitl
        self.safe_tools = frozenset(safe_tools)
        self.guardrail: ToolInputGuardrail[Any] = ToolInputGuardrail(
            guardrail_function=self._guard, name="hitl_core"
        )

    def tool(self, function_tool: FunctionTool) -> FunctionTool:
        """A copy of `function_tool` whose calls go through hitl-core: its
        `needs_approval` asks the gate, and a tool input guardrail (added to its own)
        denies with the reason whatever the SDK state was told."""
        name = function_tool.name
        safe = name in self.safe_tools

        async def needs_approval(
            ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            return self._needs_approval(ctx.context, name, params, call_id, safe)

        gated = copy.copy(function_tool)
        gated.needs_approval = needs_approval
        gated.tool_input_guardrails = [*(function_tool.tool_input_guardrails or []), self.guardrail]
        return gated

    # -- while the run goes ----------------------------------------------------------------
    def _needs_approval(
        self, context: object, name: str, params: dict[str, Any], call_id: str, safe: bool
    ) -> bool:
        entries = _entries(context, create=True)
        if call_id in entries:  # asked again for the same call: the first answer stands
            return bool(entries[call_id]["status"] == "pending")
        gate = self.hitl.agent(_run_id(context)).request_tool(name, params, safe=safe)
        if gate.status == "allowed":
            return False
        entries[call_id] = {
            "status": gate.status,
            "request_id": gate.request_id,
            "source": gate.source,
            "reason": gate.reason,
        }
        # denied at once (remembered, plan not approved): no pause; the guardrail answers
        return gate.status == "pending"

    def _guard(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        tool = data.context
        entries = _entries(tool.context, create=False)
        entry = entries.pop(tool.tool_call_id, None)
        if entry is None:  # allowed at once, or approved for good (remember)
            return ToolGuardrailFunctionOutput.allow()
        if entry["status"] == "denied":
            return ToolGuardrailFunctionOutput.reject_content(
                _denial_message(tool.tool_name, entry["source"], entry["reason"])
            )
        decided = self.hitl.agent(_run_id(tool.context)).result(entry["request_id"])
        if decided.status.value == "allowed":
            return ToolGuardrailFunctionOutput.allow()
        if decided.is_pending:  # the SDK state was approved, hitl-core was not: no run
            entries[tool.tool_call_id] = entry
            return ToolGuardrailFunctionOutput.reject_content(
                f"{tool.tool_name} did not run: no person has approved it yet."
            )
        return ToolGuardrailFunctionOutput.reject_content(
            _denial_message(tool.tool_name, decided.source, decided.reason)
        )

    # -- when the run is paused ------------------------------------------------------------
    def waiting_on(self, state: RunState[Any, Any]) -> list[str]:
        """The hitl-core request ids of the paused run's interruptions, in order."""
        _, entries = _state_context(state)
        return [
            entries[item.call_id]["request_id"]
            for item in state.get_interruptions()
            if item.call_id in entries and entries[item.call_id]["request_id"]
        ]

    def apply_decisions(self, state: RunState[Any, Any]) -> list[ToolApprovalItem]:
        """Apply hitl-core's decision to each interruption of `state`: an allow approves
        it (`always_approve` when the person said remember), a deny rejects it with the
        reason as the rejection message (`always_reject` when remembered). Returns the
        interruptions that still wait for a person."""
        context, entries = _state_context(state)
        agent = self.hitl.agent(_run_id(context))
        waiting: list[ToolApprovalItem] = []
        for item in state.get_interruptions():
            entry = entries.get(item.call_id or "")
            if entry is None or not entry.get("request_id"):
                waiting.append(item)  # not one of ours: the host decides it
                continue
            decided = agent.result(entry["request_id"])
            if decided.is_pending:
                waiting.append(item)
            elif decided.status.value == "allowed":
                state.approve(item, always_approve=decided.remember)
            else:
                state.reject(
                    item,
                    always_reject=decided.remember,
                    rejection_message=_rejection(item, decided),
                )
        return waiting

    async def resume(
        self, agent: Agent[Any], state: RunState[Any, Any], **run_options: Any
    ) -> RunResult:
        """Apply hitl-core's decisions to `state` and run on (`Runner.run(agent, state,
        **run_options)`). Calls that still wait stay interruptions of the result."""
        self.apply_decisions(state)
        return await Runner.run(agent, state, **run_options)


def _rejection(item: ToolApprovalItem, decided: PermissionRequest) -> str:
    return _denial_message(item.tool_name or decided.tool_name, decided.source, decided.reason)


def _run_id(context: object) -> str:
    found = _field(context, RUN_ID_KEY)
    if not isinstance(found, str):
        raise ValidationError(
            "invalid_config",
            "no hitl-core run for this agent run: pass context={'hitl_run_id': run.id} "
            "(or a context object with a hitl_run_id attribute) to Runner.run",
        )
    return found


def _field(context: object, key: str) -> Any:
    if isinstance(context, Mapping):
        return context.get(key)
    return getattr(context, key, None)


def _entries(context: object, *, create: bool) -> dict[str, Entry]:
    """The gate's entries in the run context, made on first use."""
    found = _field(context, REQUESTS_KEY)
    if isinstance(found, dict):
        return found
    entries: dict[str, Entry] = {}
    if create:
        if isinstance(context, MutableMapping):
            context[REQUESTS_KEY] = entries
        else:
            try:
                setattr(context, REQUESTS_KEY, entries)
            except AttributeError as error:
                raise ValidationError(
                    "invalid_config",
                    "the run context must be a dict or an object that can hold "
                    f"{REQUESTS_KEY}: {error}",
                ) from error
    return entries


def _state_context(state: RunState[Any, Any]) -> tuple[Mapping[str, Any], dict[str, Entry]]:
    """The run context as `RunState.to_json()` serializes it, and the gate's entries."""
    context = state.to_json()["context"]["context"] or {}
    entries = context.get(REQUESTS_KEY)
    return context, entries if isinstance(entries, dict) else {}
