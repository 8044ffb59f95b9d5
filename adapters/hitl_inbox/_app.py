"""The inbox's ASGI application (Starlette): the login, the page, decisions by form POST
(redirected back, so it works without JavaScript), the cards alone and a server-sent
events stream for live updates, strict security headers on every response."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import hitl_core

from ._auth import Session, Signer, password_matches, valid_name
from ._decide import Form, Outcome, decide
from ._feed import Changes, Feed
from ._listing import Filters, collect, whole_number
from ._view import Context, Notice, cards, inbox_page, login_page, message_page

__all__ = ["SESSION_COOKIE", "create_app"]

log = logging.getLogger("hitl_inbox")

SESSION_COOKIE = "hitl_inbox"
FLASH_COOKIE = "hitl_inbox_notice"
WRONG_PER_SECOND = 5
"""Wrong sign-ins checked (each answered after 0.5 s) from one client address in any one
second; beyond that, the address's sign-ins are 429 without a look at the password."""
ADDRESSES_KEPT = 10_000
"""The most client addresses whose recent wrong sign-ins are remembered."""
FORM_LIMIT = 256 * 1024
"""The largest form body accepted (bytes)."""
STREAM_LIMIT = 100
"""The most live-update streams open at once."""
KEEPALIVE = 15.0

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
STATIC = {
    "inbox.js": "text/javascript; charset=utf-8",
    "inbox.css": "text/css; charset=utf-8",
}


class _SecurityHeaders:
    """Adds the security headers (a strict Content-Security-Policy: no inline scripts or
    styles) to every response, and `Cache-Control: no-store` to all but static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers += HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            if started:
                raise
            # answered here, not by Starlette's outermost error handler, so that a 500
            # carries the headers too
            log.exception("%s %s failed", scope.get("method"), scope["path"])
            failed = Response("Internal Server Error", status_code=500, media_type="text/plain")
            await failed(scope, receive, with_headers)


class _ForwardedProto:
    """Takes the scheme from `X-Forwarded-Proto` when the connection comes from this
    machine (a reverse proxy in front, which terminates HTTPS), so cookies get `Secure`.
    `X-Forwarded-For` is never read: the sign-in throttle counts by the connection's own
    address, which a client could otherwise name at will."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and client[0] in _LOCAL:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-proto" and value in (b"http", b"https"):
                    scope = {**scope, "scheme": value.decode()}
        await self.app(scope, receive, send)


_LOCAL = ("127.0.0.1", "::1")


class _Refusal(Exception):
    """Ends a handler early with `response` (a redirect, 401, 403, 413 or 400)."""

    def __init__(self, response: Response) -> None:
        self.response = response


