"""Input validation: run configuration (SPEC 2), questions and answers (SPEC 4.1, 4.3).
Each check raises the documented ValidationError and returns a normalised copy."""

from __future__ import annotations

import math
from typing import Any

from ._errors import ValidationError
from ._records import PLAN_HEADER, PermissionRequest, encodable, json_copy

__all__ = [
    "DEFAULT_INPUT_TIMEOUT",
    "LIMITS",
    "MODES",
    "config",
    "identifier",
    "normalise_answers",
    "normalise_questions",
    "optional_text",
    "text",
]

MODES = ("autonomous", "approval", "plan")
DEFAULT_INPUT_TIMEOUT = 75.0
MAX_QUESTIONS = 4

# How long each text the API takes may be (characters), and how large JSON data may be
# (characters of its compact JSON text, about its size in bytes). Longer is 422, with the
# field named; the check is the first thing done with the value, so a huge input costs
# only its length. docs/decisions.md lists them.
MAX_ID = 128
"""Ids and cursors: run, request, policy, task, event and delivery ids."""
MAX_NAME = 256
"""Tool names and patterns, user_id, actor, worker, keys, task names, question headers
and option labels."""
MAX_TEXT = 4_000
"""Reasons, answers, option descriptions, question texts, error messages."""
MAX_PLAN = 20_000
"""A plan's text."""
MAX_CHOICES = 32
"""Labels in one multi-select answer."""
MAX_JSON = 65_536
"""tool_input, output and checkpoint."""
MAX_METADATA = 16_384
"""A run's metadata."""

LIMITS: dict[str, int] = {
    "ids and cursors": MAX_ID,
    "names (tools, patterns, user_id, actor, worker, keys, task names, headers, labels)": (
        MAX_NAME
    ),
    "texts (reasons, answers, descriptions, questions, errors)": MAX_TEXT,
    "plan text": MAX_PLAN,
    "labels in a multi-select answer": MAX_CHOICES,
    "tool_input, output, checkpoint (JSON characters)": MAX_JSON,
    "metadata (JSON characters)": MAX_METADATA,
}


def plain(value: str, what: str, code: str) -> str:
    """`value` if it can be stored as plain text in every store: a UTF-8 form and no NUL
    character (PostgreSQL's text cannot hold one; JSON data may, escaped)."""
    if "\x00" in value:
        raise ValidationError(code, f"{what} holds a NUL character")
    return encodable(value, code, what)


def too_long(what: str, limit: int, code: str = "invalid_request") -> ValidationError:
    """The refusal of a value longer than its limit."""
    return ValidationError(code, f"{what} is longer than {limit:,} characters")


def shown(value: object) -> str:
    """A short repr for an error message (a huge int has none it could print)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def limit(value: object, maximum: int = 100, name: str = "limit") -> int:
    """A page size (or batch size, named `name`) from 1 to `maximum`, or 422
    invalid_request."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValidationError("invalid_request", f"{name} must be an integer from 1 to {maximum}")
    return value


def cursor(value: object) -> str | None:
    """None or an id string to page after (422 invalid_cursor otherwise)."""
    if value is not None and (not isinstance(value, str) or len(value) > MAX_ID):
        raise ValidationError(
            "invalid_cursor", f"a cursor is an id string of at most {MAX_ID} characters"
        )
    return value


def identifier(value: object, what: str) -> str:
    """An id the caller names (a run, a request, a policy...): a string of at most MAX_ID
    characters, or 422 invalid_request naming `what`. Whether it names anything is the
    caller's lookup (404)."""
    if not isinstance(value, str):
        raise ValidationError("invalid_request", f"{what} must be a string; got {shown(value)}")
    if len(value) > MAX_ID:
        raise too_long(what, MAX_ID)
    return value


def unknown_cursor(value: object) -> ValidationError:
    """The error for a cursor that names nothing in the listing."""
    return ValidationError("invalid_cursor", f"{shown(value)} names nothing in this listing")


def mode(value: object) -> str:
    """A valid permission mode, or 422 invalid_permission_mode."""
    if not isinstance(value, str) or value not in MODES:
        raise ValidationError(
            "invalid_permission_mode",
            f"permission_mode must be one of {', '.join(MODES)}; got {shown(value)}",
        )
    return value


