"""The immutable records hitl-core stores and hands out: runs, requests, policies, tasks,
events, and the small result values of the public calls.

Every dict a record holds is copied in and copied out, so changing a dict passed in or
handed out never changes what is stored."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import attrs

from ._errors import ValidationError

__all__ = [
    "AnswerResult",
    "ApproveResult",
    "Event",
    "IdempotencyKey",
    "Lease",
    "Page",
    "PermissionPolicy",
    "PermissionRequest",
    "RequestStatus",
    "Run",
    "RunStatus",
    "Task",
    "ToolGate",
    "WebhookDelivery",
    "WebhookEndpoint",
    "json_copy",
]

PLAN_HEADER = "Plan Approval"
QUESTION_TOOL = "AskUserQuestion"


class RunStatus(enum.StrEnum):
    """The status of a run; the last three are terminal."""

    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class RequestStatus(enum.StrEnum):
    """The status of a request (gate)."""

    PENDING = "pending"
    ANSWERED = "answered"
    ALLOWED = "allowed"
    DENIED = "denied"
    CANCELLED = "cancelled"


def encodable(value: str, code: str, what: str) -> str:
    """`value` if it has a UTF-8 form (no lone surrogates), else ValidationError(code)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(code, f"{what} holds text with no UTF-8 form") from None
    return value


MAX_DEPTH = 64
"""How deeply JSON data may nest (and so no cycles): deeper is refused, not a crash."""
MAX_INT = 2**63
"""Integers must fit in 64 bits, as every store and JSON parser keeps them exactly."""


def json_copy(
    value: Any, code: str = "invalid_request", what: str = "value", limit: int | None = None
) -> Any:
    """Return a deep copy of a JSON-like value, or raise ValidationError(code).

    Accepts dicts with string keys, lists and tuples (copied as lists), strings with a
    UTF-8 form, 64-bit ints, finite floats, bools and None, nested at most MAX_DEPTH deep,
    and, with a `limit`, at most that many characters of compact JSON text (counted as
    the copy goes, so a huge value is refused after reading only `limit` of it)."""
    budget = [limit if limit is not None else -1]
    return _json_copy(value, code, what, 0, budget, limit)


def _spend(budget: list[int], amount: int, code: str, what: str, limit: int | None) -> None:
    if limit is not None:
        budget[0] -= amount
        if budget[0] < 0:
            raise ValidationError(code, f"{what} is larger than {limit:,} characters of JSON")


def _json_copy(
    value: Any, code: str, what: str, depth: int, budget: list[int], limit: int | None
) -> Any:
    if isinstance(value, str):
        _spend(budget, len(value) + 2, code, what, limit)
        return encodable(value, code, what)
    if value is None or isinstance(value, bool):
        _spend(budget, 5, code, what, limit)
        return value
    if isinstance(value, int):
        if not -MAX_INT <= value < MAX_INT:
            raise ValidationError(code, f"{what} holds an integer beyond 64 bits")
        _spend(budget, 20, code, what, limit)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(code, f"{what} holds a non-finite number")
        _spend(budget, 24, code, what, limit)
        return value
    if depth >= MAX_DEPTH:
        raise ValidationError(code, f"{what} nests deeper than {MAX_DEPTH} levels (or loops)")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(code, f"{what} has a non-string key {type(key).__name__}")
            _spend(budget, len(key) + 4, code, what, limit)
            out[encodable(key, code, what)] = _json_copy(item, code, what, depth + 1, budget, limit)
        return out
    if isinstance(value, (list, tuple)):
        _spend(budget, 2, code, what, limit)
        return [_json_copy(item, code, what, depth + 1, budget, limit) for item in value]
    raise ValidationError(code, f"{what} holds a {type(value).__name__}, not JSON data")


