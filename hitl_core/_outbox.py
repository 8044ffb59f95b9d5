"""Webhook endpoints and the delivery outbox (`hitl.webhooks`): registering receivers,
fanning recorded events out into deliveries, and the claim/record protocol a delivery
worker (`hitl_webhooks.Dispatcher`) follows. No HTTP here: the worker sends."""

from __future__ import annotations

import builtins
import json
import math
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from . import _validate as check
from ._errors import NotFoundError, ValidationError
from ._logic import Context, later
from ._records import Event, Page, WebhookDelivery, WebhookEndpoint, evolve
from ._store import Transaction
from ._validate import shown
from .webhooks import DEFAULT_EVENTS, EVENT_TYPES, signed_headers

if TYPE_CHECKING:
    from ._engine import Hitl

__all__ = ["Outgoing", "Webhooks", "catch_up"]

CURSOR = "webhooks"
START = "start"  # the cursor before the first event: set when the log was empty
MAX_ATTEMPTS = 3
BACKOFF = (2.0, 4.0)
_BODY_LIMIT = 1000
_MAX_URL = 2048


@attrs.frozen(kw_only=True)
class Outgoing:
    """One claimed delivery, ready to POST: `body` with `headers` to `url`."""

    delivery: WebhookDelivery
    url: str
    headers: dict[str, str]
    body: str


def _url(value: object) -> str:
    """An ASCII http(s) URL with a host, no credentials and no spaces (422 invalid_url)."""
    problem = "a webhook URL is an ASCII http(s) URL with a host"
    if not isinstance(value, str) or not value or len(value) > _MAX_URL:
        raise ValidationError("invalid_url", f"{problem}; got {shown(value)}")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        raise ValidationError("invalid_url", f"{problem}; got {shown(value)}") from None
    if (
        not value.isascii()
        or any(ch.isspace() for ch in value)
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
    ):
        raise ValidationError("invalid_url", f"{problem}; got {shown(value)}")
    if parts.username or parts.password:
        raise ValidationError("invalid_url", "a webhook URL must not hold credentials")
    return value


def _events(value: object) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_EVENTS
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValidationError("invalid_event_type", "events must be a list of event type names")
    unknown = [v for v in value if v not in EVENT_TYPES]
    if unknown:
        raise ValidationError(
            "invalid_event_type",
            f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}",
        )
    return tuple(dict.fromkeys(value))


