"""What a simulated agent of `hitl serve` plays and where it is: its program (a
scenario's agent steps, or a default script chosen by the run's message), its progress,
and the run checkpoint that holds both, so that any server on the store can play it on."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs

from hitl_core import Run

__all__ = [
    "CHECKPOINT_MARK",
    "Program",
    "Progress",
    "checkpoint",
    "default_program",
    "initial_checkpoint",
    "is_serve_checkpoint",
    "read_checkpoint",
    "scenario_program",
    "teammate_of",
]

Step = dict[str, Any]

MAX_REVISIONS = 10
"""A plan revised this many times without approval makes the agent give up (fail)."""
CHECKPOINT_MARK = "hitl_serve"
"""The key that marks a run checkpoint as a `hitl serve` agent's; its value is the
checkpoint format's version."""
CHECKPOINT_VERSION = 1

QUESTION = {
    "question": "Which format should the result take?",
    "header": "Format",
    "options": [
        {"label": "Summary", "description": "A few lines"},
        {"label": "Full report", "description": "Every detail"},
    ],
    "multiSelect": False,
}

_ASKS = re.compile(r"\?|\b(questions?|ask|clarify|which)\b", re.IGNORECASE)
_FAILS = re.compile(r"\bfail(ure)?\b", re.IGNORECASE)
_PARALLEL = re.compile(r"\bparallel\b", re.IGNORECASE)
_SLEEP = re.compile(r"\bsleep:([0-9]+(?:\.[0-9]+)?)")
MAX_SLEEP = 3600.0
_TOOL = re.compile(r"\btool:([A-Za-z0-9_][A-Za-z0-9_.\-]*)")
_KEYWORDS: tuple[tuple[re.Pattern[str], str, dict[str, Any]], ...] = (
    (
        re.compile(r"\b(e-?mail|mail|gmail)\b", re.IGNORECASE),
        "gmail.send",
        {"to": "team@example.com", "subject": "Update"},
    ),
    (re.compile(r"\bslack\b", re.IGNORECASE), "slack.post", {"channel": "#general"}),
    (
        re.compile(r"\b(linear|ticket|issue)\b", re.IGNORECASE),
        "linear.create_issue",
        {"title": "Follow-up"},
    ),
    (re.compile(r"\b(crm|leads?|hubspot)\b", re.IGNORECASE), "crm.update", {"segment": "leads"}),
    (
        re.compile(r"\b(calendar|meeting)\b", re.IGNORECASE),
        "calendar.create_event",
        {"title": "Sync"},
    ),
)
DEFAULT_TOOL = ("gmail.send", {"to": "team@example.com", "subject": "Update"})


def _action_tools(message: str, tools: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    named = _TOOL.findall(message)
    if named:
        return [(name, {}) for name in dict.fromkeys(named)]
    if tools:
        return [(name, {}) for name in dict.fromkeys(tools)]
    found = [(name, dict(args)) for pattern, name, args in _KEYWORDS if pattern.search(message)]
    return found or [(DEFAULT_TOOL[0], dict(DEFAULT_TOOL[1]))]


def default_program(
    message: str, *, permission_mode: str, tools: list[str] | None = None
) -> list[Step]:
    """The script for a run without a scenario, chosen by its message (see docs/serve.md):
    a question when the message asks one, a plan first in plan mode, a safe read, then the
    action tools; it completes, or fails when the message says "fail"."""
    actions = _action_tools(message, tools)
    steps: list[Step] = []
    pause = _SLEEP.search(message)
    if pause:
        steps.append({"action": "sleep", "seconds": min(float(pause.group(1)), MAX_SLEEP)})
    if _ASKS.search(message):
        steps.append({"action": "ask", "questions": [dict(QUESTION)]})
    if permission_mode == "plan":
        lines = [f"1. Read what is needed for: {message.strip()[:80]}"]
        lines += [f"{n}. Call {name}" for n, (name, _) in enumerate(actions, start=2)]
        lines.append(f"{len(lines) + 1}. Report the result")
        steps.append({"action": "propose_plan", "plan": "\n".join(lines)})
    steps.append(
        {
            "action": "request_tool",
            "tool": "web.search",
            "input": {"q": message[:100]},
            "safe": True,
        }
    )
    calls = [{"tool": name, "input": args} for name, args in actions]
    if _PARALLEL.search(message) and len(calls) > 1:
        steps.append({"action": "request_tools", "calls": calls})
    else:
        steps += [{"action": "request_tool", **call} for call in calls]
    if _FAILS.search(message):
        steps.append({"action": "fail", "error": "the simulated agent was asked to fail"})
    else:
        steps.append({"action": "complete"})
    return steps


_SCENARIO_KEYS = {
    "ask": ("questions",),
    "request_tool": ("tool", "input", "safe"),
    "propose_plan": ("plan",),
    "complete": ("output",),
    "fail": ("error",),
}


def scenario_program(scenario: Any) -> list[Step]:
    """A scenario's agent steps, in order (`wait` is implied after every request; human
    and tick steps belong to the API's callers)."""
    steps: list[Step] = []
    for step in scenario.steps:
        if step.actor != "agent" or step.action not in _SCENARIO_KEYS:
            continue
        options = {k: step.options[k] for k in _SCENARIO_KEYS[step.action] if k in step.options}
        steps.append({"action": step.action, **options})
    return steps


@attrs.define
class Progress:
    """Where one agent is: the next step, the requests it waits on, what it has learnt
    (its notes become the run's output), a plan revision to propose, how many plans it
    proposed (their requests' keys), and when a sleep step ends (seconds since the epoch)."""

    step: int = 0
    waiting: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    revisions: int = 0
    proposals: int = 0
    plan: str | None = None
    replan: str | None = None
    retry_after_plan: bool = False
    wake_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON form for the run checkpoint."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        """Read `to_json`'s form back (unknown keys, such as an older server's, ignored)."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.frozen
