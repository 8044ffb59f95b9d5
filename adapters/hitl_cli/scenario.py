"""Scenarios: a run's configuration, policies, the agent's steps and the person's
responses with their times, read from TOML or JSON, played on a ManualClock, and
checked against the outcomes they expect. Used by `hitl simulate` and `hitl serve`."""

from __future__ import annotations

import json
import math
import re
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
"""The keys of `[run]`: runs.create's arguments. Their values are the engine's to judge."""
MAX_AT = 10**12
"""The latest a step may happen: 10^12 seconds (about 31,700 years) after the start."""
MAX_DEPTH = 100
"""How deeply a scenario document may nest."""

Check = tuple[Callable[[Any], bool], str]
"""What the value of a scenario key must be: a test, and how to say it."""

_STR: Check = (lambda v: isinstance(v, str), "a string")
_LABEL: Check = (lambda v: isinstance(v, str) and bool(v), "a non-empty string")
_BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
_TABLE: Check = (lambda v: isinstance(v, dict), "a table/object")
_LIST: Check = (lambda v: isinstance(v, list), "a list")
_ANSWERS: Check = (
    lambda v: isinstance(v, (dict, str)),
    "a table of question text to answer, or a string",
)
_ANY: Check = (lambda v: True, "anything")
_STR_OR_NULL: Check = (lambda v: v is None or isinstance(v, str), "a string (or null)")
_STRINGS: Check = (
    lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "a list of strings",
)

_DECIDE = {"request": _LABEL, "remember": _BOOL, "reason": _STR, "actor": _STR}
OPTIONS: dict[str, dict[str, Check]] = {
    "ask": {"questions": _LIST, "as": _LABEL},
    "request_tool": {"tool": _STR, "input": _TABLE, "safe": _BOOL, "as": _LABEL},
    "propose_plan": {"plan": _STR, "as": _LABEL},
    "wait": {"request": _LABEL},
    "complete": {"output": _ANY},
    "fail": {"error": _STR},
    "answer": {"answers": _ANSWERS, "request": _LABEL, "actor": _STR},
    "approve": _DECIDE,
    "deny": _DECIDE,
    "cancel": {},
    "switch_mode": {"mode": _STR},
    "tick": {},
}
"""The options each step kind takes (besides `at`, the actor key, `expect`, `expect_error`)."""
REQUIRED = {
    "ask": "questions",
    "request_tool": "tool",
    "propose_plan": "plan",
    "answer": "answers",
    "switch_mode": "mode",
}
"""The option each step kind cannot do without."""
STEP_EXPECT: dict[str, dict[str, Check]] = {
    "ask": {"status": _STR},
    "request_tool": {"status": _STR, "source": _STR_OR_NULL},
    "propose_plan": {"status": _STR},
    "wait": {"status": _STR, "decision": _STR_OR_NULL, "reason": _STR_OR_NULL},
    "complete": {"status": _STR},
    "fail": {"status": _STR},
    "answer": {"status": _STR, "decision": _STR_OR_NULL, "resumed": _BOOL, "reason": _STR_OR_NULL},
    "approve": {"status": _STR, "decision": _STR_OR_NULL, "resumed": _BOOL, "remembered": _BOOL},
    "deny": {"status": _STR, "decision": _STR_OR_NULL, "resumed": _BOOL, "remembered": _BOOL},
    "cancel": {"status": _STR},
    "switch_mode": {"status": _STR},
}
"""The step `expect` keys each step kind can check, and their types."""
TOP: dict[str, Check] = {
    "name": _STR,
    "run": _TABLE,
    "policies": _LIST,
    "steps": _LIST,
    "expect": _TABLE,
}
POLICY: dict[str, Check] = {"tool": _STR, "user_id": _STR_OR_NULL}
FINAL_EXPECT: dict[str, Check] = {
    "status": _STR,
    "suspended": _BOOL,
    "events": _STRINGS,
    "requests": _TABLE,
    "error": _STR,
    "permission_mode": _STR,
}