def copy(value: Any) -> Any:
    """A deep copy of JSON data that was already checked by `json_copy`: records copy
    their dicts in and out with this, so nobody shares a mutable part of a record."""
    if isinstance(value, dict):
        return {key: copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy(item) for item in value]
    return value


R = TypeVar("R", bound=attrs.AttrsInstance)
_EVOLVERS: dict[type, Callable[[Any, dict[str, Any]], Any]] = {}


def _compile_evolver(cls: type) -> Callable[[Any, dict[str, Any]], Any]:
    """Generate `evolve` for one record class: a straight-line function that copies every
    field and converts only the changed ones (as attrs generates `__init__`)."""
    namespace: dict[str, Any] = {"_new": object.__new__, "_set": object.__setattr__, "cls": cls}
    lines = ["def evolve(record, changes):", "    new = _new(cls)"]
    for field in attrs.fields(cls):
        name, alias = field.name, field.alias or field.name
        value = f"changes.pop({alias!r})"
        if field.converter is not None:
            namespace[f"convert_{name}"] = field.converter
            value = f"convert_{name}({value})"
        lines.append(f"    _set(new, {name!r}, {value} if {alias!r} in changes else record.{name})")
    lines += [
        "    if changes:",
        "        raise TypeError(f'{cls.__name__} has no fields {sorted(changes)}')",
        "    return new",
    ]
    exec("\n".join(lines), namespace)
    evolver: Callable[[Any, dict[str, Any]], Any] = namespace["evolve"]
    return evolver


_BUILDERS: dict[type, Callable[[dict[str, Any]], Any]] = {}


def _compile_builder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """Generate `fresh` for one record class: set every field from the given values (or
    its default) with no converter, for values the engine has just made and owns. An
    unknown or missing name is a TypeError, as in the attrs constructor."""
    fields = attrs.fields(cls)
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_set": object.__setattr__,
        "cls": cls,
        "_refuse": _refuse_fields,
        "_known": frozenset(field.alias or field.name for field in fields),
        "_required": tuple(
            field.alias or field.name for field in fields if field.default is attrs.NOTHING
        ),
    }
    lines = [
        "def build(values):",
        "    if not _known.issuperset(values) or not all(n in values for n in _required):",
        "        _refuse(cls, values, _known, _required)",
        "    new = _new(cls)",
    ]
    for field in fields:
        name, alias = field.name, field.alias or field.name
        if field.default is attrs.NOTHING:
            value = f"values[{alias!r}]"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            namespace[f"factory_{name}"] = field.default.factory
            value = f"values[{alias!r}] if {alias!r} in values else factory_{name}()"
        else:
            namespace[f"default_{name}"] = field.default
            value = f"values.get({alias!r}, default_{name})"
        lines.append(f"    _set(new, {name!r}, {value})")
    lines.append("    return new")
    exec("\n".join(lines), namespace)
    builder: Callable[[dict[str, Any]], Any] = namespace["build"]
    return builder


def _refuse_fields(
    cls: type, values: dict[str, Any], known: frozenset[str], required: tuple[str, ...]
) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    missing = [name for name in required if name not in values]
    raise TypeError(f"{cls.__name__} needs the fields {missing}")


def fresh(cls: type[R], **values: Any) -> R:
    """Construct a record from values that are already in their stored form (enums,
    JSON copies nobody else holds), skipping the converters. Engine-internal; unknown
    or missing field names are a TypeError, as in the attrs constructor."""
    builder = _BUILDERS.get(cls)
    if builder is None:
        builder = _BUILDERS[cls] = _compile_builder(cls)
    new: R = builder(values)
    return new


def evolve(record: R, **changes: Any) -> R:
    """`attrs.evolve` for hitl-core's records, faster: unchanged fields are carried over
    as they are (already converted and copied), only changed ones go through their
    converter. The hot paths make a few of these per call."""
    cls = type(record)
    evolver = _EVOLVERS.get(cls)
    if evolver is None:
        evolver = _EVOLVERS[cls] = _compile_evolver(cls)
    new: R = evolver(record, changes)
    return new


