"""The agent side as coroutines, whichever engine the host passed: an asyncio engine
(`hitl_core.aio.connect`) is awaited directly; a synchronous one (`hitl_core.connect`)
runs each call in a worker thread, so the event loop never blocks on the store."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from hitl_core import Agent, Hitl, PermissionRequest, ToolGate


class AsyncAgent(Protocol):
    """What the callback needs of the agent side, as coroutines."""

    async def request_tool(
        self, name: str, tool_input: dict[str, Any], *, safe: bool
    ) -> ToolGate: ...
    async def ask(self, questions: Any) -> PermissionRequest: ...
    async def propose_plan(self, plan_text: Any) -> PermissionRequest: ...
    async def decision(self, request_id: str) -> PermissionRequest: ...


async def agent_for(hitl: Hitl | Any, run_id: str, poll: float) -> AsyncAgent:
    """The agent side of `run_id` on `hitl`, as coroutines."""
    if isinstance(hitl, Hitl):
        return _Threaded(await asyncio.to_thread(hitl.agent, run_id), poll)
    return _Awaited(await hitl.agent(run_id), poll)


class _Threaded:
    """A synchronous engine's agent side, one worker thread call at a time."""

    def __init__(self, agent: Agent, poll: float) -> None:
        self._agent = agent
        self._poll = poll

    async def request_tool(self, name: str, tool_input: dict[str, Any], *, safe: bool) -> ToolGate:
        return await asyncio.to_thread(self._agent.request_tool, name, tool_input, safe=safe)

    async def ask(self, questions: Any) -> PermissionRequest:
        return await asyncio.to_thread(self._agent.ask, questions)

    async def propose_plan(self, plan_text: Any) -> PermissionRequest:
        return await asyncio.to_thread(self._agent.propose_plan, plan_text)

    async def decision(self, request_id: str) -> PermissionRequest:
        wait = getattr(self._agent, "wait", None)  # SPEC 14's Agent.wait, where it exists
        while True:
            if wait is not None:
                request: PermissionRequest = await asyncio.to_thread(
                    wait, request_id, timeout=self._poll
                )
            else:
                request = await asyncio.to_thread(self._agent.result, request_id)
            if not request.is_pending:
                return request
            await asyncio.sleep(self._poll)


class _Awaited:
    """An asyncio engine's agent side (`hitl_core.aio`): its wait never blocks the loop."""

    def __init__(self, agent: Any, poll: float) -> None:
        self._agent = agent
        self._poll = poll

    async def request_tool(self, name: str, tool_input: dict[str, Any], *, safe: bool) -> ToolGate:
        gate: ToolGate = await self._agent.request_tool(name, tool_input, safe=safe)
        return gate

    async def ask(self, questions: Any) -> PermissionRequest:
        request: PermissionRequest = await self._agent.ask(questions)
        return request

    async def propose_plan(self, plan_text: Any) -> PermissionRequest:
        request: PermissionRequest = await self._agent.propose_plan(plan_text)
        return request

    async def decision(self, request_id: str) -> PermissionRequest:
        request: PermissionRequest = await self._agent.wait(request_id)
        while request.is_pending:  # the run was suspended: Claude still waits on this call
            await asyncio.sleep(self._poll)
            request = await self._agent.wait(request_id, timeout=self._poll)
        return request