class ScenarioError(Exception):
    """A scenario file that cannot be read or played: `file`, the `key` at fault (such as
    `steps[3].tool`, or None), the `line` of a syntax error (or None) and a `message`."""

    def __init__(
        self, key: str | None, message: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message
        self.file = file
        self.line = line

    @property
    def step(self) -> int | None:
        """The index of the step at fault, when the key is in `steps`."""
        match = re.match(r"steps\[(\d+)\]", self.key or "")
        return int(match.group(1)) if match else None

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)

    def to_json(self) -> dict[str, Any]:
        """The error as a JSON object (what `hitl simulate --json` prints under "error")."""
        return {
            "file": self.file,
            "key": self.key,
            "step": self.step,
            "line": self.line,
            "message": self.message,
        }


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
    """A parsed scenario; `source` is the file it came from ("" when parsed from data)."""

    name: str
    run: dict[str, Any]
    policies: list[dict[str, Any]]
    steps: list[Step]
    expect: dict[str, Any]
    source: str = ""


def _fail(where: str | None, message: str) -> ScenarioError:
    return ScenarioError(where, message)


def _dict(value: object, where: str | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a table/object, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    names = {
        bool: "a boolean",
        str: "a string",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a table/object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _key(where: str | None, key: str) -> str:
    """The path of `key` inside `where`; a key that would not read well in a path (empty,
    with dots, brackets, spaces or control characters) is shown quoted: `answers['Go?']`."""
    if not re.fullmatch(r"[\w*-]+", key):
        return f"{where or ''}[{key!r}]"
    return f"{where}.{key}" if where else key


def _known(table: dict[str, Any], keys: set[str] | dict[str, Any], where: str | None) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        known = ", ".join(sorted(keys)) or "none"
        raise _fail(_key(where, unknown[0]), f"unknown key {unknown[0]!r} (known: {known})")


def _typed(table: dict[str, Any], types: dict[str, Check], where: str | None) -> None:
    """Refuse unknown keys, then any value of the wrong type."""
    _known(table, types, where)
    for key, value in table.items():
        test, wanted = types[key]
        if not test(value):
            raise _fail(_key(where, key), f"must be {wanted}, got {_kind(value)}")


class _Pairs(dict[str, Any]):
    """A JSON object that held a key twice (`twice` names it); refused by `_walk`."""

    twice: str = ""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table and not isinstance(table, _Pairs):
            table = _Pairs(table)
            table.twice = key
        table[key] = value
    return table


def _walk(value: object, where: str | None, depth: int = 0, anchor: str | None = None) -> None:
    """Refuse what no key of a scenario may hold: NaN or infinite numbers, repeated keys
    and nesting deeper than MAX_DEPTH (named by the key at most three levels down)."""
    if depth <= 3:
        anchor = where
    if depth > MAX_DEPTH:
        raise _fail(anchor, f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, f"{value} is not a finite number")
    if isinstance(value, _Pairs):
        raise _fail(_key(where, value.twice), f"the key {value.twice!r} is given twice")
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, _key(where, str(key)), depth + 1, anchor)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{where or ''}[{index}]", depth + 1, anchor)


def _at(value: object, previous: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"must be a number of seconds, got {_kind(value)}")
    if value > MAX_AT:
        raise _fail(where, f"must be at most {MAX_AT:.0e} seconds")
    if value < previous:
        raise _fail(where, f"must be a number of seconds >= {previous:g} (times never go back)")
    return float(value)


def _step(raw: object, index: int, previous: float, labels: dict[str, int]) -> Step:
    where = f"steps[{index}]"
    step = _dict(raw, where)
    actors = [key for key in ("agent", "human", "tick") if key in step]
    if len(actors) != 1:
        raise _fail(where, "needs exactly one of 'agent', 'human' or 'tick'")
    actor = actors[0]
    if actor == "tick":
        if step["tick"] is not True:
            raise _fail(f"{where}.tick", "must be true (leave the step out to skip it)")
        action = "tick"
    else:
        action = step[actor]
        allowed = AGENT_ACTIONS if actor == "agent" else HUMAN_ACTIONS
        if not isinstance(action, str) or action not in allowed:
            raise _fail(
                f"{where}.{actor}", f"unknown action {action!r} (one of {', '.join(allowed)})"
            )
    at = _at(step["at"], previous, f"{where}.at") if "at" in step else previous
    options = {k: v for k, v in step.items() if k not in ("at", actor)}
    checks = dict(OPTIONS[action])
    if action != "tick":
        checks["expect"] = _TABLE
        checks["expect_error"] = _STR
    _typed(options, checks, where)
    required = REQUIRED.get(action)
    if required and required not in options:
        raise _fail(f"{where}.{required}", f"missing: a {action!r} step needs {required!r}")
    if "expect" in options:
        _typed(options["expect"], STEP_EXPECT[action], f"{where}.expect")
    request = options.get("request")
    if request is not None and request not in labels:
        raise _fail(f"{where}.request", f"no earlier step is labelled {request!r}")
    label = options.get("as")
    if label is not None:
        if label in labels:
            first = f"steps[{labels[label]}]"
            raise _fail(f"{where}.as", f"the label {label!r} is already used by {first}")
        labels[label] = index
    return Step(index, at, actor, action, options)


def parse(data: object, name: str = "scenario") -> Scenario:
    """Check a scenario's structure; every problem names the key at fault."""
    _walk(data, None)
    top = _dict(data, None)
    _typed(top, TOP, None)
    run = top.get("run", {})
    _known(run, RUN_KEYS, "run")
    policies = top.get("policies", [])
    for index, policy in enumerate(policies):
        where = f"policies[{index}]"
        _typed(_dict(policy, where), POLICY, where)
        if "tool" not in policy:
            raise _fail(f"{where}.tool", "missing: a policy needs 'tool'")
    raw_steps = top.get("steps")
    if not raw_steps:
        raise _fail("steps", "expected a non-empty list of steps")
    steps: list[Step] = []
    labels: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        steps.append(_step(raw, index, steps[-1].at if steps else 0.0, labels))
    expect = top.get("expect", {})
    _typed(expect, FINAL_EXPECT, "expect")
    for label, status in expect.get("requests", {}).items():
        where = _key("expect.requests", label)
        if label not in labels:
            raise _fail(where, f"no step is labelled {label!r}")
        if not isinstance(status, str):
            raise _fail(where, f"must be a string, got {_kind(status)}")
    return Scenario(top.get("name", name), run, policies, steps, expect)


def load(path: str | Path) -> Scenario:
    """Read a scenario file (.json, else TOML); every error names the file, and the line
    or the key at fault."""
    file = Path(path)
    source = str(path)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise ScenarioError(None, f"cannot read: {error.strerror}", file=source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ScenarioError(
            None,
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} at offset {error.start} (line {line})",
            file=source,
            line=line,
        ) from None
    try:
        if file.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_json_object)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as error:
        message = f"line {error.lineno}: {error.msg}"
        raise ScenarioError(None, message, file=source, line=error.lineno) from None
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"line (\d+)", str(error))
        raise ScenarioError(
            None, str(error), file=source, line=int(found.group(1)) if found else None
        ) from None
    except RecursionError:
        raise ScenarioError(None, f"nests deeper than {MAX_DEPTH} levels", file=source) from None
    try:
        return attrs.evolve(parse(data, file.stem), source=source)
    except ScenarioError as error:
        error.file = source
        raise


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
    and a ManualClock at 0) and check its expectations. A scenario that cannot go on (a
    refused run or policy that it does not expect, a step with nothing to act on) raises
    ScenarioError naming its file and key."""
    try:
        return _play(scenario, hitl, clock)
    except ScenarioError as error:
        error.file = error.file or scenario.source or None
        raise


def _play(
    scenario: Scenario, hitl: hitl_core.Hitl | None, clock: hitl_core.ManualClock | None
) -> Outcome:
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
    labelled_by = {s.options["as"]: s.where for s in scenario.steps if "as" in s.options}

    def request_for(step: Step, kinds: tuple[str, ...]) -> hitl_core.PermissionRequest | None:
        label = step.options.get("request")
        if label is not None:
            if label not in labels:
                raise _fail(
                    f"{step.where}.request",
                    f"{labelled_by.get(label, 'no step')} (labelled {label!r}) opened no request",
                )
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
