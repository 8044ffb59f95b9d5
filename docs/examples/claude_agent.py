"""A Claude Agent SDK agent whose tool permissions come from hitl-core. Claude asks before
a Bash command; the callback waits (without blocking the event loop) until a person
decides in hitl-core, here from another task a moment later. Runs offline as written:

    python docs/examples/claude_agent.py

Offline, `ScriptedCLI` stands in for the Claude Code CLI: it speaks the SDK's control
protocol (initialize, a tool use, a `can_use_tool` request, the result) and records the
permission answers the SDK sends back. With an API key, `--live` runs the real CLI
instead (`pip install 'hitl-core[claude]'`; the CLI is bundled with the SDK).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, Transport, query
from hitl_claude import can_use_tool

import hitl_core


class ScriptedCLI(Transport):
    """A stand-in for the Claude Code CLI. `turns` is what the model does, in order: a
    list of tool uses `(name, input)` (asked about together, as parallel calls), or a
    final text. `answers` collects the SDK's permission answers by tool use id."""

    def __init__(self, turns: list[list[tuple[str, dict[str, Any]]] | str]) -> None:
        self.turns = turns
        self.answers: dict[str, dict[str, Any]] = {}
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        pass

    def is_ready(self) -> bool:
        return True

    async def end_input(self) -> None:
        pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._out.put_nowait(None)

    async def write(self, data: str) -> None:
        for line in data.splitlines():
            message = json.loads(line)
            if message["type"] == "control_request":  # the SDK's initialize
                reply = {"subtype": "success", "request_id": message["request_id"], "response": {}}
                await self._out.put({"type": "control_response", "response": reply})
            elif message["type"] == "control_response":  # a permission answer
                answer = message["response"]
                self._waiting.pop(answer["request_id"]).set_result(answer.get("response", {}))
            elif message["type"] == "user":  # the prompt: the model starts
                self._tasks.append(asyncio.create_task(self._play()))

    async def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        while (message := await self._out.get()) is not None:
            yield message

    async def _play(self) -> None:
        base = {"session_id": "session-1", "parent_tool_use_id": None}
        await self._out.put({"type": "system", "subtype": "init", **base})
        count = 0
        for turn in self.turns:
            if isinstance(turn, str):
                await self._say(base, [{"type": "text", "text": turn}])
                continue
            uses = []
            for name, tool_input in turn:
                count += 1
                uses.append(
                    {"type": "tool_use", "id": f"toolu_{count}", "name": name, "input": tool_input}
                )
            await self._say(base, uses)
            answers = await asyncio.gather(*(self._ask(use) for use in uses))
            results = []
            for use, answer in zip(uses, answers, strict=True):
                self.answers[use["id"]] = answer
                if answer.get("interrupt"):
                    return await self._end(base, is_error=True)
                allowed = answer["behavior"] == "allow"
                text = f"ran {use['name']}" if allowed else answer["message"]
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": use["id"],
                        "content": text,
                        "is_error": not allowed,
                    }
                )
            await self._out.put(
                {"type": "user", "message": {"role": "user", "content": results}, **base}
            )
        await self._end(base, is_error=False)

    async def _say(self, base: dict[str, Any], content: list[dict[str, Any]]) -> None:
        message = {"role": "assistant", "model": "scripted", "content": content}
        await self._out.put({"type": "assistant", "message": message, **base})

    async def _ask(self, use: dict[str, Any]) -> dict[str, Any]:
        request_id = f"perm_{use['id']}"
        self._waiting[request_id] = asyncio.get_running_loop().create_future()
        request = {
            "subtype": "can_use_tool",
            "tool_name": use["name"],
            "input": use["input"],
            "tool_use_id": use["id"],
            "permission_suggestions": [],
            "blocked_path": None,
        }
        await self._out.put(
            {"type": "control_request", "request_id": request_id, "request": request}
        )
        return await self._waiting[request_id]

    async def _end(self, base: dict[str, Any], *, is_error: bool) -> None:
        await self._out.put(
            {
                "type": "result",
                "subtype": "error_during_execution" if is_error else "success",
                "duration_ms": 1,
                "duration_api_ms": 1,
                "is_error": is_error,
                "num_turns": 1,
                "result": "stopped" if is_error else "done",
                **base,
            }
        )
        await self._out.put(None)


async def main(live: bool) -> None:
    folder = Path(tempfile.mkdtemp())
    with hitl_core.connect(f"sqlite:///{folder / 'hitl.db'}") as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        options = ClaudeAgentOptions(
            can_use_tool=can_use_tool(hitl, run.id, safe_tools=["Read", "Grep"]),
            cwd=str(folder),
        )
        cli = ScriptedCLI([[("Bash", {"command": "rm -rf build/"})], "Cleaned the build."])

        async def person() -> None:
            """An approval front end: it sees the request and allows it, a bit later."""
            while not (pending := hitl.runs.pending()):
                await asyncio.sleep(0.05)
            print("person sees:", pending[0].tool_name, pending[0].tool_input)
            hitl.runs.approve(run.id, request_id=pending[0].request_id, actor="alice")

        front_end = asyncio.create_task(person())
        async for message in query(
            prompt="Clean the build directory", options=options, transport=None if live else cli
        ):
            if isinstance(message, ResultMessage):
                print("result:", message.result)
        await front_end
        if not live:
            print("the SDK answered:", cli.answers["toolu_1"]["behavior"])
        print("decided by:", hitl.runs.permissions(run.id)[0].actor)
        hitl.agent(run.id).complete()


if __name__ == "__main__":
    asyncio.run(main(live="--live" in sys.argv))
