"""Scenarios: a run's configuration, policies, the agent's steps and the person's
responses with their times, read from TOML or JSON, played on a ManualClock, and
checked against the outcomes they expect. Used by `hitl simulate` and `hitl serve`."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import hitl_core
from hitl_core import HitlError
from hitl_core.testing.helpers import counter_ids

__all__ = ["Scenario", "ScenarioError", "Step", "load", "parse", "play"]

AGENT_ACTIONS = ("ask", "request_tool", "propose_plan", "complete", "fail", "wait")
HUMAN_ACTIONS = ("answer", "approve", "deny", "cancel", "switch_mode")
RUN_KEYS = {"human_in_the_loop", "permission_mode", "user_id", "input_timeout", "metadata"}
STEP_KEYS = {
    "at",
    "agent",
    "human",
    "tick",
    "as",
    "questions",
    "tool",
    "input",
    "safe",
    "plan",
    "output",
    "error",
    "request",
    "answers",
    "remember",
    "reason",
    "actor",
    "mode",
    "expect",
    "expect_error",
    "for",
}
EXPECT_KEYS = {"status", "suspended", "events", "requests", "error", "permission_mode"}


class ScenarioError(Exception):
    """A scenario file that cannot be read, or that does not hold what it expects."""


@attrs.frozen
class Step:
    """One timed step: who acts (`agent`, `human` or `tick`), the action and its options."""

    index: int
    at: float
    actor: str
    action: str
    options: dict[str, Any]

    @property
    def where(self) -> str:
        return f"steps[{self.index}]"


@attrs.frozen
class Scenario:
    """A parsed scenario."""

    name: str
    run: dict[str, Any]
    policies: list[dict[str, Any]]
    steps: list[Step]
    expect: dict[str, Any]


def _fail(where: str, message: str) -> ScenarioError:
    return ScenarioError(f"{where}: {message}")


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a table/object, got {type(value).__name__}")
    return value


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")


def parse(data: object, name: str = "scenario") -> Scenario:
    """Check a scenario's structure; every problem names the key at fault."""
    top = _dict(data, name)
    _known(top, {"name", "run", "policies", "steps", "expect"}, name)
    run = _dict(top.get("run", {}), "run")
    _known(run, RUN_KEYS, "run")
    policies = top.get("policies", [])
    if not isinstance(policies, list):
        raise _fail("policies", "expected a list of tables")
    for index, policy in enumerate(policies):
        _known(_dict(policy, f"policies[{index}]"), {"tool", "user_id"}, f"policies[{index}]")
        if "tool" not in policy:
            raise _fail(f"policies[{index}]", "missing key 'tool'")
    raw_steps = top.get("steps", [])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise _fail("steps", "expected a non-empty list of steps")
    steps = []
    previous = 0.0
    for index, raw in enumerate(raw_steps):
        where = f"steps[{index}]"
        step = _dict(raw, where)
        _known(step, STEP_KEYS, where)
        at = step.get("at", previous)
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < previous:
            raise _fail(where, f"'at' must be a number of seconds >= {previous:g}")
        previous = float(at)
        actors = [key for key in ("agent", "human", "tick") if key in step]
        if len(actors) != 1:
            raise _fail(where, "needs exactly one of 'agent', 'human' or 'tick'")
        actor = actors[0]
        action = "tick" if actor == "tick" else step[actor]
        allowed = {"agent": AGENT_ACTIONS, "human": HUMAN_ACTIONS, "tick": ("tick",)}[actor]
        if action not in allowed:
            raise _fail(f"{where}.{actor}", f"unknown action {action!r} (one of {allowed})")
        options = {k: v for k, v in step.items() if k not in ("at", actor)}
        if "expect" in options:
            _known(
                _dict(options["expect"], f"{where}.expect"),
                {"status", "source", "decision", "resumed", "remembered", "reason"},
                f"{where}.expect",
            )
        steps.append(Step(index, previous, actor, action, options))
    expect = _dict(top.get("expect", {}), "expect")
    _known(expect, EXPECT_KEYS, "expect")
    return Scenario(str(top.get("name", name)), run, policies, steps, expect)


