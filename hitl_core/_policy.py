"""The pre-approval matcher: does a stored policy's tool name or shell-style pattern
cover a concrete tool name (case-sensitive, whole name)."""

from __future__ import annotations

import functools
import re
from fnmatch import translate

__all__ = ["exactly", "is_pattern", "literal_prefix", "matches", "prefixes"]

_WILDCARDS = frozenset("*?[")


def is_pattern(tool: str) -> bool:
    """True when `tool` holds a shell-style wildcard (`*`, `?` or `[`)."""
    return not _WILDCARDS.isdisjoint(tool)


def exactly(name: str) -> str:
    """A policy tool that matches `name` and nothing else: its wildcard characters are
    bracketed (`*` -> `[*]`, `?` -> `[?]`, `[` -> `[[]`). A remembered allow is stored so:
    a tool the agent named `*` must not become a policy that allows every tool."""
    if not is_pattern(name):
        return name
    return "".join(f"[{char}]" if char in _WILDCARDS else char for char in name)


def literal_prefix(pattern: str) -> str:
    """The part of a pattern before its first wildcard: every name it matches starts
    with it. Stores index pattern policies by it, so a lookup probes only the prefixes
    of the tool name instead of reading every pattern."""
    for index, char in enumerate(pattern):
        if char in _WILDCARDS:
            return pattern[:index]
    return pattern


def prefixes(name: str) -> list[str]:
    """Every prefix of `name`, from "" to the whole name: the literal prefixes a pattern
    that matches `name` can have."""
    return [name[:length] for length in range(len(name) + 1)]


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))


def matches(tool: str, name: str) -> bool:
    """True when the policy `tool` (a name or a pattern) covers the tool `name`."""
    if tool == name:
        return True
    if not is_pattern(tool):
        return False
    return _compiled(tool).match(name) is not None
