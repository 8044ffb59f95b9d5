"""The run lifecycle rulebook: which operation may move a run from which status to which.

Theory of operation: everything that decides a run's status transitions is in this file,
and this file does not know who calls it. The rulebook is one `transitions.Machine`, built
once at import with no model. At import it is fired on a throwaway cursor (an object
that carries only the current status) for every status, trigger and guard value, and
what it answered is kept in `_TABLE`; at run time firing is a dictionary lookup in that
table, so a trigger costs nanoseconds instead of the machine's microseconds, and the
machine stays the one source of truth (the table cannot say anything it did not). A
trigger that is not valid from a status becomes one ConflictError here, the only place
that imports `transitions`. The docs' lifecycle diagram is drawn from `TRANSITIONS`.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine, MachineError

from ._errors import ConflictError
from ._records import RunStatus

__all__ = ["TRANSITIONS", "allowed_from", "check", "fire", "mermaid"]

_RUNNING = RunStatus.RUNNING.value
_AWAITING = RunStatus.AWAITING_APPROVAL.value
_ACTIVE = [_RUNNING, _AWAITING]


def _last(event: Any) -> bool:
    """Guard: the change resolved the run's last pending request."""
    return bool(event.kwargs.get("last"))


# trigger, sources, destination (None: stays where it is), guard. Each public operation
# fires one trigger: its refusals come from here (checked first, before the operation's
# other checks) and its new status too.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "open_request", "source": _ACTIVE, "dest": _AWAITING},
    # a person's decision (answer, approve) and a switch to autonomous, which allows the
    # pending tool requests: back to running once nothing is pending; a repeated decision
    # or one that leaves others pending changes nothing
    {"trigger": "decide", "source": _AWAITING, "dest": _RUNNING, "conditions": [_last]},
    {"trigger": "decide", "source": _ACTIVE, "dest": None, "unless": [_last]},
    {"trigger": "switch_mode", "source": _AWAITING, "dest": _RUNNING, "conditions": [_last]},
    {"trigger": "switch_mode", "source": _ACTIVE, "dest": None, "unless": [_last]},
    {"trigger": "suspend", "source": _AWAITING, "dest": None},
    # a worker's lease and checkpoint: only while the run can still change
    {"trigger": "hold", "source": _ACTIVE, "dest": None},
    {"trigger": "complete", "source": _RUNNING, "dest": RunStatus.COMPLETED.value},
    {"trigger": "fail", "source": _ACTIVE, "dest": RunStatus.FAILED.value},
    {"trigger": "cancel", "source": _ACTIVE, "dest": RunStatus.CANCELLED.value},
]

# What a refusal from a non-terminal status means, per trigger. From a terminal status
# every refusal is run_not_active.
_REFUSALS: dict[str, tuple[str, str]] = {
    "complete": ("pending_requests", "the run has pending requests; resolve them first"),
}

_MACHINE = Machine(
    model=None,
    states=[status.value for status in RunStatus],
    transitions=TRANSITIONS,
    initial=RunStatus.RUNNING.value,
    auto_transitions=False,
    send_event=True,
    queued=False,
)


class _Cursor:
    """The throwaway model a trigger fires on: just the current status."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


def _fire_machine(status: RunStatus, trigger: str, last: bool) -> RunStatus | None:
    """Ask the machine itself: the status after `trigger`, or None when it refuses."""
    cursor = _Cursor(status.value)
    try:
        moved = _MACHINE.events[trigger].trigger(cursor, last=last)
    except MachineError:
        return None
    return RunStatus(cursor.state) if moved else None


# (status, trigger, last) -> the new status, or None for a refusal; every combination.
_TABLE: dict[tuple[RunStatus, str, bool], RunStatus | None] = {
    (status, trigger, last): _fire_machine(status, trigger, last)
    for status in RunStatus
    for trigger in _MACHINE.events
    for last in (False, True)
}


def _refuse(trigger: str, status: RunStatus) -> ConflictError:
    if status.is_terminal:
        return ConflictError(
            "run_not_active", f"the run is {status.value}; it can no longer change"
        )
    if trigger not in _REFUSALS:  # only a damaged record gets here
        return ConflictError("invalid_transition", f"cannot {trigger} a {status.value} run")
    code, message = _REFUSALS[trigger]
    return ConflictError(code, message)


def check(status: RunStatus, trigger: str) -> None:
    """Raise the documented ConflictError unless `trigger` may fire from `status`."""
    if _TABLE[status, trigger, False] is None and _TABLE[status, trigger, True] is None:
        raise _refuse(trigger, status)


def fire(status: RunStatus, trigger: str, *, last: bool = False) -> RunStatus:
    """Fire `trigger` from `status` (with the guard input `last`: the decision resolved
    the run's last pending request) and return the new status, or raise ConflictError."""
    moved = _TABLE[status, trigger, last]
    if moved is None:
        raise _refuse(trigger, status)
    return moved


def allowed_from(status: RunStatus) -> list[str]:
    """The triggers that may fire from `status`, sorted."""
    return sorted(
        {
            trigger
            for (source, trigger, _), dest in _TABLE.items()
            if source is status and dest is not None
        }
    )


def mermaid() -> str:
    """The lifecycle as a Mermaid state diagram, drawn from the rulebook itself."""
    lines = ["stateDiagram-v2", f"    [*] --> {RunStatus.RUNNING.value}: create"]
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            dest = row["dest"] or source
            label = row["trigger"]
            if "conditions" in row:
                label += " [last pending resolved]"
            if "unless" in row:
                label += " [others pending, or a repeat]"
            lines.append(f"    {source} --> {dest}: {label}")
    lines.extend(f"    {status.value} --> [*]" for status in RunStatus if status.is_terminal)
    return "\n".join(lines) + "\n"
