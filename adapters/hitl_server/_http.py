"""Serving an ASGI app until the process is told to stop: a bound listening socket,
uvicorn run on a thread that SIGINT or SIGTERM stops gracefully (so what the caller
opened is closed afterwards), and uvicorn's HTTP protocol with a timeout for request
headers. `hitl serve` and `hitl inbox` both run this way."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HEADER_TIMEOUT", "http_protocol", "listen", "run_until_signalled"]

HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's headers, from connecting or from the end of
its previous response; then its connection is closed. uvicorn alone waits for ever, so a
client holding thousands of half-sent requests would use up the process's files."""


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A socket listening on host:port (`port=0`: a free one) and the address to show
    (`host:port`, IPv6 hosts in brackets). OSError naming the address if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{sock.getsockname()[1]}"


def run_until_signalled(
    server: Any, sock: socket.socket, on_stop: Callable[[], None] | None = None
) -> None:
    """Run a `uvicorn.Server` on `sock` in a thread until SIGINT or SIGTERM, then stop it
    gracefully (uvicorn itself would re-raise the signal and end the process first).
    `on_stop` runs on its own thread when the signal comes (to end live streams, which
    never end by themselves). The socket is closed at the end."""

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True
        if on_stop is not None:
            threading.Thread(target=on_stop, name="hitl-http-stop", daemon=True).start()

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="hitl-http", daemon=True
        )
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def http_protocol(header_timeout: float = HEADER_TIMEOUT) -> type:
    """uvicorn's h11 protocol (`uvicorn.Config(http=...)`), closing a connection whose
    request headers are not all in `header_timeout` seconds after it opened or after its
    previous response ended."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _headers_due: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._expect_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._expect_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
            super().connection_lost(exc)

        def _expect_headers(self) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
            self._headers_due = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self._headers_due = None
            # IDLE: the client has not finished a request's headers since the timer began
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11
