"""What the inbox lists: every pending request across runs (`hitl.runs.pending()`), each
with its run, its age and, for a plan, the feedback the previous revision got; and the
filters a person narrows it with (user, tool or kind, minimum age)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

import attrs

import hitl_core
from hitl_core import HitlError

__all__ = ["AGES", "LIMIT", "Filters", "Item", "Listing", "collect", "whole_number"]

LIMIT = 1000
"""The most requests one page shows (the oldest ones)."""

AGES: tuple[tuple[int, str], ...] = (
    (0, "any age"),
    (60, "waiting 1 min or more"),
    (600, "waiting 10 min or more"),
    (3600, "waiting 1 hour or more"),
    (86400, "waiting 1 day or more"),
)
"""The age filter's choices: (seconds, label)."""

KIND_NAMES = {"question": "Questions", "plan": "Plans"}


def whole_number(text: str, *, most_digits: int = 12) -> int | None:
    """`text` as a whole number if it is 1 to `most_digits` ASCII digits, else None
    (`str.isdigit` also passes "²" and other digits `int` refuses, and `int` refuses very
    long ones)."""
    if 0 < len(text) <= most_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


@attrs.frozen
class Filters:
    """`user`: "" any, "-" the account (runs without a user), "u:ID" one user.
    `tool`: "" any, "k:question" / "k:plan" a kind, "t:NAME" one tool.
    `age`: the minimum seconds waited (0: any)."""

    user: str = ""
    tool: str = ""
    age: int = 0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """Filters from a query string's values; anything malformed means "any"."""
        user = query.get("user", "")
        tool = query.get("tool", "")
        age_text = query.get("age", "0")
        age = whole_number(age_text) or 0
        return cls(
            user=user if user == "-" or user.startswith("u:") else "",
            tool=tool if tool in ("k:question", "k:plan") or tool.startswith("t:") else "",
            age=age if age in dict(AGES) else 0,
        )

    def query(self) -> str:
        """The query string ("" or "?user=...") that gives these filters back."""
        pairs = [(k, v) for k, v in (("user", self.user), ("tool", self.tool)) if v]
        if self.age:
            pairs.append(("age", str(self.age)))
        return "?" + urlencode(pairs) if pairs else ""

    @property
    def active(self) -> bool:
        """Whether anything is filtered out."""
        return bool(self.user or self.tool or self.age)

    def keeps(self, item: Item) -> bool:
        """Whether `item` passes every filter."""
        if self.user == "-" and item.run.user_id is not None:
            return False
        if self.user.startswith("u:") and item.run.user_id != self.user[2:]:
            return False
        if self.tool.startswith("k:") and item.request.kind != self.tool[2:]:
            return False
        if self.tool.startswith("t:") and (
            item.request.kind != "tool" or item.request.tool_name != self.tool[2:]
        ):
            return False
        return item.age >= self.age


@attrs.frozen
class Item:
    """One pending request as the inbox shows it."""

    request: hitl_core.PermissionRequest
    run: hitl_core.Run
    age: float
    previous_feedback: str | None = None

    @property
    def suspended(self) -> bool:
        """The run's agent stopped waiting live (SPEC 6)."""
        return self.run.suspended


@attrs.frozen
class Listing:
    """The pending requests (oldest first) and what the filter menus offer."""

    items: list[Item]
    total: int
    users: list[str | None]
    tools: list[str]
    kinds: list[str]
    truncated: bool

    def shown(self, filters: Filters) -> list[Item]:
        """The items that pass `filters`."""
        return [item for item in self.items if filters.keeps(item)]

    def user_choices(self) -> list[tuple[str, str]]:
        """(value, label) pairs for the user filter."""
        choices = [("", "every user")]
        if None in self.users:
            choices.append(("-", "(the account: no user)"))
        choices += [("u:" + user, user) for user in self.users if user is not None]
        return choices

    def tool_choices(self) -> list[tuple[str, str]]:
        """(value, label) pairs for the tool filter."""
        choices = [("", "every tool, question and plan")]
        choices += [("k:" + kind, KIND_NAMES[kind]) for kind in self.kinds]
        choices += [("t:" + tool, tool) for tool in self.tools]
        return choices


def collect(hitl: hitl_core.Hitl, now: float) -> Listing:
    """Read the pending requests and their runs from the store."""
    pending = hitl.runs.pending(limit=LIMIT)
    runs: dict[str, hitl_core.Run | None] = {}
    feedback: dict[str, str | None] = {}
    items: list[Item] = []
    for request in pending:
        if request.run_id not in runs:
            try:
                runs[request.run_id] = hitl.runs.get(request.run_id)
            except HitlError:  # gone between the two reads
                runs[request.run_id] = None
        run = runs[request.run_id]
        if run is None:
            continue
        previous = None
        if request.kind == "plan":
            if request.run_id not in feedback:
                feedback[request.run_id] = _last_feedback(hitl, request.run_id)
            previous = feedback[request.run_id]
        items.append(Item(request, run, max(0.0, now - request.created_at), previous))
    users = sorted({item.run.user_id for item in items}, key=lambda u: (u is not None, u or ""))
    tools = sorted({item.request.tool_name for item in items if item.request.kind == "tool"})
    kinds = [kind for kind in ("question", "plan") if any(i.request.kind == kind for i in items)]
    return Listing(
        items=items,
        total=len(items),
        users=users,
        tools=tools,
        kinds=kinds,
        truncated=len(pending) >= LIMIT,
    )


def _last_feedback(hitl: hitl_core.Hitl, run_id: str) -> str | None:
    """The feedback on the run's latest revised plan, if any."""
    try:
        requests = hitl.runs.permissions(run_id)
    except HitlError:
        return None
    revised = [r for r in requests if r.kind == "plan" and r.decision == "revise"]
    return revised[-1].reason if revised else None