def payload(event: Event) -> str:
    """The JSON body sent for an event (compact, keys sorted)."""
    body = {
        "id": event.id,
        "event": event.type,
        "run_id": event.run_id,
        "created_at": event.created_at,
        "data": event.data,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _endpoint(tx: Transaction, endpoint_id: object) -> WebhookEndpoint:
    found = tx.get_endpoint(check.identifier(endpoint_id, "endpoint_id"))
    if found is None:
        raise NotFoundError("webhook_not_found", f"no webhook endpoint {shown(endpoint_id)}")
    return found


def _all_endpoints(tx: Transaction) -> list[WebhookEndpoint]:
    endpoints: list[WebhookEndpoint] = []
    while True:
        found = tx.list_endpoints(
            limit=1000, starting_after=endpoints[-1].id if endpoints else None
        )
        assert found is not None
        batch, more = found
        endpoints.extend(batch)
        if not more:
            return endpoints


def _fail_pending(tx: Transaction, ctx: Context, endpoint_id: str, why: str) -> None:
    while True:
        found = tx.list_deliveries(endpoint_id, status="pending", limit=1000, starting_after=None)
        assert found is not None
        batch, _ = found
        if not batch:
            return
        _settle(
            tx,
            [
                evolve(d, status="failed", error=why, next_retry_at=None, updated_at=ctx.now)
                for d in batch
            ],
        )


def _settle(tx: Transaction, deliveries: Sequence[WebhookDelivery]) -> None:
    """Save deliveries that are over (delivered or failed). A delivery still pending when
    its run was pruned was kept to be sent; once it is over it goes the way of its run:
    `delete_runs` of a run no longer stored removes its finished deliveries."""
    tx.save_deliveries(deliveries)
    gone = {d.run_id for d in deliveries if tx.get_run(d.run_id) is None}
    if gone:
        tx.delete_runs(sorted(gone))


def _received(value: object, what: str) -> str | None:
    """What a receiver answered (or how the attempt failed), kept for the delivery log:
    any text, cut to 1,000 characters, with what no store can hold (NUL, text with no
    UTF-8 form) escaped. It comes from outside: it is recorded, never refused."""
    if value is not None and not isinstance(value, str):
        raise ValidationError("invalid_request", f"{what} must be a string or None")
    if value is None:
        return None
    kept = value[:_BODY_LIMIT].encode("utf-8", "backslashreplace").decode("utf-8")
    return kept.replace("\x00", "\\x00")


def _attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("invalid_request", "max_attempts must be an integer >= 1")
    return value


def _fan_out(tx: Transaction, ctx: Context, count: int) -> tuple[int, int]:
    """Turn up to `count` events the outbox has not seen into pending deliveries for
    every active endpoint subscribed to their type; (events seen, deliveries made)."""
    cursor = tx.get_cursor(CURSOR)
    if cursor is None:  # no endpoint was ever made: nothing to fan out to
        return 0, 0
    events = tx.list_events(after=None if cursor == START else cursor, run_id=None, limit=count)
    if not events:
        return 0, 0
    endpoints = [e for e in _all_endpoints(tx) if e.active and e.events]
    made = [
        WebhookDelivery(
            id=ctx.new_id("dlv"),
            endpoint_id=endpoint.id,
            event_id=event.id,
            event_type=event.type,
            run_id=event.run_id,
            payload=payload(event),
            status="pending",
            next_retry_at=ctx.now,
            created_at=ctx.now,
            updated_at=ctx.now,
        )
        for event in events
        for endpoint in endpoints
        if event.type in endpoint.events
    ]
    tx.save_deliveries(made)
    tx.set_cursor(CURSOR, events[-1].id)
    return len(events), len(made)


def catch_up(tx: Transaction, ctx: Context, *, after_delete: bool = False) -> None:
    """Keep the outbox whole around a deletion of events (`runs.prune`): before it, fan
    out every event not yet seen; after it, if the event the outbox's position named is
    gone, move the position to the newest event (all older ones were fanned out)."""
    cursor = tx.get_cursor(CURSOR)
    if cursor is None:
        return
    if not after_delete:
        while _fan_out(tx, ctx, 1000)[0]:
            pass
    elif cursor != START and tx.list_events(after=cursor, run_id=None, limit=1) is None:
        tx.set_cursor(CURSOR, tx.last_event_id() or START)


class Webhooks:
    """Webhook endpoints (create, get, list, update, delete, list_deliveries) and the
    outbox protocol a delivery worker uses (enqueue, claim, record)."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def create(self, *, url: str, events: Sequence[str] | None = None) -> WebhookEndpoint:
        """Register an endpoint; the returned record is the only one with the whole secret.
        `events` defaults to run.completed, run.failed and run.cancelled; [] is allowed."""
        target = _url(url)
        wanted = _events(events)

        def work(tx: Transaction, ctx: Context) -> WebhookEndpoint:
            if tx.get_cursor(CURSOR) is None:  # the first endpoint: start at the present
                tx.set_cursor(CURSOR, tx.last_event_id() or START)
            endpoint = WebhookEndpoint(
                id=ctx.new_id("whk"),
                url=target,
                events=wanted,
                secret=secrets.token_hex(32),
                active=True,
                created_at=ctx.now,
                updated_at=ctx.now,
            )
            tx.insert_endpoint(endpoint)
            return endpoint

        return self._engine._write(work)

    def get(self, endpoint_id: str) -> WebhookEndpoint:
        """The endpoint, secret masked (404 webhook_not_found)."""
        return self._engine._read(lambda tx, ctx: _endpoint(tx, endpoint_id).masked())

    def list(self, *, limit: int = 20, starting_after: str | None = None) -> Page[WebhookEndpoint]:
        """A page of endpoints, oldest first, secrets masked."""
        count, cursor = check.limit(limit), check.cursor(starting_after)

        def work(tx: Transaction, ctx: Context) -> Page[WebhookEndpoint]:
            found = tx.list_endpoints(limit=count, starting_after=cursor)
            if found is None:
                raise check.unknown_cursor(cursor)
            endpoints, more = found
            return Page(
                data=[e.masked() for e in endpoints],
                has_more=more,
                next_starting_after=endpoints[-1].id if more else None,
            )

        return self._engine._read(work)

    def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        active: bool | None = None,
        rotate_secret: bool = False,
    ) -> WebhookEndpoint:
        """Change an endpoint. Deactivating it fails its pending deliveries; with
        `rotate_secret=True` the returned record carries the new secret whole."""
        changes: dict[str, Any] = {}
        if url is not None:
            changes["url"] = _url(url)
        if events is not None:
            changes["events"] = _events(events)
        if active is not None:
            if not isinstance(active, bool):
                raise ValidationError("invalid_request", "active must be True or False")
            changes["active"] = active
        if not isinstance(rotate_secret, bool):
            raise ValidationError("invalid_request", "rotate_secret must be True or False")

        def work(tx: Transaction, ctx: Context) -> WebhookEndpoint:
            endpoint = _endpoint(tx, endpoint_id)
            if rotate_secret:
                changes["secret"] = secrets.token_hex(32)
            updated = evolve(endpoint, updated_at=ctx.now, **changes)
            tx.update_endpoint(updated)
            if endpoint.active and not updated.active:
                _fail_pending(tx, ctx, endpoint.id, "endpoint deactivated")
            return updated if rotate_secret else updated.masked()

        return self._engine._write(work)

    def delete(self, endpoint_id: str) -> None:
        """Remove an endpoint and its delivery log (404 webhook_not_found)."""

        def work(tx: Transaction, ctx: Context) -> None:
            tx.delete_endpoint(_endpoint(tx, endpoint_id).id)

        self._engine._write(work)

    def list_deliveries(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int = 20,
        starting_after: str | None = None,
    ) -> Page[WebhookDelivery]:
        """The endpoint's delivery log, oldest first, optionally of one status."""
        if status not in (None, "pending", "delivered", "failed"):
            raise ValidationError("invalid_request", f"unknown delivery status {shown(status)}")
        count, cursor = check.limit(limit), check.cursor(starting_after)

        def work(tx: Transaction, ctx: Context) -> Page[WebhookDelivery]:
            endpoint = _endpoint(tx, endpoint_id)
            found = tx.list_deliveries(
                endpoint.id, status=status, limit=count, starting_after=cursor
            )
            if found is None:
                raise check.unknown_cursor(cursor)
            deliveries, more = found
            return Page(
                data=deliveries,
                has_more=more,
                next_starting_after=deliveries[-1].id if more else None,
            )

        return self._engine._read(work)

    # -- the outbox protocol -----------------------------------------------------------
    def enqueue(self, limit: int = 1000) -> int:
        """Turn events recorded since the last call into pending deliveries for every
        active endpoint subscribed to their type; return how many were made."""
        count = check.limit(limit, 1000)
        return self._engine._write(lambda tx, ctx: _fan_out(tx, ctx, count)[1])

    def claim(
        self, *, limit: int = 10, lease_seconds: float = 60.0, max_attempts: int = MAX_ATTEMPTS
    ) -> builtins.list[Outgoing]:
        """Take up to `limit` due deliveries for sending: each counts an attempt and is
        held for `lease_seconds` (if the worker dies, it is due again after that). A
        delivery whose `max_attempts` were all claimed without an outcome (its workers
        died) has failed instead of being claimed again."""
        lease = check.seconds(lease_seconds, "lease_seconds", "invalid_request")
        count = check.limit(limit)
        most = _attempts(max_attempts)

        def work(tx: Transaction, ctx: Context) -> builtins.list[Outgoing]:
            claimed: builtins.list[Outgoing] = []
            for delivery in tx.due_deliveries(ctx.now, count):
                endpoint = tx.get_endpoint(delivery.endpoint_id)
                if endpoint is None or not endpoint.active:
                    continue  # deactivation already failed it; deletion removed it
                if delivery.attempts >= most:
                    why = f"no outcome was recorded for any of its {delivery.attempts} attempts"
                    failed = evolve(
                        delivery, status="failed", error=why, next_retry_at=None, updated_at=ctx.now
                    )
                    _settle(tx, [failed])
                    continue
                leased = evolve(
                    delivery,
                    attempts=delivery.attempts + 1,
                    next_retry_at=later(ctx.now, lease),
                    updated_at=ctx.now,
                )
                tx.save_deliveries([leased])
                headers = signed_headers(
                    endpoint.secret, delivery.event_id, math.floor(ctx.now), delivery.payload
                )
                headers["Content-Type"] = "application/json"
                claimed.append(
                    Outgoing(
                        delivery=leased, url=endpoint.url, headers=headers, body=leased.payload
                    )
                )
            return claimed

        return self._engine._write(work)

    def record(
        self,
        delivery_id: str,
        *,
        attempt: int,
        status_code: int | None = None,
        response_body: str | None = None,
        error: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: Sequence[float] = BACKOFF,
    ) -> WebhookDelivery:
        """Record how attempt number `attempt` went: a 2xx `status_code` delivers;
        anything else is retried after backoff[attempt - 1] seconds (the last value
        repeats) until `max_attempts`, then the delivery has failed. An outcome for an
        attempt that is no longer the current one changes nothing."""

        named = check.identifier(delivery_id, "delivery_id")
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise ValidationError("invalid_request", "attempt must be an integer")
        if status_code is not None and (
            isinstance(status_code, bool)
            or not isinstance(status_code, int)
            or not 100 <= status_code <= 599
        ):
            raise ValidationError("invalid_request", "status_code must be an HTTP status or None")
        body_text = _received(response_body, "response_body")
        why = _received(error, "error")
        _attempts(max_attempts)
        waits = [
            check.seconds(wait, "backoff", "invalid_request", allow_zero=True) for wait in backoff
        ]

        def work(tx: Transaction, ctx: Context) -> WebhookDelivery:
            delivery = tx.get_delivery(named)
            if delivery is None:
                raise NotFoundError("delivery_not_found", f"no delivery {shown(delivery_id)}")
            if delivery.status != "pending" or delivery.attempts != attempt:
                return delivery
            body, why_kept = body_text, why
            outcome: dict[str, Any] = {
                "response_status_code": status_code,
                "response_body": body,
                "error": why_kept,
                "updated_at": ctx.now,
            }
            if status_code is not None and 200 <= status_code < 300:
                outcome.update(status="delivered", next_retry_at=None, error=None)
            elif delivery.attempts >= max_attempts:
                outcome.update(status="failed", next_retry_at=None)
            else:
                wait = waits[min(delivery.attempts, len(waits)) - 1] if waits else 0.0
                outcome.update(next_retry_at=later(ctx.now, wait))
            recorded = evolve(delivery, **outcome)
            if recorded.status == "pending":
                tx.save_deliveries([recorded])
            else:
                _settle(tx, [recorded])
            return recorded

        return self._engine._write(work)