def _copy_dict(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else copy(value)


def _copy_dict_required(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = copy(value)
    return copied


@attrs.frozen(kw_only=True)
class Run:
    """One execution of an agent, as stored."""

    id: str
    status: RunStatus = attrs.field(converter=RunStatus)
    human_in_the_loop: bool
    permission_mode: str
    user_id: str | None
    task_id: str | None
    _metadata: dict[str, Any] | None = attrs.field(converter=_copy_dict, eq=True)
    input_timeout: float
    suspended: bool = False
    created_at: float
    updated_at: float
    plan_approved: bool = False
    plan_revisions: int = 0
    remembered_allow: frozenset[str] = frozenset()
    remembered_deny: frozenset[str] = frozenset()
    deadline: float | None = None
    """When the run is suspended if a request is still pending then (None: no deadline)."""
    _output: Any = attrs.field(default=None, converter=copy)
    error: str | None = None
    version: int = 1
    lease_worker: str | None = None
    """The worker holding the run's lease (see `Lease`), or None."""
    lease_token: int = 0
    """The fencing token of the latest lease: every claim of the run increases it."""
    lease_expires: float | None = None
    """When the current lease lapses (None: no lease is held)."""
    _checkpoint: Any = attrs.field(default=None, converter=copy)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """A copy of the run's metadata."""
        return _copy_dict(self._metadata)

    @property
    def output(self) -> Any:
        """A copy of the output the agent completed with."""
        return copy(self._output)

    @property
    def checkpoint(self) -> Any:
        """A copy of the host's own JSON record of where its agent is (None: none)."""
        return copy(self._checkpoint)

    @property
    def is_terminal(self) -> bool:
        """True once the run is completed, failed or cancelled."""
        return self.status.is_terminal

    def lease_at(self, now: float) -> Lease | None:
        """The lease that holds the run at `now`, or None when none does."""
        if self.lease_worker is None or self.lease_expires is None or self.lease_expires <= now:
            return None
        return Lease(
            run_id=self.id,
            worker=self.lease_worker,
            token=self.lease_token,
            expires_at=self.lease_expires,
        )


@attrs.frozen(kw_only=True)
class PermissionRequest:
    """One thing a run waits on: a question, a tool call or a plan."""

    request_id: str
    run_id: str
    kind: str
    tool_name: str
    _tool_input: dict[str, Any] = attrs.field(converter=_copy_dict_required)
    status: RequestStatus = attrs.field(converter=RequestStatus)
    created_at: float
    resolved_at: float | None = None
    _answers: dict[str, Any] | None = attrs.field(default=None, converter=_copy_dict)
    decision: str | None = None
    reason: str | None = None
    remember: bool = False
    actor: str | None = None
    source: str | None = None
    resumed: bool = False
    """True when this decision restarted a suspended run: the agent that waited for it
    live was freed at the timeout, so the host must start a new one (SPEC 6)."""

    @property
    def tool_input(self) -> dict[str, Any]:
        """A copy of the tool's arguments (for questions and plans: the questions)."""
        copied: dict[str, Any] = copy(self._tool_input)
        return copied

    @property
    def answers(self) -> dict[str, Any] | None:
        """A copy of the answers, keyed by question text (None until answered)."""
        return _copy_dict(self._answers)

    @property
    def is_pending(self) -> bool:
        """True while the request waits for a decision."""
        return self.status is RequestStatus.PENDING

    @property
    def is_plan_approval(self) -> bool:
        """True for a plan request."""
        return self.kind == "plan"

    @property
    def plan_text(self) -> str | None:
        """The proposed plan of a plan request, else None."""
        if self.kind != "plan":
            return None
        text: str = self._tool_input["questions"][0]["question"]
        return text

    @property
    def questions(self) -> list[dict[str, Any]]:
        """A copy of the questions of a question or plan request ([] for a tool request)."""
        questions: list[dict[str, Any]] = copy(self._tool_input.get("questions", []))
        return questions


@attrs.frozen(kw_only=True)
class PermissionPolicy:
    """A stored pre-approval of a tool name or pattern for one user scope."""

    id: str
    user_id: str | None
    tool_name: str
    source: str
    created_at: float


@attrs.frozen(kw_only=True)
class Task:
    """A reusable task; runs started from it inherit its settings."""

    id: str
    name: str
    human_in_the_loop: bool | None
    permission_mode: str | None
    user_id: str | None
    created_at: float


@attrs.frozen(kw_only=True)
class Event:
    """Something that happened to a run, recorded with the change itself."""

    id: str
    type: str
    run_id: str
    created_at: float
    _data: dict[str, Any] = attrs.field(factory=dict, converter=_copy_dict_required)

    @property
    def data(self) -> dict[str, Any]:
        """A copy of the event's data."""
        copied: dict[str, Any] = copy(self._data)
        return copied


@attrs.frozen(kw_only=True)
class ToolGate:
    """What `agent.request_tool` decided: allowed, denied, or pending a person."""

    status: str
    source: str | None
    request_id: str | None = None
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        """True when the tool may run now."""
        return self.status == "allowed"

    @property
    def pending(self) -> bool:
        """True when a person must decide (see `agent.result`)."""
        return self.status == "pending"


@attrs.frozen(kw_only=True)
class AnswerResult:
    """What `runs.answer` returns. `applied` is False when this call found the request
    already answered the same way: `request.actor`, `reason` and `resolved_at` then say
    who answered first, why and when."""

    request: PermissionRequest
    resumed: bool
    status: str = "ok"
    applied: bool = True


@attrs.frozen(kw_only=True)
class ApproveResult:
    """What `runs.approve` returns. `applied` is False when this call found the request
    already decided the same way: `request.actor`, `reason` and `resolved_at` then say
    who decided first, why and when."""

    request: PermissionRequest
    resumed: bool
    remembered: bool
    applied: bool = True


@attrs.frozen(kw_only=True)
class Lease:
    """A worker's claim on a run (`runs.claim`): while it holds, no other worker may act
    as the run's agent. `token` fences it: a newer claim of the run has a larger token,
    and an agent holding an older one is refused (409 `lease_lost`)."""

    run_id: str
    worker: str
    token: int
    expires_at: float


@attrs.frozen(kw_only=True)
class IdempotencyKey:
    """A `runs.create(idempotency_key=...)` key, bound to the run it made and to a
    fingerprint of the call's arguments (a store record; not returned by the API)."""

    key: str
    run_id: str
    fingerprint: str
    created_at: float


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class WebhookEndpoint:
    """A registered receiver of signed events. `secret` is whole only in what
    `webhooks.create` and a rotating `webhooks.update` return; elsewhere it is masked."""

    id: str
    url: str
    events: tuple[str, ...] = attrs.field(converter=_strings)
    secret: str = attrs.field(repr=False)
    active: bool
    created_at: float
    updated_at: float

    def masked(self) -> WebhookEndpoint:
        """This endpoint with its secret cut to the first 4 characters and "..."."""
        return evolve(self, secret=self.secret[:4] + "...")


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """One event on its way to one endpoint, and what happened on each attempt.

    `status` is "pending" (waiting for its first or next attempt, or being sent),
    "delivered" (a 2xx answer) or "failed" (attempts ran out, or the endpoint was
    deactivated). `payload` is the exact JSON body that is sent and signed."""

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    run_id: str
    payload: str = attrs.field(repr=False)
    status: str
    attempts: int = 0
    response_status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    next_retry_at: float | None = None
    created_at: float
    updated_at: float


T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    """One page of a cursor-paged listing, oldest first."""

    data: list[T]
    has_more: bool
    next_starting_after: str | None