def switch(value: object) -> bool:
    """A real bool for human_in_the_loop, or 422 invalid_config."""
    if not isinstance(value, bool):
        raise ValidationError(
            "invalid_config", f"human_in_the_loop must be True or False; got {shown(value)}"
        )
    return value


def combination(human_in_the_loop: bool, permission_mode: str) -> None:
    """Refuse approval or plan mode without the master switch (422 hitl_required)."""
    if permission_mode != "autonomous" and not human_in_the_loop:
        raise ValidationError(
            "hitl_required",
            f"permission_mode={permission_mode!r} requires human_in_the_loop=True",
        )


def seconds(
    value: object, what: str, code: str = "invalid_config", *, allow_zero: bool = False
) -> float:
    """A finite number of seconds > 0 (or >= 0), as a float; 422 `code` otherwise."""
    try:
        number = float(value) if isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.nan
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or number < 0
        or (number == 0 and not allow_zero)
    ):
        limit = ">= 0" if allow_zero else "> 0"
        raise ValidationError(
            code, f"{what} must be a number of seconds {limit}; got {shown(value)}"
        )
    return number


def timeout(value: object) -> float:
    """A finite number of seconds > 0, or 422 invalid_config."""
    if type(value) is float and 0.0 < value < math.inf:  # the usual case
        return value
    return seconds(value, "input_timeout")


def user(value: object, code: str = "invalid_config") -> str | None:
    """A user scope: None (the account) or a non-empty string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(
            code, f"user_id must be a non-empty string or None; got {shown(value)}"
        )
    if len(value) > MAX_NAME:
        raise too_long("user_id", MAX_NAME, code)
    return plain(value, "user_id", code)


def config(
    human_in_the_loop: object, permission_mode: object, input_timeout: object
) -> tuple[bool, str, float]:
    """Validate a run's configuration as SPEC 2 says, in a fixed order."""
    hitl = switch(human_in_the_loop)
    chosen = mode(permission_mode)
    combination(hitl, chosen)
    return hitl, chosen, timeout(input_timeout)


def text(value: object, what: str, code: str = "invalid_request", *, limit: int = MAX_NAME) -> str:
    """A non-empty (after stripping) string of at most `limit` characters, as given."""
    if isinstance(value, str) and len(value) > limit:
        raise too_long(what, limit, code)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(code, f"{what} must be a non-empty string; got {shown(value)}")
    return plain(value, what, code)


