"""The agent side as coroutines, whichever engine the host passed: an asyncio engine
(`hitl_core.aio.connect`, SPEC 14) is awaited directly; a synchronous one
(`hitl_core.connect`) runs each call in a worker thread, so the event loop never blocks
on the store or on a wait."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from hitl_core import Agent, Hitl, PermissionRequest, ToolGate

WAIT_WINDOW = 5.0
"""Seconds (of the engine's clock) one `Agent.wait` may block its worker thread before
it comes back and waits again."""


class AsyncAgent(Protocol):
    """What the callback needs of the agent side, as coroutines."""

    async def request_tool(
        self, name: str, tool_input: dict[str, Any], *, safe: bool, key: str | None
    ) -> ToolGate: ...

    async def ask(self, questions: Any, *, key: str | None) -> PermissionRequest: ...

    async def propose_plan(self, plan_text: Any, *, key: str | None) -> PermissionRequest: ...

    async def decision(self, request_id: str) -> PermissionRequest: ...


async def agent_for(hitl: Hitl | Any, run_id: str) -> AsyncAgent:
    """The agent side of `run_id` on `hitl`, as coroutines."""
    if isinstance(hitl, Hitl):
        return _Threaded(await asyncio.to_thread(hitl.agent, run_id), hitl)
    return _Awaited(await hitl.agent(run_id), hitl)


class _Threaded:
    """A synchronous engine's agent side, each call in a worker thread."""

    def __init__(self, agent: Agent, hitl: Hitl) -> None:
        self._agent = agent
        self._hitl = hitl

    async def request_tool(
        self, name: str, tool_input: dict[str, Any], *, safe: bool, key: str | None
    ) -> ToolGate:
        return await asyncio.to_thread(
            self._agent.request_tool, name, tool_input, safe=safe, key=key
        )

    async def ask(self, questions: Any, *, key: str | None) -> PermissionRequest:
        return await asyncio.to_thread(self._agent.ask, questions, key=key)

    async def propose_plan(self, plan_text: Any, *, key: str | None) -> PermissionRequest:
        return await asyncio.to_thread(self._agent.propose_plan, plan_text, key=key)

    async def decision(self, request_id: str) -> PermissionRequest:
        events = self._hitl.events
        while True:
            seen = await asyncio.to_thread(events.last_id)
            # Agent.wait wakes on a decision made in any thread or process
            request = await asyncio.to_thread(self._agent.wait, request_id, timeout=WAIT_WINDOW)
            if not request.is_pending:
                return request
            # suspended, so wait returns at once: sleep until the run's next event instead
            await asyncio.to_thread(
                events.wait, after=seen, run_id=self._agent.run_id, timeout=WAIT_WINDOW
            )


class _Awaited:
    """An asyncio engine's agent side (`hitl_core.aio`): its wait never blocks the loop."""

    def __init__(self, agent: Any, hitl: Any) -> None:
        self._agent = agent
        self._hitl = hitl

    async def request_tool(
        self, name: str, tool_input: dict[str, Any], *, safe: bool, key: str | None
    ) -> ToolGate:
        gate: ToolGate = await self._agent.request_tool(name, tool_input, safe=safe, key=key)
        return gate

    async def ask(self, questions: Any, *, key: str | None) -> PermissionRequest:
        request: PermissionRequest = await self._agent.ask(questions, key=key)
        return request

    async def propose_plan(self, plan_text: Any, *, key: str | None) -> PermissionRequest:
        request: PermissionRequest = await self._agent.propose_plan(plan_text, key=key)
        return request

    async def decision(self, request_id: str) -> PermissionRequest:
        events = self._hitl.events
        while True:
            seen = await events.last_id()
            request: PermissionRequest = await self._agent.wait(request_id, timeout=WAIT_WINDOW)
            if not request.is_pending:
                return request
            # suspended, so wait returns at once: sleep until the run's next event instead
            await events.wait(after=seen, run_id=self._agent.run_id, timeout=WAIT_WINDOW)
