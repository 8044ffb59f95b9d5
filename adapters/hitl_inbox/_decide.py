"""Turning a submitted form into one hitl-core decision (`runs.approve` or `runs.answer`,
with the signed-in person as `actor`), and the outcome into a sentence a person reads:
done, already decided by someone else (and by whom), or what to fix."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

import hitl_core
from hitl_core import HitlError, ValidationError

from ._listing import whole_number

__all__ = ["Form", "Outcome", "decide", "describe_resolved"]

SHORT = 60


@attrs.frozen
class Form:
    """A submitted urlencoded form: its fields in order (a name may repeat)."""

    pairs: Sequence[tuple[str, str]]

    def get(self, name: str, default: str = "") -> str:
        """The first value of `name`."""
        return next((value for key, value in self.pairs if key == name), default)

    def all(self, name: str) -> list[str]:
        """Every value of `name`."""
        return [value for key, value in self.pairs if key == name]


@attrs.frozen
class Outcome:
    """What became of a submission. `kind`: "ok" (decided), "late" (someone else had
    decided it; nothing recorded), "invalid" (fix the form: shown next to it) or "error"."""

    kind: str
    message: str


def short(text: str | None, limit: int = SHORT) -> str:
    """`text` cut to `limit` characters for a one-line message."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def what(request: hitl_core.PermissionRequest) -> str:
    """A request named for a person: "gmail.send", "the question ...", "the plan ..."."""
    if request.kind == "tool":
        return short(request.tool_name)
    if request.kind == "plan":
        return f"the plan (revision {request.tool_input.get('revision', 1)})"
    first = request.questions[0]["question"] if request.questions else ""
    return f"the question \u201c{short(first)}\u201d"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return " at " + datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S UTC")


def describe_resolved(request: hitl_core.PermissionRequest) -> str:
    """How a request that is no longer pending was resolved, and by whom."""
    by = f"by {short(request.actor, 40)}" if request.actor else "by someone who gave no name"
    if request.status == "cancelled":
        return f"{what(request)} was cancelled: its run ended"
    if request.source == "mode_switch":
        return f"{what(request)} was allowed by a switch of the run to autonomous mode"
    if request.kind == "tool":
        status = request.status.value
        return f"{what(request)} was already {status} {by}{_when(request.resolved_at)}"
    if request.kind == "plan":
        if request.decision == "approve":
            return f"{what(request)} was already approved {by}{_when(request.resolved_at)}"
        return (
            f"a revision of {what(request)} was already asked for {by}"
            f"{_when(request.resolved_at)}: \u201c{short(request.reason)}\u201d"
        )
    return f"{what(request)} was already answered {by}{_when(request.resolved_at)}"


def _find(hitl: hitl_core.Hitl, run_id: str, request_id: str) -> hitl_core.PermissionRequest | None:
    try:
        requests = hitl.runs.permissions(run_id)
    except HitlError:
        return None
    return next((r for r in requests if r.request_id == request_id), None)


def _answers(request: hitl_core.PermissionRequest, form: Form) -> dict[str, Any]:
    """The answers a question form gives: option indices as labels, typed text as free
    text (instead of the choice for a one-answer question, beside the ticked ones for a
    several-answers question). A question left unanswered is a ValidationError."""
    answers: dict[str, Any] = {}
    for index, question in enumerate(request.questions):
        labels = [option["label"] for option in question["options"]]
        picks = (whole_number(value) for value in form.all(f"q{index}"))
        chosen = [labels[pick] for pick in picks if pick is not None and pick < len(labels)]
        typed = form.get(f"q{index}.other").strip()
        if question["multiSelect"]:
            picked = [*chosen, *([typed] if typed else [])]
        else:
            picked = [typed] if typed else chosen[:1]
        if not picked:
            raise ValidationError(
                "invalid_answers", f"choose or type an answer to \u201c{question['question']}\u201d"
            )
        answers[question["question"]] = picked if question["multiSelect"] else picked[0]
    return answers


def decide(hitl: hitl_core.Hitl, run_id: str, request_id: str, form: Form, actor: str) -> Outcome:
    """Apply the form's decision on the request as `actor`."""
    request = _find(hitl, run_id, request_id)
    if request is None:
        return Outcome(
            "error", f"Not done: there is no request {short(request_id)} on run {short(run_id)}"
        )
    if not request.is_pending:
        return _late(request)
    decision = form.get("decision")
    try:
        if request.kind == "tool":
            if decision not in ("allow", "deny"):
                raise ValidationError("invalid_decision", "choose Allow or Deny")
            reason = form.get("reason").strip() or None
            approved = hitl.runs.approve(
                run_id,
                request_id=request_id,
                decision=decision,
                remember=form.get("remember") == "1",
                reason=reason,
                actor=actor,
            )
            done, resumed, applied = approved.request, approved.resumed, approved.applied
        else:
            if request.kind == "plan":
                if decision == "approve":
                    answer = "Approve"
                elif decision == "revise":
                    answer = form.get("feedback").strip()
                    if not answer or answer.lower() == "approve":
                        raise ValidationError(
                            "invalid_answers", "write what should change in the plan"
                        )
                else:
                    raise ValidationError(
                        "invalid_decision", "choose Approve or Ask for a revision"
                    )
                answers: dict[str, Any] = {"Plan Approval": answer}
            else:
                answers = _answers(request, form)
            answered = hitl.runs.answer(run_id, answers=answers, request_id=request_id, actor=actor)
            done, resumed, applied = answered.request, answered.resumed, answered.applied
    except ValidationError as error:
        return Outcome("invalid", error.message)
    except HitlError as error:
        now = _find(hitl, run_id, request_id)
        if now is not None and not now.is_pending:
            return _late(now)
        return Outcome("error", f"Not done: {error.message} ({error.code})")
    if not applied:
        return _late(done)
    return Outcome("ok", _done(done) + (" The suspended run resumes." if resumed else ""))


def _late(request: hitl_core.PermissionRequest) -> Outcome:
    return Outcome(
        "late", f"Too late: {describe_resolved(request)}; your decision was not recorded"
    )


def _done(request: hitl_core.PermissionRequest) -> str:
    if request.kind == "tool":
        return f"{request.status.value.capitalize()} {what(request)}."
    if request.kind == "plan":
        if request.decision == "approve":
            return f"Approved {what(request)}."
        return f"Asked for a revision of {what(request)}."
    return f"Answered {what(request)}."