class Inbox:
    """The inbox's state: the engine, the password, the cookie signer and the feed."""

    def __init__(
        self,
        hitl: hitl_core.Hitl,
        *,
        password: str,
        secret: bytes | None,
        session_hours: float,
        poll_interval: float,
        changes: Changes | None,
    ) -> None:
        if not password:
            raise ValueError("a password is required")
        self.hitl = hitl
        self.password = password
        self.signer = Signer(secret or secrets.token_bytes(32))
        self.lifetime = session_hours * 3600.0
        self.feed = Feed(hitl, interval=poll_interval, changes=changes)
        self.wrong_logins: dict[str, collections.deque[float]] = {}
        """The times of each client address's wrong sign-ins in the last second."""

    # -- sessions --------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        """The visitor's session (signed in or not), or None."""
        return Session.read(
            self.signer, request.cookies.get(SESSION_COOKIE), time.time(), self.lifetime
        )

    def signed_in(self, request: Request) -> Session:
        """The signed-in session, or a refusal: pages redirect to the login, the rest 401."""
        session = self.session(request)
        if session is not None and session.name is not None:
            return session
        if request.method == "GET" and request.url.path == "/":
            raise _Refusal(RedirectResponse("/login", status_code=303))
        raise _Refusal(
            HTMLResponse(
                message_page(
                    "Please sign in",
                    "You are not signed in, or your session has expired.",
                    link="/login",
                    link_text="Sign in",
                ),
                status_code=401,
            )
        )

    def set_session(self, response: Response, request: Request, session: Session) -> None:
        """Store `session` in the response's cookie."""
        response.set_cookie(
            SESSION_COOKIE,
            session.cookie(self.signer),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    async def checked_form(self, request: Request, session: Session) -> Form:
        """The POSTed form, once its origin and CSRF token are checked (403 otherwise)."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise _Refusal(_forbidden())  # another site, or "null" (a sandboxed frame)
        form = await _read_form(request)
        if not session.token_matches(form.get("csrf") or None):
            raise _Refusal(_forbidden())
        return form

    # -- pages -----------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        """GET /login: the form, with a fresh (not signed-in) session for its CSRF token."""
        session = self.session(request)
        if session is not None and session.name is not None:
            return RedirectResponse("/", status_code=303)
        session = session or Session.new(time.time())
        response: Response = HTMLResponse(login_page(session.csrf))
        self.set_session(response, request, session)
        return response

    async def login(self, request: Request) -> Response:
        """POST /login: check the password and the name; a new session on success."""
        session = self.session(request)
        if session is None:  # no cookie: the form did not come from our login page
            return RedirectResponse("/login", status_code=303)
        form = await self.checked_form(request, session)
        # Beyond WRONG_PER_SECOND wrong sign-ins a second from one address, its sign-ins
        # are turned away before the password is read (a refusal says nothing about it),
        # and each wrong one waits 0.5 s: guessing is slow, while a person at another
        # address never waits behind the guesses.
        now = time.monotonic()
        recent = self._wrong_from(request.client.host if request.client else "", now)
        if len(recent) >= WRONG_PER_SECOND:
            page = login_page(session.csrf, error="Too many wrong sign-ins; wait a moment.")
            return HTMLResponse(page, status_code=429, headers={"Retry-After": "1"})
        good = password_matches(form.get("password"), self.password)
        if not good:
            recent.append(now)
            await asyncio.sleep(0.5)
        name = valid_name(form.get("name"))
        if not good or name is None:
            error = (
                "Wrong password."
                if not good
                else "Type your name (up to 80 characters): it is recorded with your decisions."
            )
            page = login_page(session.csrf, error=error, name=form.get("name")[:80])
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse("/", status_code=303)
        self.set_session(response, request, Session.new(time.time(), name))  # a new token
        return response

    def _wrong_from(self, address: str, now: float) -> collections.deque[float]:
        """The times of `address`'s wrong sign-ins in the second before `now`."""
        kept = self.wrong_logins
        recent = kept.get(address)
        if recent is None:
            if len(kept) >= ADDRESSES_KEPT:  # forget the addresses quiet for a second
                for other in [a for a, t in kept.items() if not t or t[-1] < now - 1.0]:
                    del kept[other]
                while len(kept) >= ADDRESSES_KEPT:  # then the longest known
                    del kept[next(iter(kept))]
            recent = kept[address] = collections.deque()
        while recent and recent[0] < now - 1.0:
            recent.popleft()
        return recent

    async def logout(self, request: Request) -> Response:
        """POST /logout: forget the session cookie."""
        session = self.signed_in(request)
        await self.checked_form(request, session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _notice(self, request: Request) -> Notice | None:
        payload = self.signer.loads("notice", request.cookies.get(FLASH_COOKIE))
        if payload is None:
            return None
        kind, message = payload.get("k"), payload.get("m")
        if kind not in ("ok", "late", "error") or not isinstance(message, str):
            return None
        return Notice(kind, message)

    async def page(self, request: Request) -> Response:
        """GET /: the inbox, with the notice left by the last decision."""
        session = self.signed_in(request)
        assert session.name is not None
        filters = Filters.parse(request.query_params)
        listing = await run_in_threadpool(collect, self.hitl, time.time())
        html = inbox_page(
            name=session.name,
            listing=listing,
            context=Context(session.csrf, filters),
            notice=self._notice(request),
        )
        response = HTMLResponse(html)
        if FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def cards(self, request: Request) -> Response:
        """GET /cards: the list alone, for live updates."""
        session = self.signed_in(request)
        filters = Filters.parse(request.query_params)
        listing = await run_in_threadpool(collect, self.hitl, time.time())
        return HTMLResponse(cards(listing, listing.shown(filters), Context(session.csrf, filters)))

    async def decide(self, request: Request) -> Response:
        """POST /decide/RUN/REQUEST: apply a form's decision, then back to the list (303),
        or the page again with the refusal next to the form (422)."""
        session = self.signed_in(request)
        assert session.name is not None
        form = await self.checked_form(request, session)
        run_id, request_id = request.path_params["run_id"], request.path_params["request_id"]
        filters = Filters.parse(dict(parse_qsl(form.get("back").lstrip("?"))))
        outcome: Outcome = await run_in_threadpool(
            decide, self.hitl, run_id, request_id, form, session.name
        )
        if outcome.kind == "invalid":  # shown next to the form, with what was typed
            listing = await run_in_threadpool(collect, self.hitl, time.time())
            context = Context(
                session.csrf, filters, {request_id: outcome.message}, {request_id: form}
            )
            html = inbox_page(name=session.name, listing=listing, context=context)
            return HTMLResponse(html, status_code=422)
        target = "/" + filters.query()
        following = form.get("next")
        if following.startswith("req_") and following.replace("_", "").isalnum():
            target += "#c-" + following
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            self.signer.dumps("notice", {"k": outcome.kind, "m": _sentence(outcome.message)}),
            max_age=60,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def stream(self, request: Request) -> Response:
        """GET /events: server-sent events, one `change` per relevant event, until the
        session expires (the page's reconnection is then refused: signed out)."""
        ends = self.signed_in(request).started + self.lifetime
        if self.feed.subscribers >= STREAM_LIMIT:
            return Response("too many live streams", status_code=503, headers={"Retry-After": "5"})
        subscription = self.feed.subscribe()

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n: connected\n\n"
                while True:
                    left = ends - time.time()
                    if left <= 0:
                        return
                    try:
                        item = await asyncio.wait_for(
                            subscription.queue.get(), min(KEEPALIVE, left)
                        )
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    yield f"id: {item['id']}\nevent: change\ndata: {json.dumps(item)}\n\n"
            finally:
                self.feed.unsubscribe(subscription)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )


def _sentence(message: str) -> str:
    return message if message.endswith((".", "!", "?")) else message + "."


def _forbidden() -> Response:
    return HTMLResponse(
        message_page(
            "Form refused",
            "This form was not sent from this inbox page, or it has expired. Reload the page"
            " and try again.",
        ),
        status_code=403,
    )


async def _read_form(request: Request) -> Form:
    """An urlencoded body of at most FORM_LIMIT bytes (413 beyond; 400 if not UTF-8)."""
    declared = request.headers.get("content-length", "")
    declared_size = whole_number(declared, most_digits=20)
    if declared_size is not None and declared_size > FORM_LIMIT:
        raise _Refusal(Response("form too large", status_code=413))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > FORM_LIMIT:
            raise _Refusal(Response("form too large", status_code=413))
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=500)
    except (UnicodeDecodeError, ValueError):
        raise _Refusal(Response("malformed form", status_code=400)) from None
    return Form(tuple(pairs))


