"""`hitl inbox`: an approval inbox web page on a hitl-core store, for people who decide
without writing code: pending questions, tool calls and plans across runs, decided by form,
updated live. Needs the `serve` extra (Starlette and uvicorn); see docs/inbox.md."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points

import hitl_core

from ._app import SESSION_COOKIE, create_app
from ._feed import Changes

__all__ = ["PASSWORD_ENV", "SESSION_COOKIE", "create_app", "open_engine", "serve"]

PASSWORD_ENV = "HITL_INBOX_PASSWORD"
"""The environment variable `hitl inbox` reads its password from."""


def serve(
    store_url: str | hitl_core.Store,
    *,
    shown: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    password: str,
    poll_interval: float = 0.2,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the inbox on host:port until SIGINT or SIGTERM, on the store at `store_url`
    (a URL, or an open Store that `shown` names in the first line). `port=0` picks a free
    port; `announce` receives the page's URL once the socket is bound."""
    import uvicorn
    from hitl_server import http_protocol, listen, run_until_signalled

    sock, address = listen(host, port)
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
            # the sign-in throttle counts by the connection's own address: a client's
            # X-Forwarded-For (trusted from 127.0.0.1 by default) would give it any
            # address; the app reads X-Forwarded-Proto itself (_ForwardedProto)
            proxy_headers=False,
            http=http_protocol(),
        )
        server = uvicorn.Server(config)
        (announce or _print)(f"hitl inbox: http://{address}/ (store {shown or store_url})")
        run_until_signalled(server, sock, app.state.inbox.feed.close)


def open_engine(store_url: str | hitl_core.Store) -> tuple[hitl_core.Hitl, Changes | None]:
    """An engine on `store_url` (a URL or an open store) and its store's change feed (its
    `subscribe`), found through the `hitl_core.stores` entry points as `connect` finds
    stores. A URL no entry point names is left to `connect`, which refuses it."""
    if isinstance(store_url, hitl_core.Store):
        return hitl_core.connect(store_url), store_url.subscribe
    scheme = store_url.split("://", 1)[0] if "://" in store_url else None
    for entry in entry_points(group="hitl_core.stores"):
        if entry.name == scheme:
            store = entry.load()(store_url)
            if isinstance(store, hitl_core.Store):
                return hitl_core.connect(store), store.subscribe
    return hitl_core.connect(store_url), None


def _print(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()
