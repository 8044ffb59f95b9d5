"""The simulated agent of `hitl serve`: builds each run's program (a scenario's agent
steps, or a default script chosen by the run's message) and plays every program on one
background thread through hitl-core's agent side, polling `agent.result` for decisions."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any

import attrs

import hitl_core
from hitl_core import ConflictError, HitlError, NotFoundError, PermissionRequest, ValidationError

from ._state import ServeState

__all__ = ["Progress", "Worker", "default_program", "scenario_program"]

log = logging.getLogger("hitl_server.agent")

Step = dict[str, Any]

POLL_MAX = 1.0
"""The longest pause between two looks at a request an agent has waited on for long."""
MAX_REVISIONS = 10
"""A plan revised this many times without approval makes the agent give up (fail)."""

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
    (its notes become the run's output), and a plan revision to propose."""

    step: int = 0
    waiting: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    revisions: int = 0
    plan: str | None = None
    replan: str | None = None
    retry_after_plan: bool = False
    wake_at: float | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON form for the serve state."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        """Read `to_json`'s form back (unknown keys ignored)."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.define
class _Program:
    run_id: str
    steps: list[Step]
    progress: Progress
    waiting_since: float | None = None
    next_poll: float = 0.0


class _Finished(Exception):
    """The run ended (by the agent or by someone else): stop playing it."""


