"""The approval inbox without a browser: its escaping, signed sessions and filters as
units; its event-log follower fanning one read out to many streams on a real SQLite file;
and the real `hitl inbox` command over HTTP (headers, cookies, refusals, the live stream,
a clean stop while a stream is open). The browser tests are in test_inbox_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import slow_clients_are_cut_off
from inbox_support import HITL, PASSWORD, LiveInbox, hitl, question, request, tool_call, wait_until

import hitl_core

pytest.importorskip("starlette", reason="starlette is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e '.[serve]')")

import uvicorn
from hitl_inbox import create_app, open_engine
from hitl_inbox._auth import Session, Signer, password_matches, valid_name
from hitl_inbox._feed import Feed
from hitl_inbox._html import Html, escape, h, join, visible
from hitl_inbox._listing import Filters

# -- escaping -------------------------------------------------------------------------------


def test_values_are_escaped_unless_they_are_html() -> None:
    hostile = '<img src=x onerror="alert(1)">&'
    assert h("<p title={v}>{v}</p>", v=hostile) == (
        "<p title=&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;>"
        "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;</p>"
    )
    assert h("<p>{v}</p>", v=Html("<b>ours</b>")) == "<p><b>ours</b></p>"
    assert join(["<a>", Html("<br>"), "'"], " ") == "&lt;a&gt; <br> &#x27;"
    assert escape(42) == "42"


def test_invisible_direction_and_control_characters_are_shown() -> None:
    assert visible("gmail.send\u202eexe.txt") == "gmail.send<U+202E>exe.txt"
    assert (
        visible("a\u2066b\u200fc\x00d\x1be\x85") == "a<U+2066>b<U+200F>c<U+0000>d<U+001B>e<U+0085>"
    )
    assert visible("line one\n\tline two, caf\u00e9, \u05e9\u05dc\u05d5\u05dd") == (
        "line one\n\tline two, caf\u00e9, \u05e9\u05dc\u05d5\u05dd"
    )
    assert escape("x\u202e<") == "x&lt;U+202E&gt;&lt;"


# -- sessions -------------------------------------------------------------------------------


def test_a_session_cookie_round_trips_and_any_change_is_refused() -> None:
    signer = Signer(b"k" * 32)
    session = Session.new(1000.0, "alice")
    cookie = session.cookie(signer)
    assert Session.read(signer, cookie, 1001.0, 60.0) == session
    body, mac = cookie.split(".")
    forged_body = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (
        f"{forged_body}.{mac}",
        f"{body}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        f"{body}.",
        body,
        "",
        None,
        "a.b.c",
        cookie.upper(),
    ):
        assert Session.read(signer, bad, 1001.0, 60.0) is None, bad
    assert Session.read(Signer(b"j" * 32), cookie, 1001.0, 60.0) is None  # another secret
    assert Session.read(signer, cookie, 1060.0, 60.0) is None  # expired
    assert Session.read(signer, cookie, 999.0, 60.0) is None  # from the future
    notice = signer.dumps("notice", {"c": session.csrf, "t": 1000.0, "n": "alice"})
    assert Session.read(signer, notice, 1001.0, 60.0) is None  # made for another purpose
    with pytest.raises(ValueError):
        Signer(b"short")


def test_csrf_tokens_and_passwords_compare_exactly() -> None:
    session = Session.new(0.0)
    assert session.token_matches(session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "x", "\u00e9" * 32):
        assert not session.token_matches(wrong)
    assert Session.new(0.0).csrf != session.csrf
    assert password_matches("s3cret", "s3cret")
    for wrong in ("", "s3cre", "s3cret ", "S3cret", "\udc80"):
        assert not password_matches(wrong, "s3cret")


def test_names_are_tidied_and_bad_ones_refused() -> None:
    assert valid_name("  Alice   Smith ") == "Alice Smith"
    assert valid_name("<b>bob</b>") == "<b>bob</b>"  # escaped where shown, kept as typed
    for bad in ("", "   ", "x" * 81, "al\x00ice", "bob\x9b", "mal \u202ebob", "bob\u200b"):
        assert valid_name(bad) is None


def test_the_sign_in_throttle_remembers_a_bounded_number_of_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hitl_inbox import _app

    monkeypatch.setattr(_app, "ADDRESSES_KEPT", 3)
    inbox: Any = type("Inbox", (), {"wrong_logins": {}})()
    for index, address in enumerate("abcde"):
        recent = _app.Inbox._wrong_from(inbox, address, 10.0 + index / 10)
        if address in "ab":  # a and b guess wrong; the others sign in well
            recent.append(10.0)
    # the quiet addresses make room; the ones that guessed within the second are kept
    assert list(inbox.wrong_logins) == ["a", "b", "e"]
    assert len(_app.Inbox._wrong_from(inbox, "a", 10.5)) == 1
    assert len(_app.Inbox._wrong_from(inbox, "a", 11.5)) == 0  # forgotten after a second


def test_filters_come_back_from_their_query_and_ignore_junk() -> None:
    filters = Filters(user="u:cust 1&2", tool="t:slack.*", age=3600)
    query = urllib.parse.parse_qsl(filters.query().lstrip("?"))
    assert Filters.parse(dict(query)) == filters
    assert Filters.parse({"user": "-", "tool": "k:plan"}) == Filters(user="-", tool="k:plan")
    assert Filters.parse({"user": "x", "tool": "k:nope", "age": "59"}) == Filters()
    assert Filters.parse({"age": "-1"}) == Filters() and Filters().query() == ""
    for junk in ("\u00b2", "\u0663\u0666\u0660\u0660", "9" * 5000):  # isdigit, not int
        assert Filters.parse({"age": junk}) == Filters()


def test_an_error_inside_a_handler_is_a_500_with_the_security_headers() -> None:
    from hitl_inbox._app import _SecurityHeaders

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(_SecurityHeaders(broken)(scope, receive, send))
    start = sent[0]
    assert start["status"] == 500
    names = {name for name, _ in start["headers"]}
    assert {b"content-security-policy", b"x-frame-options", b"cache-control"} <= names


# -- the follower ---------------------------------------------------------------------------


def test_the_live_log_shows_hidden_characters_of_who_decided(tmp_path: Path) -> None:
    # a decision made elsewhere (the SDK, the CLI) may carry any actor; the page writes
    # what the follower sends into its live log as text, so the follower writes them out
    db = tmp_path / "hitl.db"
    run_id, request_id = tool_call(db, "gmail.send\u202e", {"to": "x"})
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        engine.runs.approve(run_id, request_id=request_id, actor="mallory \u202ewolla\u202c")
        (event,) = [e for e in engine.events.list(run_id=run_id) if e.type == "request.resolved"]
        described = Feed(engine)._describe(event)
    assert described["actor"] == "mallory <U+202E>wolla<U+202C>"
    assert described["tool_name"] == "gmail.send<U+202E>"


def test_one_follower_feeds_every_stream(tmp_path: Path) -> None:
    db = tmp_path / "hitl.db"
    run_id, request_id = tool_call(db, "gmail.send", {"to": "x"})
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        feed = Feed(engine, interval=0.05)
        feed.start()
        try:
            assert feed.ready.wait(10)

            async def three_streams() -> list[list[dict[str, Any]]]:
                subscriptions = [feed.subscribe() for _ in range(3)]
                decided = await asyncio.to_thread(
                    hitl, db, "approve", run_id, request_id, "--actor", "bob"
                )
                assert decided.returncode == 0, decided.stderr
                received = []
                for subscription in subscriptions:
                    items: list[dict[str, Any]] = []
                    while not items or items[-1]["type"] != "request.resolved":
                        item = await asyncio.wait_for(subscription.queue.get(), 10)
                        assert item is not None
                        items.append(item)
                    received.append(items)
                    feed.unsubscribe(subscription)
                return received

            received = asyncio.run(three_streams())
            followers = [t for t in threading.enumerate() if t.name == "hitl-inbox-feed"]
            assert len(followers) == 1
        finally:
            feed.close()
    assert len(received) == 3
    for items in received:
        resolved = items[-1]
        assert (resolved["request_id"], resolved["actor"], resolved["status"]) == (
            request_id,
            "bob",
            "allowed",
        )
        assert resolved["tool_name"] == "gmail.send"
    assert feed.subscribers == 0
    assert not any(t.name == "hitl-inbox-feed" for t in threading.enumerate())


def test_the_follower_reads_when_the_store_says_something_changed(tmp_path: Path) -> None:
    db = tmp_path / "hitl.db"
    run_id, request_id = tool_call(db, "gmail.send")
    engine, changes = open_engine(f"sqlite:///{db}")
    assert changes is not None
    with engine:
        feed = Feed(engine, interval=600.0, changes=changes)  # never by polling in this test
        feed.start()
        try:
            assert feed.ready.wait(10)

            async def decided_elsewhere() -> dict[str, Any]:
                subscription = feed.subscribe()
                done = await asyncio.to_thread(hitl, db, "approve", run_id, request_id)
                assert done.returncode == 0, done.stderr
                while True:
                    item = await asyncio.wait_for(subscription.queue.get(), 30)
                    assert item is not None
                    if item["type"] == "request.resolved":
                        return item

            item = asyncio.run(decided_elsewhere())
        finally:
            feed.close()
    assert (item["request_id"], item["status"]) == (request_id, "allowed")
    with pytest.raises(hitl_core.ValidationError) as refused:
        open_engine("nosuchscheme://x")
    assert refused.value.code == "invalid_url"


def test_the_follower_starts_at_the_end_of_the_log(tmp_path: Path) -> None:
    db = tmp_path / "hitl.db"
    for _ in range(3):
        tool_call(db, "crm.update")  # history the inbox must not replay
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        feed = Feed(engine, interval=0.05)
        feed.start()
        try:
            assert feed.ready.wait(10)

            async def first_item() -> dict[str, Any] | None:
                subscription = feed.subscribe()
                _, fresh = await asyncio.to_thread(tool_call, db, "slack.post")
                item = await asyncio.wait_for(subscription.queue.get(), 10)
                assert item is not None and item["request_id"] == fresh
                return item

            item = asyncio.run(first_item())
        finally:
            feed.close()
    assert item is not None and item["type"] == "run.awaiting_input"
    assert item["tool_name"] == "slack.post"


# -- the command over HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveInbox]:
    if not HITL.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")
    db = tmp_path_factory.mktemp("inbox-http") / "hitl.db"
    hitl_core.connect(f"sqlite:///{db}").close()
    live = LiveInbox(db)
    try:
        yield live
    finally:
        code, err = live.stop()
        assert code == 0, err
        assert "Traceback" not in err, err


class Client:
    """A cookie-keeping HTTP client that does not follow redirects; `source` is the
    loopback address it connects from (127.0.0.1 by default)."""

    def __init__(self, url: str, source: str | None = None) -> None:
        self.url = url
        self.jar = http.cookiejar.CookieJar()

        class Stay(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None

        class From(urllib.request.HTTPHandler):
            def http_open(self, req: Any) -> Any:
                address = None if source is None else (source, 0)
                return self.do_open(
                    functools.partial(http.client.HTTPConnection, source_address=address), req
                )

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), Stay(), From()
        )

    def send(
        self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()

    def csrf(self, path: str = "/login") -> str:
        _, _, body = self.send(path)
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert found, body
        return found.group(1)

    def sign_in(self, name: str = "alice") -> str:
        status, headers, _ = self.send(
            "/login", {"csrf": self.csrf(), "name": name, "password": PASSWORD}
        )
        assert status == 303 and headers["location"] == "/", (status, headers)
        return self.csrf("/")

    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


def test_pages_carry_a_strict_policy_and_no_inline_script(server: LiveInbox) -> None:
    client = Client(server.url)
    status, headers, _ = client.send("/login")
    assert status == 200
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    cookie = next(v for k, v in headers.items() if k.lower() == "set-cookie")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    client.sign_in()
    for path in ("/", "/login"):
        _, _, page = client.send(path)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # every script is a file
        assert not re.search(r"\son[a-z]+=|\sstyle=", page)  # no inline handlers or styles
    status, headers, script = client.send("/static/inbox.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script


def test_the_login_refuses_wrong_passwords_forms_and_names(server: LiveInbox) -> None:
    client = Client(server.url)
    token = client.csrf()
    for form, status in (
        ({"csrf": token, "name": "alice", "password": "wrong"}, 401),
        ({"csrf": token, "name": "alice", "password": PASSWORD + " "}, 401),
        ({"csrf": token, "name": "", "password": PASSWORD}, 401),
        ({"csrf": "forged", "name": "alice", "password": PASSWORD}, 403),
        ({"name": "alice", "password": PASSWORD}, 403),
    ):
        got, _, body = client.send("/login", form)
        assert got == status, (form, body)
    assert client.send("/")[0] == 303  # still not signed in
    stranger = Client(server.url)  # no login-page cookie at all
    assert stranger.send("/login", {"name": "a", "password": PASSWORD})[0] == 303
    assert stranger.send("/")[0] == 303


def test_guessing_stays_slow_when_the_right_password_is_among_the_guesses(
    server: LiveInbox,
) -> None:
    """Beyond 5 wrong sign-ins a second from one address, its sign-ins are turned away
    without a look at the password: a guesser who fires hundreds a second learns nothing
    from the ones refused (the right password there was let in before)."""
    guessers = [Client(server.url) for _ in range(20)]  # from 127.0.0.1, a trusted proxy
    tokens = [guesser.csrf() for guesser in guessers]
    time.sleep(1.1)  # the wrong sign-ins of earlier tests from this address are forgotten
    answers: list[int] = []

    def guess(guesser: Client, token: str) -> None:
        form = {"csrf": token, "name": "x", "password": "guess"}
        other = {"X-Forwarded-For": f"10.0.0.{len(answers)}"}  # no other address this way
        answers.append(guesser.send("/login", form, headers=other)[0])

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(guessers, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers.count(401) == 5 and answers.count(429) == 15, sorted(answers)
    same_place = Client(server.url)
    token = same_place.csrf()
    form = {"csrf": token, "name": "x", "password": PASSWORD}
    assert same_place.send("/login", form)[0] == 429  # the right one, refused unread
    time.sleep(1.1)  # a second later the address may try again
    assert same_place.send("/login", form)[0] == 303


def test_behind_an_https_proxy_on_this_machine_the_cookies_are_secure(
    server: LiveInbox,
) -> None:
    def session_cookie(client: Client, headers: dict[str, str]) -> str:
        _, answer, _ = client.send("/login", headers=headers)
        return next(v for k, v in answer.items() if k.lower() == "set-cookie")

    proxied = {"X-Forwarded-Proto": "https"}
    assert "Secure" in session_cookie(Client(server.url), proxied)  # from 127.0.0.1
    assert "Secure" not in session_cookie(Client(server.url), {})
    # from another address the header is not trusted
    assert "Secure" not in session_cookie(Client(server.url, source="127.0.0.5"), proxied)


def test_wrong_sign_ins_never_hold_up_a_right_one(server: LiveInbox) -> None:
    """Guessers are slowed down and then turned away (429), but a person with the right
    password at another address signs in at once, however many wrong attempts are in
    flight."""
    guessers = [Client(server.url, source="127.0.0.2") for _ in range(30)]
    tokens = [guesser.csrf() for guesser in guessers]
    answers: list[int] = []

    def guess(guesser: Client, token: str) -> None:
        answers.append(guesser.send("/login", {"csrf": token, "name": "x", "password": "guess"})[0])

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(guessers, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the guesses are in flight
    person = Client(server.url)
    token = person.csrf()
    started = time.monotonic()
    status, _, _ = person.send("/login", {"csrf": token, "name": "alice", "password": PASSWORD})
    waited = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    assert status == 303
    assert waited < 3.0, f"the right password waited {waited:.1f} s behind the guesses"
    assert set(answers) <= {401, 429} and 429 in answers  # guessing is throttled


def test_digits_that_are_not_ascii_are_junk_not_a_500(server: LiveInbox) -> None:
    # "²".isdigit() is True but int("²") fails: filters, answers and the page to go back
    # to crashed with 500, the last one after the answer was recorded
    run_id, request_id = question(
        server.db,
        [
            {
                "question": "Which?",
                "header": "Pick",
                "multiSelect": False,
                "options": [{"label": "A", "description": ""}, {"label": "B", "description": ""}],
            }
        ],
    )
    client = Client(server.url)
    token = client.sign_in("erin")
    for path in ("/?age=%C2%B2", "/cards?age=%C2%B2", "/?age=" + "9" * 5000):
        assert client.send(path)[0] == 200, path
    target = f"/decide/{run_id}/{request_id}"
    base = {"csrf": token, "decision": "answer", "next": ""}
    status, _, body = client.send(target, {**base, "back": "", "q0": "\u00b2"})
    assert status == 422 and "Which?" in body  # unanswered, shown next to the form
    assert request(server.db, run_id, request_id).is_pending
    status, headers, _ = client.send(target, {**base, "back": "?age=\u00b2", "q0": "1"})
    assert status == 303 and headers["location"] == "/"
    assert request(server.db, run_id, request_id).answers == {"Which?": "B"}


def test_a_signed_in_session_decides_and_signs_out(server: LiveInbox) -> None:
    run_id, request_id = tool_call(server.db, "crm.update", {"id": 1})
    client = Client(server.url)
    token = client.sign_in("dora")
    status, _, body = client.send("/cards")
    assert status == 200 and f'id="c-{request_id}"' in body
    status, headers, _ = client.send(
        f"/decide/{run_id}/{request_id}",
        {"csrf": token, "decision": "deny", "reason": "no", "back": "?user=-", "next": ""},
    )
    assert status == 303 and headers["location"] == "/?user=-"
    with hitl_core.connect(f"sqlite:///{server.db}") as engine:
        decided = next(r for r in engine.runs.permissions(run_id) if r.request_id == request_id)
    assert (decided.status, decided.actor, decided.reason) == ("denied", "dora", "no")
    _, _, page = client.send("/")
    assert "Denied crm.update." in page  # the notice, once
    assert "Denied crm.update." not in client.send("/")[2]
    too_big = {"csrf": token, "decision": "allow", "reason": "x" * 300_000}
    assert client.send(f"/decide/{run_id}/{request_id}", too_big)[0] == 413
    assert client.send("/logout", {"csrf": "forged"})[0] == 403
    assert client.send("/logout", {"csrf": token})[0] == 303
    assert client.send("/")[0] == 303


def test_the_live_stream_needs_a_session_and_ends_when_the_server_stops(tmp_path: Path) -> None:
    if not HITL.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")
    db = tmp_path / "hitl.db"
    hitl_core.connect(f"sqlite:///{db}").close()
    live = LiveInbox(db)
    try:
        client = Client(live.url)
        assert client.send("/events")[0] == 401
        client.sign_in()
        host, port = live.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", "/events", headers={"Cookie": client.cookie()})
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.readline() == b"retry: 2000\n"
        run_id, request_id = tool_call(db, "gmail.send")
        lines = [response.readline()]
        while not lines[-1].startswith(b"data: "):
            lines.append(response.readline())
        data = json.loads(lines[-1].decode().removeprefix("data: "))
        assert lines[-2] == b"event: change\n" and lines[-3].startswith(b"id: evt_")
        assert (data["type"], data["run_id"], data["request_id"]) == (
            "run.awaiting_input",
            run_id,
            request_id,
        )
        started = time.monotonic()
    finally:
        code, err = live.stop()  # with the stream still open
    assert code == 0 and "Traceback" not in err, err
    assert time.monotonic() - started < 20
    connection.close()


def test_the_command_needs_a_password_and_a_free_port(tmp_path: Path) -> None:
    if not HITL.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "HITL_INBOX_PASSWORD"}
    result = subprocess.run(
        [str(HITL), "inbox", "--db", str(tmp_path / "x.db"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: no password: set HITL_INBOX_PASSWORD (people sign in with it)"
    )
    first = LiveInbox(tmp_path / "hitl.db")
    try:
        port = first.url.rsplit(":", 1)[1]
        taken = subprocess.run(
            [str(HITL), "inbox", "--db", str(tmp_path / "hitl.db"), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "HITL_INBOX_PASSWORD": PASSWORD},
        )
        assert taken.returncode == 1
        assert taken.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    finally:
        assert first.stop()[0] == 0
    wait_until(lambda: first.process.poll() is not None)


@contextlib.contextmanager
def served(tmp_path: Path, **options: Any) -> Iterator[tuple[int, Feed]]:
    """The inbox app (`create_app(**options)`) on uvicorn in a thread: its port and feed."""
    with hitl_core.connect(f"sqlite:///{tmp_path / 'hitl.db'}") as engine:
        app = create_app(engine, password=PASSWORD, poll_interval=0.05, **options)
        feed = app.state.inbox.feed
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started)
            yield sock.getsockname()[1], feed
        finally:
            server.should_exit = True
            feed.close()
            thread.join(15)
            sock.close()
    assert not thread.is_alive()


def test_closed_streams_are_forgotten(tmp_path: Path) -> None:
    with served(tmp_path) as (port, feed):
        client = Client(f"http://127.0.0.1:{port}")
        client.sign_in()
        streams = []
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", port)
            connection.request("GET", "/events", headers={"Cookie": client.cookie()})
            response = connection.getresponse()
            assert response.readline() == b"retry: 2000\n"
            streams.append((connection, response))
        assert feed.subscribers == 3
        for connection, response in streams:
            response.close()
            connection.close()
        wait_until(lambda: feed.subscribers == 0)


def test_clients_that_never_finish_their_headers_are_cut_off(server: LiveInbox) -> None:
    client = Client(server.url)
    client.sign_in()
    port = urllib.parse.urlsplit(server.url).port or 80
    stream = socket.create_connection(("127.0.0.1", port))
    stream.sendall(
        f"GET /events HTTP/1.1\r\nHost: x\r\nCookie: {client.cookie()}\r\n\r\n".encode()
    )
    assert stream.recv(100).startswith(b"HTTP/1.1 200")  # a live stream, longer than 10 s
    try:
        slow_clients_are_cut_off(port, keep=stream)
    finally:
        stream.close()
    assert client.send("/")[0] == 200


def test_a_live_stream_ends_when_its_session_expires(tmp_path: Path) -> None:
    with served(tmp_path, session_hours=2 / 3600) as (port, feed):
        client = Client(f"http://127.0.0.1:{port}")
        client.sign_in()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/events", headers={"Cookie": client.cookie()})
        response = connection.getresponse()
        assert response.status == 200
        started = time.monotonic()
        while response.readline():  # to its end: the server closes it with the session
            assert time.monotonic() - started < 20, "the stream outlived its session"
        connection.close()
        assert client.send("/events")[0] == 401  # and its reconnection is refused
        wait_until(lambda: feed.subscribers == 0)