def optional_text(
    value: object, what: str, *, limit: int = MAX_TEXT, code: str = "invalid_request"
) -> str | None:
    """None or a string of at most `limit` characters (422 otherwise)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(code, f"{what} must be a string or None; got {shown(value)}")
    if len(value) > limit:
        raise too_long(what, limit, code)
    return plain(value, what, code)


def flag(value: object, what: str) -> bool:
    """A real bool, or 422 invalid_request."""
    if not isinstance(value, bool):
        raise ValidationError(
            "invalid_request", f"{what} must be True or False; got {shown(value)}"
        )
    return value


_QUESTION_KEYS = frozenset({"question", "header", "options", "multiSelect"})
_OPTION_KEYS = frozenset({"label", "description"})


def _option(raw: object, where: str) -> dict[str, str]:
    if isinstance(raw, str):
        raw = {"label": raw}
    if not isinstance(raw, dict):
        raise ValidationError("invalid_request", f"{where}: an option is a string or a dict")
    unknown = set(raw) - _OPTION_KEYS
    if unknown:
        raise ValidationError("invalid_request", f"{where}: unknown option keys {sorted(unknown)}")
    label = text(raw.get("label"), f"{where}: option label")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValidationError("invalid_request", f"{where}: option description must be a string")
    if len(description) > MAX_TEXT:
        raise too_long(f"{where}: option description", MAX_TEXT)
    return {"label": label, "description": description}


def _question(raw: object, index: int) -> dict[str, Any]:
    where = f"question {index + 1}"
    if not isinstance(raw, dict):
        raise ValidationError("invalid_request", f"{where} must be a dict")
    unknown = set(raw) - _QUESTION_KEYS
    if unknown:
        raise ValidationError("invalid_request", f"{where}: unknown keys {sorted(unknown)}")
    question = text(raw.get("question"), f"{where}: question", limit=MAX_TEXT)
    header = raw.get("header", "")
    if not isinstance(header, str):
        raise ValidationError("invalid_request", f"{where}: header must be a string")
    if len(header) > MAX_NAME:
        raise too_long(f"{where}: header", MAX_NAME)
    multi = raw.get("multiSelect", False)
    if not isinstance(multi, bool):
        raise ValidationError("invalid_request", f"{where}: multiSelect must be True or False")
    raw_options = raw.get("options")
    if not isinstance(raw_options, (list, tuple)):
        raise ValidationError("invalid_request", f"{where}: options must be a list")
    if len(raw_options) > MAX_CHOICES:
        raise ValidationError("invalid_request", f"{where}: at most {MAX_CHOICES} options")
    options = [_option(option, where) for option in raw_options]
    labels = [option["label"] for option in options]
    if len(set(labels)) < 2 or len(set(labels)) != len(labels):
        raise ValidationError(
            "invalid_request", f"{where}: needs at least 2 distinct option labels"
        )
    return {"question": question, "header": header, "options": options, "multiSelect": multi}


def normalise_questions(raw: object) -> list[dict[str, Any]]:
    """1 to 4 well-formed questions with distinct texts, normalised (options as dicts)."""
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= MAX_QUESTIONS:
        raise ValidationError(
            "invalid_request", f"questions must be a list of 1 to {MAX_QUESTIONS} questions"
        )
    questions = [_question(item, index) for index, item in enumerate(raw)]
    texts = [question["question"] for question in questions]
    if len(set(texts)) != len(texts):
        raise ValidationError("invalid_request", "question texts must be distinct")
    checked: list[dict[str, Any]] = json_copy(questions, "invalid_request", "questions")
    return checked


def _single(value: object, question: str) -> str:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise too_long(f"the answer to {shown(question)}", MAX_TEXT, "invalid_answers")
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(
            "invalid_answers", f"the answer to {shown(question)} must be a non-empty string"
        )
    return value.strip()


def _multi(value: object, question: str) -> list[str]:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise too_long(f"the answer to {shown(question)}", MAX_TEXT, "invalid_answers")
    if isinstance(value, (list, tuple)) and len(value) > MAX_CHOICES:
        raise ValidationError(
            "invalid_answers", f"the answer to {shown(question)} has over {MAX_CHOICES} labels"
        )
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
        if any(isinstance(part, str) and len(part) > MAX_TEXT for part in parts):
            raise too_long(f"an answer to {shown(question)}", MAX_TEXT, "invalid_answers")
        if not all(isinstance(part, str) for part in parts):
            raise ValidationError(
                "invalid_answers", f"the answers to {shown(question)} must all be strings"
            )
    else:
        raise ValidationError(
            "invalid_answers",
            f"the answer to {shown(question)} must be a list of labels or a string",
        )
    chosen = [part.strip() for part in parts if part.strip()]
    if not chosen:
        raise ValidationError("invalid_answers", f"the answer to {shown(question)} is empty")
    return list(dict.fromkeys(chosen))


def normalise_answers(request: PermissionRequest, answers: dict[str, Any]) -> dict[str, Any]:
    """Answers keyed by question text, every question answered once (SPEC 4.1, 4.3).

    A plan request takes one answer keyed by "Plan Approval" or by the plan text; it is
    stored as "Approve" (any case, surrounding space ignored) or as the stripped feedback."""
    if request.kind == "plan":
        plan = request.plan_text
        assert plan is not None
        keys = [key for key in answers if key in (PLAN_HEADER, plan)]
        if len(answers) != 1 or not keys:
            raise ValidationError(
                "invalid_answers", f"a plan is answered with one answer keyed {PLAN_HEADER!r}"
            )
        value = encodable(_single(answers[keys[0]], PLAN_HEADER), "invalid_answers", "answers")
        return {plan: "Approve" if value.lower() == "approve" else value}
    questions = {question["question"]: question for question in request.questions}
    unknown = [key for key in answers if key not in questions]
    if unknown:
        raise ValidationError("invalid_answers", f"no such question: {shown(unknown[0])}")
    missing = [key for key in questions if key not in answers]
    if missing:
        raise ValidationError("invalid_answers", f"question {shown(missing[0])} is not answered")
    out: dict[str, Any] = {}
    for key, question in questions.items():
        value = answers[key]
        out[key] = _multi(value, key) if question["multiSelect"] else _single(value, key)
    checked: dict[str, Any] = json_copy(out, "invalid_answers", "answers")
    return checked
