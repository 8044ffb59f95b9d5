"""Login, sessions and CSRF tokens for the inbox: the password is compared in constant
time; a session is a signed (HMAC-SHA256) cookie holding the person's name, their CSRF
token and when they signed in. No server-side session table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

import attrs

from ._html import visible

__all__ = ["Session", "Signer", "password_matches", "valid_name"]

NAME_LIMIT = 80
"""The longest name a person may sign in with (it becomes the `actor` of decisions)."""
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff")
"""Zero-width characters: allowed in text, not in a name people recognise each other by."""


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison that does not reveal the expected length either."""
    digest = hashlib.sha256
    return hmac.compare_digest(
        digest(given.encode("utf-8", "surrogatepass")).digest(),
        digest(expected.encode("utf-8", "surrogatepass")).digest(),
    )


def valid_name(raw: str) -> str | None:
    """The name as it will be recorded, or None when it is empty, too long or holds
    control, direction or zero-width characters (a name that shows as another's)."""
    name = " ".join(raw.split())
    if not name or len(name) > NAME_LIMIT:
        return None
    if visible(name) != name or not _INVISIBLE.isdisjoint(name):
        return None
    return name


class Signer:
    """Signs small JSON payloads for cookies: `base64url(json).hex(hmac)`. Each payload
    carries its purpose, so a cookie made for one use is refused for another."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).hexdigest()

    def dumps(self, purpose: str, payload: dict[str, Any]) -> str:
        """The signed cookie value for `payload`."""
        raw = json.dumps({"p": purpose, **payload}, separators=(",", ":")).encode("utf-8")
        body = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        return f"{body}.{self._mac(body)}"

    def loads(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The payload of a cookie this signer made for `purpose`, or None."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(self._mac(body).encode("ascii"), mac.encode("ascii", "replace")):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.pop("p", None) != purpose:
            return None
        return payload


@attrs.frozen
class Session:
    """A visitor: `name` once signed in (None on the login page), the CSRF token every
    form of theirs carries, and when the session began."""

    csrf: str
    started: float
    name: str | None = None

    @classmethod
    def new(cls, now: float, name: str | None = None) -> Session:
        """A fresh session with a new CSRF token."""
        return cls(csrf=secrets.token_urlsafe(24), started=now, name=name)

    def cookie(self, signer: Signer) -> str:
        """The signed cookie value."""
        return signer.dumps("session", {"c": self.csrf, "t": self.started, "n": self.name})

    @classmethod
    def read(cls, signer: Signer, value: str | None, now: float, lifetime: float) -> Session | None:
        """The session in a cookie, or None when it is forged, malformed or expired."""
        payload = signer.loads("session", value)
        if payload is None:
            return None
        csrf, started, name = payload.get("c"), payload.get("t"), payload.get("n")
        if not isinstance(csrf, str) or not isinstance(started, (int, float)):
            return None
        if name is not None and not isinstance(name, str):
            return None
        if not started <= now < started + lifetime:
            return None
        return cls(csrf=csrf, started=float(started), name=name)

    def token_matches(self, given: str | None) -> bool:
        """Constant-time check of a form's CSRF token against this session's."""
        return given is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), self.csrf.encode("ascii")
        )
