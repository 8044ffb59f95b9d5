"""`HitlMiddleware`: hitl-core's tool gate as a LangChain v1 `create_agent` middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ToolCallRequest

from hitl_core import Hitl

from ._gate import ToolGateCore, ToolResult


class HitlMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Send every tool call of a `create_agent` agent through hitl-core's tool gate.

    Each call becomes `agent.request_tool` (an `ask_tool_name` call `agent.ask`, a
    `plan_tool_name` call `agent.propose_plan`) right where it would run. Allowed calls
    run, denied ones answer the model with the person's reason, and pending ones pause
    the graph with `interrupt()` until hitl-core has a decision. The run is
    `config["configurable"]["hitl_run_id"]` (or a `hitl_run_id` in the runtime context);
    the agent needs a checkpointer."""

    def __init__(
        self,
        hitl: Hitl,
        *,
        safe_tools: Collection[str] = (),
        ask_tool_name: str | None = "ask_person",
        plan_tool_name: str | None = None,
    ) -> None:
        super().__init__()
        self._gate = ToolGateCore(
            hitl, safe_tools=safe_tools, ask_tool_name=ask_tool_name, plan_tool_name=plan_tool_name
        )
        self.tools = list(self._gate.tools)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]
    ) -> ToolResult:
        """Run the call if hitl-core allows it; pause while a person decides."""
        return self._gate.wrap(request, handler)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> ToolResult:
        """The async twin of `wrap_tool_call`."""
        return await self._gate.awrap(request, handler)
