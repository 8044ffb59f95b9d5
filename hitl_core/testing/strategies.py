"""Hypothesis strategies for hitl-core inputs: configurations (valid and not), questions,
tool names and policy patterns. For adapter authors and property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = [
    "configs",
    "modes",
    "policy_tools",
    "question",
    "questions",
    "tool_names",
    "users",
]

modes = st.sampled_from(["autonomous", "approval", "plan"])
"""Every permission mode."""

users = st.sampled_from([None, "cust_1", "cust_2"])
"""A few user scopes, the account scope (None) included."""

tool_names = st.sampled_from(["gmail.send", "slack.post", "slack.read", "shell.exec", "db.query"])
"""A small pool of tool names, so that remembering and policies get exercised."""

policy_tools = st.one_of(tool_names, st.sampled_from(["slack.*", "db.*", "*.send", "gmail.?end"]))
"""Exact names and shell-style patterns."""


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A run configuration from all six human_in_the_loop x permission_mode pairs."""
    return {
        "human_in_the_loop": draw(st.booleans()),
        "permission_mode": draw(modes),
        "user_id": draw(users),
        "input_timeout": draw(st.sampled_from([5.0, 30.0, 75.0])),
    }


_label = st.text(alphabet="abcdefgh", min_size=1, max_size=4)


@st.composite
def question(draw: st.DrawFn, text: str) -> dict[str, Any]:
    """One well-formed question with the given text."""
    labels = draw(st.lists(_label, min_size=2, max_size=4, unique=True))
    as_strings = draw(st.booleans())
    options: list[Any] = (
        list(labels) if as_strings else [{"label": label, "description": ""} for label in labels]
    )
    return {
        "question": text,
        "header": draw(st.sampled_from(["", "Choice"])),
        "options": options,
        "multiSelect": draw(st.booleans()),
    }


@st.composite
def questions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1 to 4 well-formed questions with distinct texts."""
    texts = draw(
        st.lists(
            st.text(alphabet="wxyz?", min_size=1, max_size=5).filter(str.strip),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    return [draw(question(text)) for text in texts]
