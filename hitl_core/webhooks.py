"""Webhook signatures in the hosted API's scheme: headers `Webhook-Id`,
`Webhook-Timestamp` and `Webhook-Signature: v1=<hex HMAC-SHA256 of "id.timestamp.body">`."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["DEFAULT_EVENTS", "EVENT_TYPES", "sign", "signed_headers", "verify_signature"]

EVENT_TYPES = (
    "run.started",
    "run.awaiting_input",
    "run.suspended",
    "run.resumed",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "request.resolved",
)
"""Every event type hitl-core records, and so every type a webhook may subscribe to."""

DEFAULT_EVENTS = ("run.completed", "run.failed", "run.cancelled")
"""What a webhook endpoint receives when it names no event types."""


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def sign(secret: str, webhook_id: str, timestamp: int | str, body: str | bytes) -> str:
    """The `Webhook-Signature` value: "v1=" + hex HMAC-SHA256(secret, f"{id}.{ts}.{body}")."""
    message = f"{webhook_id}.{timestamp}.{_text(body)}".encode()
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, webhook_id: str, timestamp: int, body: str | bytes
) -> dict[str, str]:
    """The three signature headers for one delivery."""
    return {
        "Webhook-Id": webhook_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign(secret, webhook_id, timestamp, body),
    }


def verify_signature(
    body: str | bytes,
    headers: Mapping[str, str],
    secret: str,
    tolerance_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """True when `headers` carry a valid signature of `body` for `secret`.

    Header names are matched case-insensitively; a missing header, a bad signature or,
    with `tolerance_seconds`, a timestamp further than that from `now` (default: the
    current time) gives False. The comparison is constant-time."""
    try:
        lowered = {str(key).lower(): value for key, value in headers.items()}
        webhook_id = lowered["webhook-id"]
        timestamp = lowered["webhook-timestamp"]
        signature = lowered["webhook-signature"]
        if not all(isinstance(v, str) for v in (webhook_id, timestamp, signature)):
            return False
        if tolerance_seconds is not None:
            moment = time.time() if now is None else now
            # written so that a NaN tolerance or time rejects rather than accepts
            if not abs(moment - int(timestamp)) <= tolerance_seconds:
                return False
        expected = sign(secret, webhook_id, timestamp, body)
        return hmac.compare_digest(expected.encode(), signature.encode())
    except (KeyError, ValueError, UnicodeError, AttributeError, TypeError, OverflowError):
        return False
