"""`hitl inbox`: an approval inbox web page on a hitl-core store, for people who decide
without writing code: pending questions, tool calls and plans across runs, decided by form,
updated live. Needs the `serve` extra (Starlette and uvicorn); see docs/inbox.md."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import hitl_core

from ._app import SESSION_COOKIE, create_app
from ._feed import Changes

__all__ = ["PASSWORD_ENV", "SESSION_COOKIE", "create_app", "open_engine", "serve"]

PASSWORD_ENV = "HITL_INBOX_PASSWORD"
"""The environment variable `hitl inbox` reads its password from."""


def serve(
    store_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    password: str,
    poll_interval: float = 0.2,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the inbox on host:port until SIGINT or SIGTERM. `port=0` picks a free port;
    `announce` receives the page's URL once the socket is bound."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    try:
        hitl, changes = open_engine(store_url)
    except BaseException:
        sock.close()
        raise
    with hitl:
        app = create_app(hitl, password=password, poll_interval=poll_interval, changes=changes)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        (announce or _print)(f"hitl inbox: http://{shown}:{bound}/ (store {store_url})")
        _run_until_signalled(server, sock, app.state.inbox.feed.close)


def open_engine(store_url: str) -> tuple[hitl_core.Hitl, Changes | None]:
    """An engine on `store_url` and its store's change feed (its `subscribe`), found
    through the `hitl_core.stores` entry points as `connect` finds stores. A URL no entry
    point names is left to `connect`, which refuses it with its usual error."""
    scheme = store_url.split("://", 1)[0] if "://" in store_url else None
    for entry in entry_points(group="hitl_core.stores"):
        if entry.name == scheme:
            store = entry.load()(store_url)
            if isinstance(store, hitl_core.Store):
                return hitl_core.connect(store), store.subscribe
    return hitl_core.connect(store_url), None


def _run_until_signalled(server: Any, sock: socket.socket, closing: Callable[[], None]) -> None:
    """Run uvicorn on a thread; on SIGINT or SIGTERM end the live streams (they never end
    by themselves) and stop it gracefully, so the engine is closed afterwards."""

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True
        threading.Thread(target=closing, name="hitl-inbox-close", daemon=True).start()

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="hitl-inbox-http", daemon=True
        )
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _print(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()