def load(path: str | Path) -> Scenario:
    """Read a scenario file (.toml or .json); syntax errors name the line."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"{file}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as error:
        raise ScenarioError(f"{file}: line {error.lineno}: {error.msg}") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{file}: {error}") from None
    try:
        return parse(data, file.stem)
    except ScenarioError as error:
        raise ScenarioError(f"{file}: {error}") from None


# -- playing -----------------------------------------------------------------------------


@attrs.define
class Outcome:
    """What playing a scenario gave: the timeline, the run, and the mismatches."""

    name: str
    run_id: str | None = None
    timeline: list[dict[str, Any]] = attrs.Factory(list)
    mismatches: list[str] = attrs.Factory(list)
    final: dict[str, Any] = attrs.Factory(dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_id": self.run_id,
            "timeline": self.timeline,
            "final": self.final,
            "mismatches": self.mismatches,
            "passed": not self.mismatches,
        }


def _answers(step: Step, request: hitl_core.PermissionRequest | None) -> dict[str, Any]:
    answers = step.options.get("answers")
    if isinstance(answers, str) and request is not None and request.is_plan_approval:
        return {"Plan Approval": answers}
    if not isinstance(answers, dict):
        raise _fail(f"{step.where}.answers", "expected a table mapping question text to answer")
    return answers


def _arg(options: dict[str, Any], key: str) -> Any:
    """A step option as written (the engine validates it)."""
    return options.get(key)


def _describe_gate(gate: hitl_core.ToolGate) -> str:
    if gate.status == "pending":
        return f"pending {gate.request_id}"
    return f"{gate.status} ({gate.source})"


def play(
    scenario: Scenario,
    hitl: hitl_core.Hitl | None = None,
    clock: hitl_core.ManualClock | None = None,
) -> Outcome:
    """Play a scenario on `hitl` (default: a fresh memory store with deterministic ids
    and a ManualClock at 0) and check its expectations."""
    if hitl is None or clock is None:
        clock = hitl_core.ManualClock(start=0.0)
        hitl = hitl_core.connect("memory://", clock=clock, ids=counter_ids())
    start = clock.now()
    outcome = Outcome(scenario.name)
    for index, policy in enumerate(scenario.policies):
        try:
            hitl.permissions.create(tool=policy["tool"], user_id=policy.get("user_id"))
        except HitlError as error:
            raise _fail(f"policies[{index}]", str(error)) from None
    try:
        run = hitl.runs.create(**scenario.run)
    except HitlError as error:
        expected = scenario.expect.get("error")
        if expected == error.code:
            outcome.timeline.append(
                {
                    "t": 0.0,
                    "who": "host",
                    "action": "create",
                    "result": f"refused {error.status} {error.code}",
                }
            )
            return outcome
        raise _fail("run", str(error)) from None
    if "error" in scenario.expect:
        outcome.mismatches.append(
            f"expect.error: expected {scenario.expect['error']}, but the run was created"
        )
    outcome.run_id = run.id
    agent = hitl.agent(run.id)
    labels: dict[str, str] = {}

    def request_for(step: Step, kinds: tuple[str, ...]) -> hitl_core.PermissionRequest | None:
        label = step.options.get("request")
        if label is not None:
            if label not in labels:
                raise _fail(f"{step.where}.request", f"no earlier step is labelled {label!r}")
            return agent.result(labels[label])
        pending = [r for r in hitl.runs.permissions(run.id) if r.is_pending and r.kind in kinds]
        return pending[0] if pending else None

    for step in scenario.steps:
        clock.advance(max(0.0, start + step.at - clock.now()))
        entry: dict[str, Any] = {"t": step.at, "who": step.actor, "action": step.action}
        got: dict[str, Any] = {}
        try:
            result = _act(step, hitl, agent, run.id, request_for, labels)
            entry["result"], got = result
        except ScenarioError:
            raise
        except HitlError as error:
            entry["result"] = f"refused {error.status} {error.code}"
            got = {"error": error.code}
            if step.options.get("expect_error") != error.code:
                outcome.mismatches.append(f"{step.where}: {error}")
        else:
            if "expect_error" in step.options:
                outcome.mismatches.append(
                    f"{step.where}: expected error {step.options['expect_error']}, "
                    "but the step worked"
                )
        state = hitl.runs.get(run.id)
        entry["status"] = state.status.value
        if state.suspended:
            entry["suspended"] = True
        outcome.timeline.append(entry)
        for key, wanted in step.options.get("expect", {}).items():
            if got.get(key) != wanted:
                outcome.mismatches.append(
                    f"{step.where}.expect.{key}: expected {wanted!r}, got {got.get(key)!r}"
                )
    _check_final(scenario, hitl, run.id, labels, outcome)
    return outcome


def _act(
    step: Step,
    hitl: hitl_core.Hitl,
    agent: hitl_core.Agent,
    run_id: str,
    request_for: Callable[[Step, tuple[str, ...]], hitl_core.PermissionRequest | None],
    labels: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Do one step; return a one-line description and the values expectations read."""
    o: dict[str, Any] = step.options
    label = o.get("as")
    if step.actor == "tick":
        events = hitl.tick()
        return f"{len(events)} event(s): {', '.join(e.type for e in events) or '-'}", {}
    if step.action == "ask":
        request = agent.ask(_arg(o, "questions"))
        if label:
            labels[label] = request.request_id
        return f"question {request.request_id} opened", {"status": "pending"}
    if step.action == "request_tool":
        gate = agent.request_tool(_arg(o, "tool"), o.get("input"), safe=o.get("safe", False))
        if label and gate.request_id:
            labels[label] = gate.request_id
        return f"{o.get('tool')}: {_describe_gate(gate)}", {
            "status": gate.status,
            "source": gate.source,
        }
    if step.action == "propose_plan":
        request = agent.propose_plan(_arg(o, "plan"))
        if label:
            labels[label] = request.request_id
        revision = request.tool_input["revision"]
        return f"plan revision {revision}: {request.request_id} opened", {"status": "pending"}
    if step.action == "wait":
        awaited = request_for(step, ("question", "plan", "tool"))
        if awaited is None:
            raise _fail(f"{step.where}.request", "nothing to wait for")
        return f"reads {awaited.request_id}: {awaited.status.value}", {
            "status": awaited.status.value,
            "decision": awaited.decision,
            "reason": awaited.reason,
        }
    if step.action == "complete":
        agent.complete(o.get("output"))
        return "run completed", {"status": "completed"}
    if step.action == "fail":
        agent.fail(o.get("error", "failed"))
        return "run failed", {"status": "failed"}
    if step.action == "cancel":
        hitl.runs.cancel(run_id)
        return "run cancelled", {"status": "cancelled"}
    if step.action == "switch_mode":
        changed = hitl.runs.update_permission_mode(run_id, permission_mode=_arg(o, "mode"))
        return f"mode is now {changed.permission_mode}", {"status": changed.status.value}
    if step.action == "answer":
        target = request_for(step, ("question", "plan"))
        answered = hitl.runs.answer(
            run_id,
            answers=_answers(step, target),
            request_id=target.request_id if target and "request" in o else None,
            actor=o.get("actor"),
        )
        r = answered.request
        text = f"{r.request_id} {r.decision}" + (" (resumed)" if answered.resumed else "")
        return text, {
            "status": r.status.value,
            "decision": r.decision,
            "resumed": answered.resumed,
            "reason": r.reason,
        }
    # approve / deny
    gated = request_for(step, ("tool",))
    if gated is None:
        raise _fail(f"{step.where}", "no pending tool request to decide")
    decided = hitl.runs.approve(
        run_id,
        request_id=gated.request_id,
        decision="deny" if step.action == "deny" else "allow",
        remember=o.get("remember", False),
        reason=o.get("reason"),
        actor=o.get("actor"),
    )
    r = decided.request
    text = f"{r.request_id} {r.tool_name}: {r.status.value}"
    text += " (remembered)" if decided.remembered else ""
    text += " (resumed)" if decided.resumed else ""
    return text, {
        "status": r.status.value,
        "resumed": decided.resumed,
        "remembered": decided.remembered,
        "decision": r.decision,
    }


def _check_final(
    scenario: Scenario,
    hitl: hitl_core.Hitl,
    run_id: str,
    labels: dict[str, str],
    outcome: Outcome,
) -> None:
    run = hitl.runs.get(run_id)
    events = [e.type for e in hitl.events.list(run_id=run_id, limit=1000)]
    requests = {r.request_id: r for r in hitl.runs.permissions(run_id)}
    outcome.final = {
        "status": run.status.value,
        "suspended": run.suspended,
        "permission_mode": run.permission_mode,
        "events": events,
        "requests": {label: requests[rid].status.value for label, rid in labels.items()},
    }
    expect = scenario.expect
    for key in ("status", "suspended", "permission_mode", "events"):
        if key in expect and expect[key] != outcome.final[key]:
            outcome.mismatches.append(
                f"expect.{key}: expected {expect[key]!r}, got {outcome.final[key]!r}"
            )
    for label, wanted in _dict(expect.get("requests", {}), "expect.requests").items():
        got = outcome.final["requests"].get(label)
        if got != wanted:
            outcome.mismatches.append(f"expect.requests.{label}: expected {wanted!r}, got {got!r}")
