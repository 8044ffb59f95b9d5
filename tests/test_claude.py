"""hitl_claude against the real Claude Agent SDK: its `query()` and control protocol drive
the `can_use_tool` callback, with docs/examples/claude_agent.py's ScriptedCLI standing in
for the CLI (which needs an API key). The callback waits for hitl-core's decision without
blocking the event loop, allows or denies with the person's reason, maps AskUserQuestion
and ExitPlanMode, skips the wait for remembered and pre-approved tools, keeps waiting
through a suspension, stops on a cancelled run, and takes `hitl approve` from another
process."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("claude_agent_sdk", reason="pip install -e '.[claude]'")

from claude_agent_sdk import (
    ClaudeAgentOptions,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    ToolPermissionContext,
    query,
)
from hitl_claude import can_use_tool

import hitl_core


def _scripted_cli() -> Any:
    """The example's stand-in CLI, loaded from its file (docs/examples is no package)."""
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "claude_agent.py"
    spec = importlib.util.spec_from_file_location("claude_agent_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScriptedCLI


ScriptedCLI = _scripted_cli()

HITL = str(Path(sys.executable).parent / "hitl")

Person = Callable[[], Awaitable[None]]


@pytest.fixture
def hitl() -> Iterator[hitl_core.Hitl]:
    with hitl_core.connect("memory://") as engine:
        yield engine


def approval_run(hitl: hitl_core.Hitl, **settings: Any) -> hitl_core.Run:
    return hitl.runs.create(
        **{"human_in_the_loop": True, "permission_mode": "approval", **settings}
    )


def play(
    callback: Any, turns: list[Any], person: Person | None = None
) -> tuple[Any, ResultMessage]:
    """Run one query through the SDK with the scripted CLI, and a person (a task) deciding
    meanwhile; return the CLI (its recorded answers) and the result message."""
    cli = ScriptedCLI(turns)

    async def scenario() -> ResultMessage:
        deciding = asyncio.create_task(person()) if person else None
        result = None
        async for message in query(
            prompt="go", options=ClaudeAgentOptions(can_use_tool=callback), transport=cli
        ):
            if isinstance(message, ResultMessage):
                result = message
        if deciding:
            await deciding
        assert result is not None
        return result

    return cli, asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def pending(hitl: hitl_core.Hitl, count: int = 1) -> list[hitl_core.PermissionRequest]:
    """Wait (without blocking the loop) until `count` requests are pending."""
    while len(found := hitl.runs.pending()) < count:
        await asyncio.sleep(0.01)
    return found


def test_a_pending_call_waits_without_blocking_the_loop_and_is_allowed(
    hitl: hitl_core.Hitl,
) -> None:
    run = approval_run(hitl)
    beats = 0

    async def person() -> None:
        nonlocal beats
        [request] = await pending(hitl)
        while beats < 5:  # the event loop keeps running while the callback waits
            beats += 1
            await asyncio.sleep(0.01)
        assert request.tool_input == {"command": "make clean"}
        hitl.runs.approve(run.id, request_id=request.request_id, actor="alice")

    cli, result = play(
        can_use_tool(hitl, run.id),
        [[("Bash", {"command": "make clean"})], "done"],
        person,
    )
    assert cli.answers["toolu_1"] == {
        "behavior": "allow",
        "updatedInput": {"command": "make clean"},
    }
    assert result.result == "done" and not result.is_error
    assert hitl.runs.permissions(run.id)[0].actor == "alice"


def test_a_denial_hands_the_person_s_reason_to_claude(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)

    async def person() -> None:
        [request] = await pending(hitl)
        hitl.runs.approve(
            run.id, request_id=request.request_id, decision="deny", reason="use make distclean"
        )

    cli, result = play(
        can_use_tool(hitl, run.id), [[("Bash", {"command": "rm -rf /"})], "ok"], person
    )
    assert cli.answers["toolu_1"] == {"behavior": "deny", "message": "use make distclean"}
    assert result.result == "done"


def test_remembered_pre_approved_and_safe_tools_are_answered_at_once(hitl: hitl_core.Hitl) -> None:
    hitl.permissions.create(tool="mcp__crm__*", user_id="cust_9")
    run = approval_run(hitl, user_id="cust_9")
    turns = [[("mcp__crm__update", {"id": 7}), ("Read", {"file_path": "a.txt"})], "done"]
    cli, _ = play(can_use_tool(hitl, run.id, safe_tools=["Read"]), turns)
    assert [cli.answers[t]["behavior"] for t in ("toolu_1", "toolu_2")] == ["allow", "allow"]
    assert hitl.runs.permissions(run.id) == []  # nobody was asked

    # a remembered deny answers the second call without asking, with hitl-core's reason
    run = approval_run(hitl)

    async def person() -> None:
        [request] = await pending(hitl)
        hitl.runs.approve(run.id, request_id=request.request_id, decision="deny", remember=True)

    turns = [[("Bash", {"command": "a"})], [("Bash", {"command": "b"})], "done"]
    cli, _ = play(can_use_tool(hitl, run.id), turns, person)
    assert cli.answers["toolu_1"] == {
        "behavior": "deny",
        "message": "A person denied this call to Bash; it was not run.",
    }
    remembered = hitl.agent(run.id).request_tool("Bash")
    assert remembered.source == "remembered"
    assert cli.answers["toolu_2"] == {"behavior": "deny", "message": remembered.reason}
    assert len(hitl.runs.permissions(run.id)) == 1


def test_parallel_calls_wait_side_by_side_and_are_decided_apart(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)

    async def person() -> None:
        both = {r.tool_input["command"]: r for r in await pending(hitl, 2)}  # both wait at once
        hitl.runs.approve(run.id, request_id=both["b"].request_id, decision="deny", reason="not b")
        hitl.runs.approve(run.id, request_id=both["a"].request_id)

    turns = [[("Bash", {"command": "a"}), ("Bash", {"command": "b"})], "done"]
    cli, _ = play(can_use_tool(hitl, run.id), turns, person)
    assert cli.answers["toolu_1"]["behavior"] == "allow"
    assert cli.answers["toolu_2"] == {"behavior": "deny", "message": "not b"}


def test_ask_user_question_is_a_hitl_core_question(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)
    questions = [
        {
            "question": "Which region?",
            "header": "Region",
            "multiSelect": False,
            "options": [{"label": "EU", "description": ""}, {"label": "US", "description": ""}],
        },
        {
            "question": "Which reports?",
            "header": "Reports",
            "multiSelect": True,
            "options": [
                {"label": "sales", "description": ""},
                {"label": "churn", "description": ""},
            ],
        },
    ]

    async def person() -> None:
        [request] = await pending(hitl)
        assert request.kind == "question" and request.questions[0]["question"] == "Which region?"
        hitl.runs.answer(
            run.id, answers={"Which region?": "EU", "Which reports?": ["sales", "churn"]}
        )

    cli, _ = play(
        can_use_tool(hitl, run.id),
        [[("AskUserQuestion", {"questions": questions})], "ok"],
        person,
    )
    answer = cli.answers["toolu_1"]
    assert answer["behavior"] == "allow"
    assert answer["updatedInput"] == {
        "questions": questions,
        "answers": {"Which region?": "EU", "Which reports?": "sales, churn"},
    }


def test_exit_plan_mode_is_a_plan_approval(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl, permission_mode="plan")
    answers = iter(["Also update the changelog", "Approve"])

    async def person() -> None:
        for expected in ("1. bump the version", "1. bump the version\n2. changelog"):
            [request] = await pending(hitl)
            assert request.plan_text == expected
            hitl.runs.answer(run.id, answers={"Plan Approval": next(answers)}, actor="carol")
        [request] = await pending(hitl)  # after the plan, tools are gated as in approval
        hitl.runs.approve(run.id, request_id=request.request_id)

    plan = "ExitPlanMode"
    turns = [
        [("Edit", {"file_path": "v.txt"})],  # before any plan: refused at once
        [(plan, {"plan": "1. bump the version", "planFilePath": "/tmp/p.md"})],
        [(plan, {"plan": "1. bump the version\n2. changelog", "planFilePath": "/tmp/p.md"})],
        [("Edit", {"file_path": "v.txt"})],
        "done",
    ]
    cli, _ = play(can_use_tool(hitl, run.id), turns, person)
    assert cli.answers["toolu_1"]["behavior"] == "deny"
    assert cli.answers["toolu_2"] == {
        "behavior": "deny",
        "message": "Revise the plan: Also update the changelog",
    }
    assert cli.answers["toolu_3"]["behavior"] == "allow"
    assert cli.answers["toolu_4"]["behavior"] == "allow"


def test_exit_plan_mode_passes_when_the_run_has_no_plan_mode(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)
    cli, _ = play(can_use_tool(hitl, run.id), [[("ExitPlanMode", {"plan": "x"})], "done"])
    assert cli.answers["toolu_1"]["behavior"] == "allow" and hitl.runs.permissions(run.id) == []


def test_a_suspended_run_keeps_claude_waiting_until_the_decision() -> None:
    clock = hitl_core.ManualClock(start=0.0)
    with hitl_core.connect("memory://", clock=clock) as timed:
        run = approval_run(timed, input_timeout=30.0)

        async def person() -> None:
            [request] = await pending(timed)
            clock.advance(31.0)
            assert timed.runs.get(run.id).suspended
            await asyncio.sleep(0.05)  # the callback looks again, still pending
            clock.advance(3600.0)
            assert timed.runs.approve(run.id, request_id=request.request_id).resumed

        cli, result = play(
            can_use_tool(timed, run.id), [[("Bash", {"command": "x"})], "done"], person
        )
        assert cli.answers["toolu_1"]["behavior"] == "allow" and result.result == "done"


def test_a_run_cancelled_while_claude_waits_stops_the_query(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)

    async def person() -> None:
        await pending(hitl)
        hitl.runs.cancel(run.id)

    turns = [[("Bash", {"command": "x"})], [("Bash", {"command": "y"})], "done"]
    cli, result = play(can_use_tool(hitl, run.id), turns, person)
    assert cli.answers["toolu_1"]["behavior"] == "deny" and cli.answers["toolu_1"]["interrupt"]
    assert result.is_error and "toolu_2" not in cli.answers


def test_the_callback_speaks_the_sdk_s_types(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl, user_id="cust_1")
    hitl.permissions.create(tool="Write", user_id="cust_1")
    callback = can_use_tool(hitl, run.id)
    context = ToolPermissionContext(tool_use_id="toolu_9")
    allowed = asyncio.run(callback("Write", {"file_path": "a"}, context))
    assert isinstance(allowed, PermissionResultAllow) and allowed.updated_input is None
    blocked = asyncio.run(callback("AskUserQuestion", {"questions": []}, context))
    assert isinstance(blocked, PermissionResultDeny) and not blocked.interrupt
    assert blocked.message.startswith("AskUserQuestion refused: invalid_request")
    hitl.runs.cancel(run.id)
    ended = asyncio.run(callback("Bash", {"command": "x"}, context))
    assert isinstance(ended, PermissionResultDeny) and ended.interrupt


def test_the_same_tool_use_asked_twice_is_one_request(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)
    callback = can_use_tool(hitl, run.id)
    context = ToolPermissionContext(tool_use_id="toolu_7")

    async def scenario() -> list[Any]:
        asking = [
            asyncio.create_task(callback("Bash", {"command": "x"}, context)) for _ in range(2)
        ]
        [request] = await pending(hitl)
        hitl.runs.approve(run.id, request_id=request.request_id)
        return list(await asyncio.gather(*asking))

    answers = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert all(isinstance(a, PermissionResultAllow) for a in answers)
    assert len(hitl.runs.permissions(run.id)) == 1


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_hitl_approve_in_another_process_answers_the_waiting_callback(
    tmp_path: Path, decision: str
) -> None:
    db = tmp_path / "hitl.db"
    with hitl_core.connect(f"sqlite:///{db}") as hitl:
        run = approval_run(hitl)

        async def person() -> None:
            [request] = await pending(hitl)
            command = [HITL, "--db", str(db), "approve", run.id, request.request_id]
            if decision == "deny":
                command += ["--deny", "--reason", "not on a Friday"]
            done = await asyncio.to_thread(subprocess.run, command, capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr

        cli, result = play(
            can_use_tool(hitl, run.id),
            [[("Bash", {"command": "deploy"})], "done"],
            person,
        )
    expected = (
        {"behavior": "allow", "updatedInput": {"command": "deploy"}}
        if decision == "allow"
        else {"behavior": "deny", "message": "not on a Friday"}
    )
    assert cli.answers["toolu_1"] == expected and result.result == "done"


def test_the_callback_on_the_asyncio_engine_waits_without_a_thread_and_is_allowed() -> None:
    import hitl_core.aio

    engine = hitl_core.aio.connect("memory://")
    sync = engine.sync  # the same engine, for the person's side
    run = approval_run(sync)

    async def person() -> None:
        [request] = await pending(sync)
        await engine.runs.approve(run.id, request_id=request.request_id, actor="bob")

    cli, result = play(
        can_use_tool(engine, run.id), [[("Bash", {"command": "make test"})], "done"], person
    )
    assert cli.answers["toolu_1"]["behavior"] == "allow"
    assert result.result == "done" and sync.runs.permissions(run.id)[0].actor == "bob"
    asyncio.run(engine.close())
