"""The endpoints of `hitl serve`, as plain synchronous handlers: each reads one parsed
call (path ids, query, JSON body, the caller's user scope), talks to hitl-core, and
returns the hosted API's JSON. Refusals are hitl-core's errors or `ApiError`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

import hitl_core
from hitl_core import NotFoundError, Run, ValidationError

from . import _wire as wire
from ._program import initial_checkpoint, scenario_program, teammate_of
from ._state import ServeState

__all__ = ["Api", "ApiError", "Call", "Reply"]

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_RUN_KEYS = ("human_in_the_loop", "permission_mode", "user_id", "input_timeout", "metadata")


class ApiError(Exception):
    """A refusal of the HTTP layer itself (auth, routing, body, wire types)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@attrs.frozen
class Call:
    """One parsed request: path parameters, query parameters, the JSON body (None when
    there was none), and the Idempotency-Key header."""

    path: dict[str, str]
    query: dict[str, str]
    body: Any = None
    idempotency_key: str | None = None

    @property
    def user(self) -> str | None:
        """The caller's end-user scope (`?user_id=`), None for the account."""
        value = self.query.get("user_id")
        if value is not None and not value:
            raise ValidationError("invalid_request", "user_id must not be empty")
        return value

    def object(self) -> dict[str, Any]:
        """The body, which must be a JSON object (a missing body counts as {})."""
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise ValidationError("invalid_request", "the request body must be a JSON object")
        return self.body

    def integer(self, name: str, default: int) -> int:
        """A query parameter that must be a whole number."""
        raw = self.query.get(name)
        if raw is None:
            return default
        if not _INTEGER.fullmatch(raw):
            raise ValidationError("invalid_request", f"{name} must be an integer")
        return int(raw)

    def flag(self, name: str) -> bool:
        """A query parameter that must be true or false."""
        raw = self.query.get(name, "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise ValidationError("invalid_request", f"{name} must be true or false")
        return raw in ("true", "1")


@attrs.frozen
class Reply:
    """What a handler answers: a status, a JSON value and extra headers."""

    body: Any
    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)


def _field(body: dict[str, Any], name: str) -> Any:
    """A body field as sent (hitl-core validates it)."""
    return body.get(name)