class Program:
    """An agent's program: its steps, the teammate id its run was created with (echoed on
    the wire), and a digest of the request text it was built from."""

    steps: list[Step]
    teammate_id: int | None = None
    request: str = ""


def _digest(message: str, tools: list[str] | None) -> str:
    text = json.dumps({"message": message, "tools": tools}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint(program: Program, progress: Progress) -> dict[str, Any]:
    """The run checkpoint of an agent: its program and where it is."""
    return {
        CHECKPOINT_MARK: CHECKPOINT_VERSION,
        "request": program.request,
        "teammate_id": program.teammate_id,
        "steps": program.steps,
        "progress": progress.to_json(),
    }


def initial_checkpoint(
    *,
    message: str,
    permission_mode: str = "autonomous",
    tools: list[str] | None = None,
    teammate_id: int | None = None,
    steps: list[Step] | None = None,
) -> dict[str, Any]:
    """The checkpoint a new run starts with: the program for `message` (`steps`, else the
    default script for the message, tools and mode) and no progress. The same request
    always gives the same checkpoint, so a retry with its Idempotency-Key finds its run,
    and a request that differs in message, tools or teammate does not."""
    if steps is None:
        steps = default_program(message, permission_mode=permission_mode, tools=tools)
    program = Program(steps=steps, teammate_id=teammate_id, request=_digest(message, tools))
    return checkpoint(program, Progress())


def is_serve_checkpoint(value: Any) -> bool:
    """Whether a run checkpoint is a `hitl serve` agent's (other hosts' runs on the same
    store are left alone)."""
    return isinstance(value, dict) and CHECKPOINT_MARK in value


def read_checkpoint(value: Any) -> tuple[Program, Progress]:
    """The program and progress in a `hitl serve` checkpoint (ValueError when it is not
    one, or is damaged)."""
    if not is_serve_checkpoint(value) or value[CHECKPOINT_MARK] != CHECKPOINT_VERSION:
        raise ValueError("not a hitl serve agent checkpoint of a known version")
    steps, progress = value.get("steps"), value.get("progress")
    teammate = value.get("teammate_id")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ValueError("the checkpoint's steps are not a list of objects")
    if not isinstance(progress, dict) or not (teammate is None or isinstance(teammate, int)):
        raise ValueError("the checkpoint's progress or teammate is damaged")
    try:
        where = Progress.from_json(progress)
    except TypeError as error:
        raise ValueError(f"the checkpoint's progress is damaged: {error}") from None
    return Program(steps, teammate, str(value.get("request", ""))), where


def teammate_of(run: Run) -> int | None:
    """The teammate id a run was created with (None: none, or not a `hitl serve` run)."""
    value = run.checkpoint
    if not is_serve_checkpoint(value):
        return None
    teammate = value.get("teammate_id")
    return teammate if isinstance(teammate, int) and not isinstance(teammate, bool) else None