class Worker:
    """Plays every simulated agent on one thread. `start` adds a run; `run_forever`
    advances each agent as far as it can go without a decision, every `interval` s."""

    def __init__(self, hitl: hitl_core.Hitl, state: ServeState, interval: float = 0.05) -> None:
        self.hitl = hitl
        self.state = state
        self.interval = interval
        self._programs: dict[str, _Program] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def start(
        self, run_id: str, steps: list[Step], *, message: str, teammate_id: int | None
    ) -> None:
        """Give a new run its agent; it starts on the worker's next pass."""
        progress = Progress()
        self.state.add_agent(
            run_id,
            message=message,
            teammate_id=teammate_id,
            program=steps,
            progress=progress.to_json(),
        )
        with self._lock:
            self._programs[run_id] = _Program(run_id, steps, progress)
        self._wake.set()

    def recover(self) -> int:
        """Pick up the agents a previous server left unfinished; return how many."""
        rows = self.state.active_agents()
        with self._lock:
            for run_id, steps, progress in rows:
                self._programs[run_id] = _Program(run_id, steps, Progress.from_json(progress))
        return len(rows)

    @property
    def active(self) -> int:
        """How many agents are still playing."""
        with self._lock:
            return len(self._programs)

    def run_forever(self, stop: threading.Event) -> None:
        """Advance every agent until `stop` is set."""
        while not stop.is_set():
            self.run_once()
            self._wake.wait(self.interval)
            self._wake.clear()

    def run_once(self) -> None:
        """One pass over every agent."""
        with self._lock:
            programs = list(self._programs.values())
        now = time.monotonic()
        for program in programs:
            if now < program.next_poll:
                continue
            before = program.progress.to_json()
            try:
                self._advance(program)
            except _Finished:
                program.progress.done = True
            except HitlError as error:  # the store is busy or closed: try again next pass
                log.warning("agent of run %s: %s", program.run_id, error)
            except Exception:  # never let one agent stop the others
                log.exception("agent of run %s crashed; failing the run", program.run_id)
                self._give_up(program, "the simulated agent crashed")
            if program.progress.to_json() != before:
                self.state.save_progress(
                    program.run_id, program.progress.to_json(), done=program.progress.done
                )
            if program.progress.done:
                with self._lock:
                    self._programs.pop(program.run_id, None)
            elif program.progress.waiting:
                # Poll a long wait less often: every 50 ms at first, every second at most.
                since = program.waiting_since = program.waiting_since or now
                program.next_poll = now + min(POLL_MAX, max(self.interval, (now - since) / 10))
            else:
                program.waiting_since, program.next_poll = None, 0.0

    # -- playing one agent -------------------------------------------------------------------
    def _give_up(self, program: _Program, why: str) -> None:
        program.progress.done = True
        with contextlib.suppress(HitlError):
            hitl_core.Agent(self.hitl, program.run_id).fail(why)

    def _advance(self, program: _Program) -> None:
        agent = hitl_core.Agent(self.hitl, program.run_id)
        p = program.progress
        if p.wake_at is not None:
            if time.time() < p.wake_at:
                if agent.run().is_terminal:  # cancelled while it was busy
                    raise _Finished
                return
            p.wake_at = None
        if p.waiting:
            still: list[str] = []
            for request_id in p.waiting:
                try:
                    found = agent.result(request_id)
                except NotFoundError as error:
                    if error.code == "run_not_found":
                        raise _Finished from None
                    continue  # a request that vanished cannot be waited for
                if found.is_pending:
                    still.append(request_id)
                else:
                    self._learn(p, found)
            p.waiting = still
            if still:
                return
        for _ in range(100):  # never hog the thread
            if p.waiting or p.done or p.wake_at is not None:
                return
            try:
                self._next(program, agent)
            except ConflictError as error:
                if error.code == "run_not_active":
                    raise _Finished from None
                if error.code == "pending_requests":  # requests it lost track of (a crash)
                    p.waiting = [r.request_id for r in agent_pending(self.hitl, program.run_id)]
                    continue
                raise
            except NotFoundError as error:
                if error.code == "run_not_found":
                    raise _Finished from None
                raise

    def _learn(self, p: Progress, found: PermissionRequest) -> None:
        """Read a decision the agent waited for."""
        status = found.status.value
        if found.source == "run_ended":
            raise _Finished
        if found.kind == "plan":
            if found.decision == "approve":
                p.notes.append(f"plan approved (revision {found.tool_input.get('revision')})")
                p.replan = None
            else:
                p.revisions += 1
                p.replan = found.reason or "revise"
            return
        if found.kind == "question":
            answers = found.answers or {}
            p.notes.append("; ".join(f"{q} -> {a}" for q, a in answers.items()))
            return
        why = f": {found.reason}" if found.reason else ""
        p.notes.append(f"{found.tool_name}: {status} ({found.source}{why})")

    def _next(self, program: _Program, agent: hitl_core.Agent) -> None:
        """Do the agent's next move; it may open requests to wait for."""
        p = program.progress
        if p.replan is not None:
            if p.revisions >= MAX_REVISIONS:
                agent.fail(f"the plan was revised {p.revisions} times without approval")
                raise _Finished
            base = p.plan or "Plan"
            text = f"{base}\n(revision {p.revisions + 1}, after feedback: {p.replan})"
            try:
                p.waiting = [agent.propose_plan(text).request_id]
            except ConflictError as error:
                if error.code != "not_plan_mode":
                    raise
                p.notes.append("plan dropped: the run left plan mode")
            p.replan = None
            return
        if p.step >= len(program.steps):
            agent.complete(_summary(p))
            raise _Finished
        step = program.steps[p.step]
        action = step.get("action")
        try:
            advance = self._do(program, agent, step)
        except ConflictError as error:
            if error.code not in ("hitl_disabled", "not_plan_mode"):
                raise
            p.notes.append(f"{action} skipped ({error.code})")
            advance = True
        except ValidationError as error:
            agent.fail(f"step {p.step + 1} ({action}) was refused: {error}")
            raise _Finished from None
        if advance:
            p.step += 1

    def _do(self, program: _Program, agent: hitl_core.Agent, step: Step) -> bool:
        """One step; returns False when the same step must run again (after a plan)."""
        p = program.progress
        action = step.get("action")
        if action == "sleep":
            p.wake_at = time.time() + float(step.get("seconds", 0))
        elif action == "ask":
            p.waiting = [agent.ask(_opt(step, "questions")).request_id]
        elif action == "request_tool":
            return self._tool(program, agent, step)
        elif action == "request_tools":
            for call in step.get("calls", []):
                gate = agent.request_tool(call["tool"], call.get("input"))
                if gate.request_id is not None:
                    p.waiting.append(gate.request_id)
                else:
                    p.notes.append(f"{call['tool']}: {gate.status} ({gate.source})")
        elif action == "propose_plan":
            if agent.run().plan_approved:
                p.notes.append("plan already approved")
            else:
                p.plan = str(step.get("plan"))
                p.waiting = [agent.propose_plan(_opt(step, "plan")).request_id]
        elif action == "complete":
            output = step.get("output")
            agent.complete(_summary(p) if output is None else output)
            raise _Finished
        elif action == "fail":
            agent.fail(step.get("error") or "failed")
            raise _Finished
        return True

    def _tool(self, program: _Program, agent: hitl_core.Agent, step: Step) -> bool:
        p = program.progress
        name = _opt(step, "tool")
        gate = agent.request_tool(name, _opt(step, "input"), safe=step.get("safe", False))
        if gate.status == "pending" and gate.request_id is not None:
            p.retry_after_plan = False
            p.waiting = [gate.request_id]
            return True
        if gate.source == "plan_not_approved" and not p.retry_after_plan:
            later = program.steps[p.step + 1 :]
            if not any(s.get("action") == "propose_plan" for s in later):
                # No plan is coming: propose one now, then call the tool again.
                p.retry_after_plan = True
                p.plan = f"1. Call {name}\n2. Report the result"
                p.waiting = [agent.propose_plan(p.plan).request_id]
                return False
        p.retry_after_plan = False
        p.notes.append(f"{name}: {gate.status} ({gate.source})")
        return True


def _opt(step: Step, key: str) -> Any:
    """A step option as written (hitl-core validates it)."""
    return step.get(key)


def agent_pending(hitl: hitl_core.Hitl, run_id: str) -> list[PermissionRequest]:
    """The run's pending requests."""
    return [r for r in hitl.runs.permissions(run_id) if r.is_pending]


def _summary(p: Progress) -> str:
    return "Done. " + ("; ".join(n for n in p.notes if n) or "nothing to report") + "."