def _static(name: str) -> Callable[[Request], Awaitable[Response]]:
    body = resources.files("hitl_inbox").joinpath("static", name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(
            body, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=300"}
        )

    return serve


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return refusal.response

    return endpoint


def create_app(
    hitl: hitl_core.Hitl,
    *,
    password: str,
    secret: bytes | None = None,
    session_hours: float = 12.0,
    poll_interval: float = 0.2,
    changes: Changes | None = None,
) -> Starlette:
    """The inbox as an ASGI app on `hitl`, behind `password`. `secret` signs the session
    cookies (default: random, so a restart signs everyone out). Its lifespan runs the
    event-log follower, which reads the log when `changes` (the store's `subscribe`) says
    something was committed, else every `poll_interval` seconds;
    `app.state.inbox.feed.close()` ends the live streams."""
    inbox = Inbox(
        hitl,
        password=password,
        secret=secret,
        session_hours=session_hours,
        poll_interval=poll_interval,
        changes=changes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        inbox.feed.start()
        try:
            yield
        finally:
            inbox.feed.close()

    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        return Route(path, _guarded(handler), methods=[method])

    routes: list[Any] = [
        route("/", inbox.page, "GET"),
        route("/login", inbox.login_form, "GET"),
        route("/login", inbox.login, "POST"),
        route("/logout", inbox.logout, "POST"),
        route("/cards", inbox.cards, "GET"),
        route("/events", inbox.stream, "GET"),
        route("/decide/{run_id}/{request_id}", inbox.decide, "POST"),
        *(route(f"/static/{name}", _static(name), "GET") for name in STATIC),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.inbox = inbox
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_ForwardedProto)
    return app
