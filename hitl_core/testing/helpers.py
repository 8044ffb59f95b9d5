"""Small helpers for tests of hitl-core engines: a full snapshot of what a store holds
(to check that a refused call changed nothing) and ready-made questions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .._engine import Hitl
from .._records import Event, PermissionPolicy, PermissionRequest, Run

__all__ = ["QUESTION", "counter_ids", "snapshot", "two_questions"]

QUESTION: dict[str, Any] = {
    "question": "Which database should I use?",
    "header": "Database",
    "options": [
        {"label": "Postgres", "description": "Relational, durable"},
        {"label": "SQLite", "description": "Embedded, one file"},
    ],
    "multiSelect": False,
}


def counter_ids() -> Callable[[str], str]:
    """Deterministic ids (`run_0001`, `req_0002`, ...) so simulations repeat exactly."""
    count = 0

    def new_id(prefix: str) -> str:
        nonlocal count
        count += 1
        return f"{prefix}_{count:04d}"

    return new_id


def two_questions() -> list[dict[str, Any]]:
    """Two questions, the second multi-select with options given as plain strings."""
    return [
        dict(QUESTION),
        {
            "question": "Which regions?",
            "header": "Regions",
            "options": ["eu", "us", "asia"],
            "multiSelect": True,
        },
    ]


def _all_pages(fetch: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = fetch(limit=100, starting_after=cursor)
        items.extend(page.data)
        if not page.has_more:
            return items
        cursor = page.next_starting_after


def snapshot(
    hitl: Hitl, users: tuple[str | None, ...] = (None,)
) -> tuple[
    list[Run],
    dict[str, list[PermissionRequest]],
    dict[str | None, list[PermissionPolicy]],
    list[Event],
]:
    """Everything the engine's store holds that the public API can see: runs, every
    run's requests, the policies of the given scopes, and all events."""
    runs = _all_pages(hitl.runs.list)
    requests = {run.id: hitl.runs.permissions(run.id) for run in runs}
    seen_users = {run.user_id for run in runs} | set(users)
    policies = {
        user: _all_pages(functools.partial(hitl.permissions.list, user_id=user))
        for user in seen_users
    }
    events: list[Event] = []
    while batch := hitl.events.list(after=events[-1].id if events else None, limit=1000):
        events.extend(batch)
    return runs, requests, policies, events
