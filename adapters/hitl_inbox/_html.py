"""HTML that escapes by default: `h(template, **values)` escapes every value unless it is
already `Html`, so text from agents (tool names, arguments, questions) reaches the page
only as text. Invisible direction and control characters are shown, not obeyed."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

__all__ = ["Html", "escape", "h", "join", "visible"]

# Bidirectional overrides and isolates (U+202A-202E, U+2066-2069), marks (U+200E/F,
# U+061C) and C0/C1 controls other than tab and newline: a hostile tool name could
# otherwise read differently from what it is ("Trojan Source").
_HIDDEN = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Html(str):
    """Markup that is safe as it is: made by this module, never from outside text."""

    __slots__ = ()


def visible(text: str) -> str:
    """`text` with invisible direction and control characters written as `<U+202E>`."""
    return _HIDDEN.sub(lambda match: f"<U+{ord(match.group()):04X}>", text)


def escape(value: object) -> Html:
    """`value` as HTML text: `Html` as it is, anything else escaped (quotes included)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(visible(str(value)), quote=True))


def h(template: str, /, **values: object) -> Html:
    """`template.format(**values)` with every value escaped (see `escape`)."""
    return Html(template.format(**{name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[object], separator: str = "") -> Html:
    """The parts, each escaped, joined by the (trusted) `separator`."""
    return Html(separator.join(escape(part) for part in parts))
