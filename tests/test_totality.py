"""Totality: every run status x every operation either works or raises the one
documented error, and a refusal changes nothing (h2-style exhaustive table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import hitl_core
from hitl_core import ConflictError, HitlError, NotFoundError, ValidationError
from hitl_core._rules import TRANSITIONS, allowed_from
from hitl_core.testing.contract import refused
from hitl_core.testing.helpers import QUESTION

STATUSES = ["running", "awaiting_approval", "completed", "failed", "cancelled"]
ANSWER = {QUESTION["question"]: "SQLite"}

Setup = tuple[hitl_core.Hitl, str, str]  # engine, run id, a tool request id


def _in_status(status: str) -> Setup:
    """An approval-mode run in `status` that has one tool request (allowed in `running`,
    pending in `awaiting_approval`) and one question request."""
    hitl = hitl_core.connect("memory://", clock=hitl_core.ManualClock())
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval", user_id="u")
    agent = hitl.agent(run.id)
    gate = agent.request_tool("gmail.send")
    assert gate.request_id is not None
    agent.ask([QUESTION])
    if status != "awaiting_approval":
        hitl.runs.approve(run.id, request_id=gate.request_id)
        hitl.runs.answer(run.id, answers=ANSWER)
    if status == "completed":
        agent.complete()
    elif status == "failed":
        agent.fail("boom")
    elif status == "cancelled":
        hitl.runs.cancel(run.id)
    assert hitl.runs.get(run.id).status == status
    return hitl, run.id, gate.request_id


OPERATIONS: dict[str, Callable[[hitl_core.Hitl, str, str], Any]] = {
    "ask": lambda h, r, g: h.agent(r).ask([QUESTION]),
    "request_tool": lambda h, r, g: h.agent(r).request_tool("slack.post"),
    "request_safe_tool": lambda h, r, g: h.agent(r).request_tool("files.read", safe=True),
    "propose_plan": lambda h, r, g: h.agent(r).propose_plan("a plan"),
    "result": lambda h, r, g: h.agent(r).result(g),
    "complete": lambda h, r, g: h.agent(r).complete(),
    "fail": lambda h, r, g: h.agent(r).fail("boom"),
    "cancel": lambda h, r, g: h.runs.cancel(r),
    "answer": lambda h, r, g: h.runs.answer(r, answers=ANSWER),
    "allow": lambda h, r, g: h.runs.approve(r, request_id=g),
    "deny": lambda h, r, g: h.runs.approve(r, request_id=g, decision="deny"),
    "to_autonomous": lambda h, r, g: h.runs.update_permission_mode(r, permission_mode="autonomous"),
    "to_plan": lambda h, r, g: h.runs.update_permission_mode(r, permission_mode="plan"),
    "get": lambda h, r, g: h.runs.get(r),
    "permissions": lambda h, r, g: h.runs.permissions(r),
    "tick": lambda h, r, g: h.tick(),
}

OK = None
NOT_ACTIVE = (ConflictError, "run_not_active")
READS = {"result", "get", "permissions", "tick"}

# (status, operation) -> None (works) or (error type, code). Every pair is listed.
EXPECTED: dict[tuple[str, str], tuple[type[HitlError], str] | None] = {}
for _status in STATUSES:
    for _op in OPERATIONS:
        if _op in READS:
            EXPECTED[_status, _op] = OK
        elif _status in ("completed", "failed", "cancelled"):
            EXPECTED[_status, _op] = NOT_ACTIVE
        else:
            EXPECTED[_status, _op] = OK
EXPECTED.update(
    {
        ("running", "propose_plan"): (ConflictError, "not_plan_mode"),
        ("awaiting_approval", "propose_plan"): (ConflictError, "not_plan_mode"),
        ("running", "answer"): (ConflictError, "not_awaiting_input"),
        ("running", "deny"): (NotFoundError, "gate_resolved_otherwise"),
        ("awaiting_approval", "complete"): (ConflictError, "pending_requests"),
    }
)


# The status after an operation that works, where it is not the status before.
AFTER = {
    ("running", "ask"): "awaiting_approval",
    ("running", "request_tool"): "awaiting_approval",
    ("running", "complete"): "completed",
    ("running", "fail"): "failed",
    ("running", "cancel"): "cancelled",
    ("awaiting_approval", "fail"): "failed",
    ("awaiting_approval", "cancel"): "cancelled",
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == {(s, o) for s in STATUSES for o in OPERATIONS}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_status_and_operation(status: str, operation: str) -> None:
    hitl, run_id, gate_id = _in_status(status)
    expected = EXPECTED[status, operation]
    call = lambda: OPERATIONS[operation](hitl, run_id, gate_id)  # noqa: E731
    if expected is None:
        call()
        after = hitl.runs.get(run_id)
        assert after.status == AFTER.get((status, operation), status)
        pending = [r for r in hitl.runs.permissions(run_id) if r.is_pending]
        assert (after.status == "awaiting_approval") == bool(pending)
    else:
        kind, code = expected
        refused(hitl, kind, code, call, users=(None, "u"))


def test_rulebook_terminal_statuses_have_no_triggers() -> None:
    for status in hitl_core.RunStatus:
        triggers = allowed_from(status)
        assert (triggers == []) == status.is_terminal, (status, triggers)
    assert {row["trigger"] for row in TRANSITIONS} >= {"open_request", "decide", "cancel"}


def test_bad_input_on_an_active_run_is_422_not_a_crash() -> None:
    hitl, run_id, _ = _in_status("running")
    refused(hitl, ValidationError, "invalid_request", lambda: hitl.agent(run_id).ask(None))