def _optional(body: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ValidationError("invalid_request", f"{name} has the wrong type")
    if not isinstance(value, kinds):
        raise ValidationError("invalid_request", f"{name} has the wrong type")
    return value


MAX_NAME = 256
"""Characters of a tool name, as the core allows."""
MAX_NAMES = 64
"""Tool names a run or task may list."""
MAX_MESSAGE = 20_000
"""Characters of a run's message (the simulated agent's instructions)."""


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError("invalid_request", f"{name} must be a list of names")
    if len(value) > MAX_NAMES or any(len(v) > MAX_NAME for v in value):
        raise ValidationError(
            "invalid_request",
            f"{name} holds at most {MAX_NAMES} names of at most {MAX_NAME} characters",
        )
    return value


def _teammate(body: dict[str, Any]) -> int | None:
    team: int | None = _optional(body, "teammate_id", int)
    agent: int | None = _optional(body, "agent_id", int)
    if team is not None and agent is not None and team != agent:
        raise ValidationError("invalid_request", "teammate_id and agent_id differ")
    return team if team is not None else agent


def _message(body: dict[str, Any], *names: str) -> str:
    given = [body[n] for n in names if body.get(n) is not None]
    if not given:
        raise ValidationError("invalid_request", f"{names[0]} is required")
    if not all(isinstance(v, str) and v.strip() for v in given):
        raise ValidationError("invalid_request", f"{names[0]} must be a non-empty string")
    if any(len(v) > MAX_MESSAGE for v in given):
        raise ValidationError(
            "invalid_request", f"{names[0]} is longer than {MAX_MESSAGE:,} characters"
        )
    if len(set(given)) > 1:
        raise ValidationError("invalid_request", f"{' / '.join(names)} differ")
    text: str = given[0]
    return text


def _owner(call: Call, body: dict[str, Any]) -> str | None:
    """The user a new run is for: the body's user_id, else the query's scope."""
    scope = call.user
    given = body.get("user_id")
    if given is not None and scope is not None and given != scope:
        raise ValidationError("invalid_request", "user_id in the query and the body differ")
    return given if given is not None else scope


Create = Callable[[dict[str, Any], str | None], Run]
"""Creates a run with an agent checkpoint and an Idempotency-Key (or None)."""


class Api:
    """The handlers, bound to one engine (whose id source is `ids`), its serve state and
    the scenario every run's agent follows (None: the default script)."""

    def __init__(
        self,
        hitl: hitl_core.Hitl,
        state: ServeState,
        ids: wire.WireIds,
        scenario: Any = None,
    ) -> None:
        self.hitl = hitl
        self.state = state
        self.ids = ids
        self.scenario = scenario

    # -- helpers -------------------------------------------------------------------------
    def _run(self, call: Call, name: str = "run_id") -> Run:
        """The run the path names, in the caller's scope (404 run_not_found otherwise)."""
        raw = call.path[name]
        found = wire.core_id(wire.RUN, raw)
        try:
            run = self.hitl.runs.get(found) if found else None
        except NotFoundError:
            run = None
        if run is None or (call.user is not None and run.user_id != call.user):
            raise NotFoundError("run_not_found", f"no run {raw}")
        return run

    def _wire_run(self, run: Run) -> dict[str, Any]:
        return wire.run(run, teammate_id=teammate_of(run))

    def _run_config(self, call: Call, body: dict[str, Any]) -> dict[str, Any]:
        defaults = dict(self.scenario.run) if self.scenario is not None else {}
        config = {k: v for k, v in defaults.items() if k in _RUN_KEYS}
        for key in _RUN_KEYS:
            if body.get(key) is not None:
                config[key] = body[key]
        owner = _owner(call, body)
        if owner is not None:
            config["user_id"] = owner
        return config

    def _checkpoint(
        self, message: str, permission_mode: object, tools: list[str] | None, teammate: int | None
    ) -> dict[str, Any]:
        """The new run's agent: its program (the scenario's, else the default script for
        the message, tools and mode) and its teammate, as the run's first checkpoint."""
        steps = scenario_program(self.scenario) if self.scenario is not None else None
        return initial_checkpoint(
            message=message,
            permission_mode=permission_mode if isinstance(permission_mode, str) else "",
            tools=tools,
            teammate_id=teammate,
            steps=steps,
        )

    def _start(
        self, call: Call, create: Create, checkpoint: dict[str, Any], stream: object
    ) -> Reply:
        """Create a run and its agent's program in one transaction, with the request's
        Idempotency-Key: a retry with the same request gets the run the key made
        (`Idempotent-Replay: true`); the key with another request is 422
        idempotency_key_reused. Any server on the store then claims the run and plays it."""
        if stream is not None and not isinstance(stream, bool):
            raise ValidationError("invalid_request", "stream must be true or false")
        if stream:
            raise ValidationError(
                "streaming_unsupported",
                "hitl serve answers runs with JSON only: pass stream=False "
                "(create_and_wait and run_and_wait already do)",
            )
        self.ids.forget()
        run = create(checkpoint, call.idempotency_key)
        headers = {} if self.ids.made(run.id) else {"Idempotent-Replay": "true"}
        return Reply(self._wire_run(run), headers=headers)

    # -- runs ----------------------------------------------------------------------------
    def create_run(self, call: Call) -> Reply:
        """POST /runs: start a run and its simulated agent."""
        body = call.object()
        message = _message(body, "message")
        teammate = _teammate(body)
        tools = _strings(body, "tools")
        config = self._run_config(call, body)
        mode = config.get("permission_mode", "autonomous")
        return self._start(
            call,
            lambda checkpoint, key: self.hitl.runs.create(
                **config, checkpoint=checkpoint, idempotency_key=key
            ),
            self._checkpoint(message, mode, tools, teammate),
            body.get("stream"),
        )

    def list_runs(self, call: Call) -> Reply:
        """GET /runs: a page of runs, oldest first."""
        user = call.user
        limit = call.integer("limit", 20)
        status = call.query.get("status")
        cursor = call.query.get("starting_after")
        after = wire.core_id(wire.RUN, cursor) if cursor is not None else None
        if cursor is not None and after is None:
            raise ValidationError("invalid_cursor", f"starting_after {cursor!r} names no run")
        task_raw = call.query.get("task_id")
        task = wire.core_id(wire.TASK, task_raw) if task_raw is not None else None
        if task_raw is not None and task is None:
            return Reply({"data": [], "has_more": False, "next_starting_after": None})
        everyone = call.flag("include_end_user_runs")

        def keep(run: Run) -> bool:
            if user is None and not everyone and run.user_id is not None:
                return False
            return task is None or run.task_id == task

        if not 1 <= limit <= 100:
            raise ValidationError("invalid_request", "limit must be an integer from 1 to 100")
        runs: list[Run] = []
        position = after
        while len(runs) <= limit:
            page = self.hitl.runs.list(
                user_id=user, status=status, limit=100, starting_after=position
            )
            runs += [run for run in page.data if keep(run)]
            if not page.has_more or not page.data:
                break
            position = page.data[-1].id
        more = len(runs) > limit
        runs = runs[:limit]
        return Reply(
            {
                "data": [self._wire_run(r) for r in runs],
                "has_more": more,
                "next_starting_after": wire.wire_id(runs[-1].id) if more else None,
            }
        )

    def get_run(self, call: Call) -> Reply:
        """GET /runs/{id}."""
        return Reply(self._wire_run(self._run(call)))

    def cancel_run(self, call: Call) -> Reply:
        """POST /runs/{id}/cancel."""
        run = self._run(call)
        return Reply(self._wire_run(self.hitl.runs.cancel(run.id)))

    def list_requests(self, call: Call) -> Reply:
        """GET /runs/{id}/permissions: every request of the run, oldest first."""
        run = self._run(call)
        requests = self.hitl.runs.permissions(run.id)
        return Reply([wire.request(r, input_timeout=run.input_timeout) for r in requests])

    def answer(self, call: Call) -> Reply:
        """POST /runs/{id}/answer: answer a question or a plan."""
        body = call.object()
        run = self._run(call)
        if "answers" not in body:
            raise ValidationError("invalid_answers", "answers is required")
        result = self.hitl.runs.answer(
            run.id,
            answers=body["answers"],
            request_id=body.get("request_id"),
            actor=body.get("actor"),
        )
        return Reply(
            {
                "status": result.status,
                "resumed": result.resumed,
                "request_id": result.request.request_id,
                "decision": result.request.decision,
                "applied": result.applied,
                "actor": result.request.actor,
            }
        )

    def approve(self, call: Call) -> Reply:
        """POST /runs/{id}/approve: allow or deny a tool request."""
        body = call.object()
        run = self._run(call)
        request_id = body.get("request_id")
        if request_id is None:
            raise ValidationError("invalid_request", "request_id is required")
        result = self.hitl.runs.approve(
            run.id,
            request_id=request_id,
            decision=body.get("decision", "allow"),
            remember=body.get("remember", False),
            reason=body.get("reason"),
            actor=body.get("actor"),
        )
        return Reply(
            wire.request(
                result.request,
                input_timeout=run.input_timeout,
                resumed=result.resumed,
                remembered=result.remembered,
                applied=result.applied,
            )
        )

    def switch_mode(self, call: Call) -> Reply:
        """PATCH /runs/{id}/permission-mode."""
        body = call.object()
        run = self._run(call)
        if "permission_mode" not in body:
            raise ValidationError("invalid_permission_mode", "permission_mode is required")
        changed = self.hitl.runs.update_permission_mode(
            run.id, permission_mode=body["permission_mode"]
        )
        return Reply(
            {
                "permission_mode": changed.permission_mode,
                "id": wire.wire_id(changed.id),
                "status": changed.status.value,
            }
        )

    # -- policies ------------------------------------------------------------------------
    def create_policy(self, call: Call) -> Reply:
        """POST /permissions: pre-approve a tool for a user scope (idempotent)."""
        body = call.object()
        owner = _owner(call, body)
        created = self.hitl.permissions.create(tool=_field(body, "tool"), user_id=owner)
        return Reply(wire.policy(created))

    def list_policies(self, call: Call) -> Reply:
        """GET /permissions: one scope's policies, oldest first."""
        cursor = call.query.get("starting_after")
        after = wire.core_id(wire.POLICY, cursor) if cursor is not None else None
        if cursor is not None and after is None:
            raise ValidationError("invalid_cursor", f"starting_after {cursor!r} names no policy")
        page = self.hitl.permissions.list(
            user_id=call.user, limit=call.integer("limit", 20), starting_after=after
        )
        return Reply(_page(page, wire.policy))

    def delete_policy(self, call: Call) -> Reply:
        """DELETE /permissions/{id}: remove a policy of the caller's scope."""
        raw = call.path["policy_id"]
        found = wire.core_id(wire.POLICY, raw)
        if found is None:
            raise NotFoundError("policy_not_found", f"no policy {raw} in this scope")
        removed = self.hitl.permissions.delete(found, user_id=call.user)
        return Reply({"id": wire.wire_id(removed.id), "deleted": True})

    # -- tasks ---------------------------------------------------------------------------
    def _task(self, call: Call) -> hitl_core.Task:
        raw = call.path["task_id"]
        found = wire.core_id(wire.TASK, raw)
        try:
            task = self.hitl.tasks.get(found) if found else None
        except NotFoundError:
            task = None
        if task is None or (call.user is not None and task.user_id != call.user):
            raise NotFoundError("task_not_found", f"no task {raw}")
        return task

    def create_task(self, call: Call) -> Reply:
        """POST /tasks: store a reusable task."""
        body = call.object()
        instructions = _message(body, "instructions", "message", "prompt")
        name = _optional(body, "name", str)
        extras = {
            "instructions": instructions,
            "teammate_id": _teammate(body),
            "tools": _strings(body, "tools") or [],
            "expected_output": _optional(body, "expected_output", str),
            "goals": _optional(body, "goals", str),
        }
        title = name if name and name.strip() else instructions.strip().splitlines()[0][:80]
        task = self.hitl.tasks.create(
            name=title,
            human_in_the_loop=body.get("human_in_the_loop"),
            permission_mode=body.get("permission_mode"),
            user_id=_owner(call, body),
        )
        self.state.add_task(task.id, extras)
        return Reply(wire.task(task, extras))

    def get_task(self, call: Call) -> Reply:
        """GET /tasks/{id}."""
        task = self._task(call)
        return Reply(wire.task(task, self.state.task(task.id)))

    def run_task(self, call: Call) -> Reply:
        """POST /tasks/{id}/runs: start a run of the task and its simulated agent."""
        body = call.object()
        task = self._task(call)
        extras = self.state.task(task.id) or {}
        owner = _owner(call, body)
        if owner is not None and task.user_id is not None and owner != task.user_id:
            raise NotFoundError("task_not_found", f"no task {call.path['task_id']}")
        overrides = {k: body[k] for k in _RUN_KEYS if body.get(k) is not None}
        if owner is not None:
            overrides["user_id"] = owner
        mode = overrides.get("permission_mode") or task.permission_mode or "autonomous"
        checkpoint = self._checkpoint(
            str(extras.get("instructions", task.name)),
            mode,
            extras.get("tools") or None,
            extras.get("teammate_id"),
        )
        return self._start(
            call,
            lambda checkpoint, key: self.hitl.tasks.run(
                task.id, checkpoint=checkpoint, idempotency_key=key, **overrides
            ),
            checkpoint,
            body.get("stream"),
        )

    # -- webhooks ------------------------------------------------------------------------
    def _endpoint(self, call: Call) -> str:
        raw = call.path["webhook_id"]
        found = wire.core_id(wire.WEBHOOK, raw)
        if found is None or call.user is not None:  # endpoints are account-wide
            raise NotFoundError("webhook_not_found", f"no webhook endpoint {raw}")
        return found

    def create_webhook(self, call: Call) -> Reply:
        """POST /webhooks: register an endpoint; the secret is whole only here."""
        body = call.object()
        if body.get("user_id") is not None or call.user is not None:
            raise ValidationError(
                "user_webhooks_unsupported",
                "hitl serve keeps account-wide webhook endpoints only: omit user_id",
            )
        if "url" not in body:
            raise ValidationError("invalid_url", "url is required")
        created = self.hitl.webhooks.create(url=body["url"], events=body.get("events"))
        return Reply(wire.webhook(created))

    def get_webhook(self, call: Call) -> Reply:
        """GET /webhooks/{id} (secret masked)."""
        return Reply(wire.webhook(self.hitl.webhooks.get(self._endpoint(call))))

    def list_webhooks(self, call: Call) -> Reply:
        """GET /webhooks: endpoints, oldest first (none in an end-user scope)."""
        limit = call.integer("limit", 20)
        cursor = call.query.get("starting_after")
        after = wire.core_id(wire.WEBHOOK, cursor) if cursor is not None else None
        if cursor is not None and after is None:
            raise ValidationError("invalid_cursor", f"starting_after {cursor!r} names no webhook")
        page = self.hitl.webhooks.list(limit=limit, starting_after=after)
        if call.user is not None:
            return Reply({"data": [], "has_more": False, "next_starting_after": None})
        return Reply(_page(page, wire.webhook))

    def update_webhook(self, call: Call) -> Reply:
        """PATCH /webhooks/{id}: url, events, active, rotate_secret."""
        body = call.object()
        found = self._endpoint(call)
        updated = self.hitl.webhooks.update(
            found,
            url=body.get("url"),
            events=body.get("events"),
            active=body.get("active"),
            rotate_secret=body.get("rotate_secret", False),
        )
        return Reply(wire.webhook(updated))

    def delete_webhook(self, call: Call) -> Reply:
        """DELETE /webhooks/{id}: remove an endpoint and its delivery log."""
        found = self._endpoint(call)
        self.hitl.webhooks.delete(found)
        return Reply({"id": wire.wire_id(found), "deleted": True})

    def list_deliveries(self, call: Call) -> Reply:
        """GET /webhooks/{id}/deliveries: the endpoint's delivery log, oldest first."""
        found = self._endpoint(call)
        cursor = call.query.get("starting_after")
        after = wire.core_id(wire.DELIVERY, cursor) if cursor is not None else None
        if cursor is not None and after is None:
            raise ValidationError("invalid_cursor", f"starting_after {cursor!r} names no delivery")
        page = self.hitl.webhooks.list_deliveries(
            found,
            status=call.query.get("status"),
            limit=call.integer("limit", 20),
            starting_after=after,
        )
        return Reply(_page(page, wire.delivery))


def _page(page: hitl_core.Page[Any], encode: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {
        "data": [encode(item) for item in page.data],
        "has_more": page.has_more,
        "next_starting_after": (
            wire.wire_id(page.next_starting_after) if page.next_starting_after else None
        ),
    }
