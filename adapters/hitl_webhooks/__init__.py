"""The webhook delivery worker: moves events from a hitl-core store's outbox to HTTP
endpoints, signed, at least once, with retries on the engine's clock. Standard-library
HTTP (urllib): one small POST per delivery needs no client library."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import attrs

from hitl_core import Hitl, HitlError, Outgoing, WebhookDelivery
from hitl_core.adapter import BACKOFF, MAX_ATTEMPTS

__all__ = ["Dispatcher", "Response", "http_post"]

log = logging.getLogger("hitl_webhooks")

ERROR_WAIT_MAX = 30.0
"""The longest `run_forever` waits after a run of failed passes."""


@attrs.frozen
class Response:
    """What one POST gave: an HTTP status and body, or an error (no answer at all)."""

    status_code: int | None = None
    body: str | None = None
    error: str | None = None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A receiver must answer itself: a redirect is a failed attempt, never followed."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def http_post(url: str, body: str, headers: dict[str, str], timeout: float) -> Response:
    """POST `body` to `url`; never raises for network trouble, it is in the Response."""
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, answer.read(4096).decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        text = error.read(4096).decode("utf-8", "replace") if error.fp else ""
        return Response(error.code, text)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return Response(error=f"{type(reason).__name__}: {reason}")


Sender = Callable[[str, str, dict[str, str], float], Response]


class Dispatcher:
    """Delivers the outbox of one engine. `run_once()` does one pass (fan out new
    events, claim due deliveries, send, record); `run_forever(stop)` repeats it.

    Every claimed delivery is leased for `lease_seconds` of the engine's clock: if this
    process dies mid-send, another pass sends it again after the lease (at least once;
    receivers drop duplicates by the stable `Webhook-Id`, the event id)."""

    def __init__(
        self,
        hitl: Hitl,
        *,
        timeout: float = 10.0,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: Sequence[float] = BACKOFF,
        batch: int = 20,
        lease_seconds: float | None = None,
        send: Sender = http_post,
    ) -> None:
        self.hitl = hitl
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = tuple(backoff)
        self.batch = batch
        self.lease_seconds = lease_seconds or batch * timeout + 30.0
        self.send = send

    def run_once(self) -> list[WebhookDelivery]:
        """One pass; returns the deliveries as recorded after this pass's attempts."""
        self.hitl.webhooks.enqueue()
        claimed = self.hitl.webhooks.claim(
            limit=self.batch, lease_seconds=self.lease_seconds, max_attempts=self.max_attempts
        )
        recorded = []
        for outgoing in claimed:  # one delivery's trouble never holds up the others
            try:
                recorded.append(self._deliver(outgoing))
            except HitlError as error:  # not recorded: sent again once its lease is over
                log.error("cannot record delivery %s: %s", outgoing.delivery.id, error)
        return recorded

    def _deliver(self, outgoing: Outgoing) -> WebhookDelivery:
        try:
            response = self.send(outgoing.url, outgoing.body, outgoing.headers, self.timeout)
        except Exception as error:  # a sender should not raise; count it as a failed attempt
            log.exception("webhook sender raised for delivery %s", outgoing.delivery.id)
            response = Response(error=f"{type(error).__name__}: {error}")
        return self.hitl.webhooks.record(
            outgoing.delivery.id,
            attempt=outgoing.delivery.attempts,
            status_code=response.status_code,
            response_body=response.body,
            error=response.error,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
        )

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Repeat `run_once` every `interval` seconds until `stop` is set. A pass that
        raises (a busy or unreachable store, anything else) is logged and the next pass
        tries again, after a wait that doubles with each failure in a row (at most
        ERROR_WAIT_MAX seconds, or `interval` if that is longer)."""
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                failures += 1
                log.exception("webhook delivery pass failed (%d in a row); retrying", failures)
            else:
                failures = 0
            wait = interval * 2 ** min(failures, 30)
            stop.wait(min(wait, max(interval, ERROR_WAIT_MAX)))
