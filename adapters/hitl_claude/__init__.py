"""hitl-core for the Claude Agent SDK: a `can_use_tool` callback backed by hitl-core's tool
gate. The callback waits in place for a person's decision without blocking the event
loop; AskUserQuestion becomes a hitl-core question and ExitPlanMode a plan approval.
Needs `pip install 'hitl-core[claude]'`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any

from claude_agent_sdk import (
    CanUseTool,
    PermissionResult,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)

from hitl_core import ConflictError, Hitl, ValidationError

from ._engine import AsyncAgent, agent_for

__all__ = ["ASK_TOOL", "PLAN_TOOL", "can_use_tool"]

ASK_TOOL = "AskUserQuestion"
"""Claude's ask-the-user tool: its questions become a hitl-core question request."""

PLAN_TOOL = "ExitPlanMode"
"""Claude's leave-plan-mode tool: its plan becomes a hitl-core plan request."""


def can_use_tool(
    hitl: Hitl | Any,
    run_id: str,
    *,
    safe_tools: Collection[str] = (),
) -> CanUseTool:
    """The `can_use_tool` callback for `ClaudeAgentOptions`, for hitl-core run `run_id`.

    `hitl` is an engine: `hitl_core.connect(...)` (its calls then run in a worker thread)
    or `hitl_core.aio.connect(...)`. Each tool call Claude asks about becomes
    `agent.request_tool(name, input)`: allowed gives `PermissionResultAllow`, denied
    `PermissionResultDeny` with the person's reason as its message. A pending call is
    awaited in place with `Agent.wait` (in a worker thread, or the asyncio engine's), and
    still after the run is suspended (then on `events.wait` for the run's next event),
    since a Claude session cannot be saved and resumed elsewhere. A run that ends while Claude waits
    denies with `interrupt=True`."""
    safe = frozenset(safe_tools)

    async def callback(
        tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        agent = await agent_for(hitl, run_id)
        key = _key(context.tool_use_id, tool_input)
        try:
            if tool_name == ASK_TOOL:
                return await _ask(agent, tool_input, key)
            if tool_name == PLAN_TOOL:
                return await _plan(agent, tool_input, key)
            return await _tool(agent, tool_name, tool_input, tool_name in safe, key)
        except ConflictError as refused:
            if refused.code != "run_not_active":
                raise
            return PermissionResultDeny(message=_ENDED, interrupt=True)

    return callback


_ENDED = "The run has ended: stop here."


def _key(tool_use_id: str | None, tool_input: dict[str, Any]) -> str | None:
    """The hitl-core request key of a tool use: a digest of its id and its input, so the
    CLI asking again about the same tool use names the same request."""
    if not tool_use_id:
        return None
    text = json.dumps(tool_input, sort_keys=True, default=str)
    return hashlib.sha256(f"{tool_use_id}\0{text}".encode()).hexdigest()


async def _tool(
    agent: AsyncAgent, name: str, tool_input: dict[str, Any], safe: bool, key: str | None
) -> PermissionResult:
    gate = await agent.request_tool(name, tool_input, safe=safe, key=key)
    if gate.status == "allowed":
        return PermissionResultAllow()
    if gate.status == "denied":
        return PermissionResultDeny(message=_denial(name, gate.reason))
    assert gate.request_id is not None
    decided = await agent.decision(gate.request_id)
    if decided.status.value == "allowed":
        return PermissionResultAllow()
    if decided.status.value == "cancelled":
        return PermissionResultDeny(message=_ENDED, interrupt=True)
    return PermissionResultDeny(message=_denial(name, decided.reason))


async def _ask(agent: AsyncAgent, tool_input: dict[str, Any], key: str | None) -> PermissionResult:
    try:
        asked = await agent.ask(tool_input.get("questions"), key=key)
    except (ValidationError, ConflictError) as refused:
        if refused.code == "run_not_active":
            raise
        return PermissionResultDeny(message=f"{ASK_TOOL} refused: {refused}")
    decided = await agent.decision(asked.request_id)
    if decided.status.value == "cancelled":
        return PermissionResultDeny(message=_ENDED, interrupt=True)
    answers = {
        question: ", ".join(answer) if isinstance(answer, list) else answer
        for question, answer in (decided.answers or {}).items()
    }
    return PermissionResultAllow(updated_input={**tool_input, "answers": answers})


async def _plan(agent: AsyncAgent, tool_input: dict[str, Any], key: str | None) -> PermissionResult:
    try:
        proposed = await agent.propose_plan(tool_input.get("plan"), key=key)
    except ConflictError as refused:
        if refused.code == "not_plan_mode":
            return PermissionResultAllow()  # the hitl-core run has no plan to approve
        raise
    except ValidationError as refused:
        return PermissionResultDeny(message=f"{PLAN_TOOL} refused: {refused}")
    decided = await agent.decision(proposed.request_id)
    if decided.status.value == "cancelled":
        return PermissionResultDeny(message=_ENDED, interrupt=True)
    if decided.decision == "approve":
        return PermissionResultAllow()
    return PermissionResultDeny(message=f"Revise the plan: {decided.reason}")


def _denial(tool: str, reason: str | None) -> str:
    return reason or f"A person denied this call to {tool}; it was not run."
