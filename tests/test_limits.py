"""Every text the API takes has a length limit and every JSON value a size limit: an input
over it is a 422 that names the field, and refusing it costs memory linear in what was
passed and a number of Python calls that does not grow with it (a huge input is read
once, never copied piece by piece: the quadratic tool-name lookup of the SQLite store
took 4.8 GB for a 100 KB name)."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hitl_core
from hitl_core import ManualClock, ValidationError
from hitl_core.testing.helpers import QUESTION

Call = Callable[[hitl_core.Hitl, dict[str, str], Any], object]


def _question(**changes: Any) -> list[dict[str, Any]]:
    return [dict(QUESTION, **changes)]


# name -> (call with a big value, the field the error names, its code, kind of value)
# kind "text": the big value is a string; "json": a dict holding it (many keys, or one
# long string); ids are strings too.
CASES: dict[str, tuple[Call, str, str, str]] = {
    "create.user_id": (
        lambda h, r, v: h.runs.create(user_id=v),
        "user_id",
        "invalid_config",
        "text",
    ),
    "create.metadata": (
        lambda h, r, v: h.runs.create(metadata=v),
        "metadata",
        "invalid_config",
        "json",
    ),
    "create.checkpoint": (
        lambda h, r, v: h.runs.create(checkpoint=v),
        "checkpoint",
        "invalid_request",
        "json",
    ),
    "create.idempotency_key": (
        lambda h, r, v: h.runs.create(idempotency_key=v),
        "idempotency_key",
        "invalid_request",
        "text",
    ),
    "get.run_id": (lambda h, r, v: h.runs.get(v), "run_id", "invalid_request", "text"),
    "list.user_id": (lambda h, r, v: h.runs.list(user_id=v), "user_id", "invalid_request", "text"),
    "list.cursor": (
        lambda h, r, v: h.runs.list(starting_after=v),
        "cursor",
        "invalid_cursor",
        "text",
    ),
    "permissions.run_id": (
        lambda h, r, v: h.runs.permissions(v),
        "run_id",
        "invalid_request",
        "text",
    ),
    "answer.text": (
        lambda h, r, v: h.runs.answer(r["ask"], answers={QUESTION["question"]: v}),
        "answer",
        "invalid_answers",
        "text",
    ),
    "answer.request_id": (
        lambda h, r, v: h.runs.answer(r["ask"], answers={"q": "a"}, request_id=v),
        "request_id",
        "invalid_request",
        "text",
    ),
    "answer.actor": (
        lambda h, r, v: h.runs.answer(r["ask"], answers={"q": "a"}, actor=v),
        "actor",
        "invalid_request",
        "text",
    ),
    "approve.request_id": (
        lambda h, r, v: h.runs.approve(r["tool"], request_id=v),
        "request_id",
        "invalid_request",
        "text",
    ),
    "approve.reason": (
        lambda h, r, v: h.runs.approve(r["tool"], request_id=r["req"], reason=v),
        "reason",
        "invalid_request",
        "text",
    ),
    "approve.actor": (
        lambda h, r, v: h.runs.approve(r["tool"], request_id=r["req"], actor=v),
        "actor",
        "invalid_request",
        "text",
    ),
    "cancel.run_id": (lambda h, r, v: h.runs.cancel(v), "run_id", "invalid_request", "text"),
    "claim.worker": (
        lambda h, r, v: h.runs.claim(r["free"], worker=v),
        "worker",
        "invalid_request",
        "text",
    ),
    "agent.run_id": (lambda h, r, v: h.agent(v), "run_id", "invalid_request", "text"),
    "ask.question": (
        lambda h, r, v: h.agent(r["free"]).ask(_question(question=v)),
        "question",
        "invalid_request",
        "text",
    ),
    "ask.header": (
        lambda h, r, v: h.agent(r["free"]).ask(_question(header=v)),
        "header",
        "invalid_request",
        "text",
    ),
    "ask.label": (
        lambda h, r, v: h.agent(r["free"]).ask(_question(options=[v, "b"])),
        "option label",
        "invalid_request",
        "text",
    ),
    "ask.key": (
        lambda h, r, v: h.agent(r["free"]).ask([QUESTION], key=v),
        "key",
        "invalid_request",
        "text",
    ),
    "request_tool.name": (
        lambda h, r, v: h.agent(r["free"]).request_tool(v),
        "tool_name",
        "invalid_request",
        "text",
    ),
    "request_tool.input": (
        lambda h, r, v: h.agent(r["free"]).request_tool("t", v),
        "tool_input",
        "invalid_request",
        "json",
    ),
    "request_tool.key": (
        lambda h, r, v: h.agent(r["free"]).request_tool("t", key=v),
        "key",
        "invalid_request",
        "text",
    ),
    "propose_plan.text": (
        lambda h, r, v: h.agent(r["plan"]).propose_plan(v),
        "plan_text",
        "invalid_request",
        "text",
    ),
    "result.request_id": (
        lambda h, r, v: h.agent(r["free"]).result(v),
        "request_id",
        "invalid_request",
        "text",
    ),
    "complete.output": (
        lambda h, r, v: h.agent(r["free"]).complete(v),
        "output",
        "invalid_request",
        "json",
    ),
    "fail.error": (lambda h, r, v: h.agent(r["free"]).fail(v), "error", "invalid_request", "text"),
    "checkpoint.data": (
        lambda h, r, v: h.agent(r["free"]).save_checkpoint(v),
        "checkpoint",
        "invalid_request",
        "json",
    ),
    "policy.tool": (
        lambda h, r, v: h.permissions.create(tool=v),
        "tool",
        "invalid_request",
        "text",
    ),
    "policy.user_id": (
        lambda h, r, v: h.permissions.create(tool="t", user_id=v),
        "user_id",
        "invalid_request",
        "text",
    ),
    "policy.delete": (
        lambda h, r, v: h.permissions.delete(v),
        "policy_id",
        "invalid_request",
        "text",
    ),
    "task.name": (lambda h, r, v: h.tasks.create(name=v), "name", "invalid_request", "text"),
    "task.get": (lambda h, r, v: h.tasks.get(v), "task_id", "invalid_request", "text"),
    "events.after": (lambda h, r, v: h.events.list(after=v), "cursor", "invalid_cursor", "text"),
    "events.run_id": (lambda h, r, v: h.events.list(run_id=v), "run_id", "invalid_request", "text"),
}


def _big(kind: str, size: int, shape: str) -> Any:
    if kind == "text":
        return "n" * size
    if shape == "wide":  # many small keys
        return {f"k{i}": i for i in range(size // 8)}
    return {"text": "n" * size}  # one long string


def _setup(hitl: hitl_core.Hitl) -> dict[str, str]:
    """Runs in the states the calls need: a run awaiting an answer, one awaiting a tool
    decision (and its request), a free approval run, a plan-mode run."""
    ask = hitl.runs.create(human_in_the_loop=True)
    hitl.agent(ask.id).ask([QUESTION])
    tool = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(tool.id).request_tool("gmail.send")
    assert gate.request_id is not None
    free = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    plan = hitl.runs.create(human_in_the_loop=True, permission_mode="plan")
    return {
        "ask": ask.id,
        "tool": tool.id,
        "req": gate.request_id,
        "free": free.id,
        "plan": plan.id,
    }


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[hitl_core.Hitl, dict[str, str]]]:
    url = "memory://"
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path_factory.mktemp("limits") / "h.db")
    hitl = hitl_core.connect(url, clock=ManualClock(start=0.0))
    yield hitl, _setup(hitl)
    hitl.close()


def _refuse(hitl: hitl_core.Hitl, runs: dict[str, str], case: str, value: Any) -> tuple[int, int]:
    """Make the call; check the 422 names its field; return (peak bytes, Python calls)."""
    call, field, code, _ = CASES[case]
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    tracemalloc.start()
    sys.setprofile(count)
    try:
        with pytest.raises(ValidationError) as caught:
            call(hitl, runs, value)
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert caught.value.code == code, (case, caught.value)
    assert field in caught.value.message, (case, caught.value.message)
    assert len(str(caught.value)) < 400, "the message repeats the input"
    return peak, calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_input_over_its_limit_is_refused_naming_the_field(
    world: tuple[hitl_core.Hitl, dict[str, str]], case: str
) -> None:
    hitl, runs = world
    _refuse(hitl, runs, case, _big(CASES[case][3], 1_000_000, "long"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=st.sampled_from(sorted(CASES)),
    size=st.sampled_from([100_000, 1_000_000, 4_000_000]),
    shape=st.sampled_from(["long", "wide"]),
)
def test_refusing_a_huge_input_costs_memory_linear_in_it_and_constant_work(
    world: tuple[hitl_core.Hitl, dict[str, str]], case: str, size: int, shape: str
) -> None:
    hitl, runs = world
    _, small_calls = _refuse(hitl, runs, case, _big(CASES[case][3], 70_000, shape))
    value = _big(CASES[case][3], size, shape)
    peak, calls = _refuse(hitl, runs, case, value)
    # memory: no more than a small multiple of what was passed, plus a fixed allowance
    assert peak <= 2 * size + 2_000_000, (case, size, peak)
    # work: a JSON value is read until its limit is spent, a text not at all: the number
    # of Python calls does not grow with the input beyond the limit
    assert calls <= small_calls + 50, (case, size, small_calls, calls)


def test_a_tool_name_at_the_limit_works_on_sqlite_without_quadratic_cost(tmp_path: Path) -> None:
    hitl = hitl_core.connect("sqlite:///" + str(tmp_path / "h.db"))
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    hitl.permissions.create(tool="x" * 200 + "*")
    tracemalloc.start()
    gate = hitl.agent(run.id).request_tool("x" * 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert gate.source == "policy"
    assert peak < 2_000_000
    hitl.close()
