"""Webhooks: the signature scheme, endpoint management, and delivery to real HTTP
receivers on 127.0.0.1 (retries, failures, hangs, restarts) on the engine's clock."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hitl_webhooks import Dispatcher, Response

import hitl_core
from hitl_core import ManualClock, NotFoundError, ValidationError
from hitl_core.webhooks import sign, signed_headers, verify_signature

# -- signatures ---------------------------------------------------------------------------


def test_sign_matches_an_independent_hmac() -> None:
    expected = hmac.new(b"s3cret", b'evt_1.1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sign("s3cret", "evt_1", 1700000000, '{"a":1}') == "v1=" + expected
    assert sign("s3cret", "evt_1", "1700000000", b'{"a":1}') == "v1=" + expected


def test_verify_signature() -> None:
    body = '{"event":"run.completed"}'
    headers = signed_headers("key", "evt_9", 1000, body)
    assert verify_signature(body, headers, "key")
    assert verify_signature(body.encode(), {k.upper(): v for k, v in headers.items()}, "key")
    assert not verify_signature(body + " ", headers, "key")  # tampered body
    assert not verify_signature(body, headers, "other key")
    for missing in headers:
        partial = {k: v for k, v in headers.items() if k != missing}
        assert not verify_signature(body, partial, "key")
    forged = dict(headers, **{"Webhook-Signature": "v1=" + "0" * 64})
    assert not verify_signature(body, forged, "key")
    assert verify_signature(body, headers, "key", tolerance_seconds=300, now=1200)
    assert not verify_signature(body, headers, "key", tolerance_seconds=300, now=1301)
    assert not verify_signature(body, headers, "key", tolerance_seconds=300, now=699)
    bad_time = dict(headers, **{"Webhook-Timestamp": "soon"})
    assert not verify_signature(body, bad_time, "key", tolerance_seconds=300, now=1000)
    assert not verify_signature(b"\xff\xfe", headers, "key")


# -- a real receiver ----------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records what it gets and answers from a script."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], str]] = []
        self.answers: list[int | str] = []  # status codes, or "hang"
        self.hang = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                receiver.received.append((dict(self.headers.items()), body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    receiver.hang.wait(5)
                    return
                assert isinstance(answer, int)
                self.send_response(answer)
                self.end_headers()
                self.wfile.write(b"thanks" if answer < 300 else b"nope")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/hitl.db"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_700_000_000.0)


@pytest.fixture
def hitl(store_url: str, clock: ManualClock) -> Iterator[hitl_core.Hitl]:
    with hitl_core.connect(store_url, clock=clock) as engine:
        yield engine


def _completed_run(hitl: hitl_core.Hitl) -> str:
    run = hitl.runs.create()
    hitl.agent(run.id).complete()
    return run.id


# -- endpoints ----------------------------------------------------------------------------


def test_endpoint_management(hitl: hitl_core.Hitl) -> None:
    created = hitl.webhooks.create(url="https://example.com/hook")
    assert created.events == ("run.completed", "run.failed", "run.cancelled")
    assert len(created.secret) == 64 and int(created.secret, 16) >= 0 and created.active
    shown = hitl.webhooks.get(created.id)
    assert shown.secret == created.secret[:4] + "..." and shown.url == created.url
    assert hitl.webhooks.list().data == [shown]
    updated = hitl.webhooks.update(created.id, events=["run.awaiting_input"], active=False)
    assert updated.events == ("run.awaiting_input",) and updated.active is False
    assert updated.secret == shown.secret
    rotated = hitl.webhooks.update(created.id, rotate_secret=True)
    assert len(rotated.secret) == 64 and rotated.secret != created.secret
    empty = hitl.webhooks.create(url="http://127.0.0.1:9/x", events=[])
    assert empty.events == ()
    hitl.webhooks.delete(created.id)
    with pytest.raises(NotFoundError) as caught:
        hitl.webhooks.get(created.id)
    assert caught.value.code == "webhook_not_found"
    assert [e.id for e in hitl.webhooks.list().data] == [empty.id]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "ftp://example.com/x",
        "https://",
        "https://exa mple.com",
        "https://user:pw@example.com/",
        "https://example.com:99999/",
        None,
        7,
    ],
)
def test_malformed_urls_are_refused(hitl: hitl_core.Hitl, url: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        hitl.webhooks.create(url=url)
    assert caught.value.code == "invalid_url"
    assert hitl.webhooks.list().data == []


def test_unknown_event_types_are_refused(hitl: hitl_core.Hitl) -> None:
    for events in (["run.exploded"], "run.completed", [1]):
        with pytest.raises(ValidationError) as caught:
            hitl.webhooks.create(url="https://example.com/", events=events)
        assert caught.value.code == "invalid_event_type"
    endpoint = hitl.webhooks.create(url="https://example.com/")
    with pytest.raises(ValidationError):
        hitl.webhooks.update(endpoint.id, events=["nope"])
    assert hitl.webhooks.get(endpoint.id).events == endpoint.events


# -- delivery -----------------------------------------------------------------------------


def test_awaiting_input_reaches_a_real_endpoint_signed(
    hitl: hitl_core.Hitl, receiver: Receiver
) -> None:
    endpoint = hitl.webhooks.create(url=receiver.url, events=["run.awaiting_input"])
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(run.id).request_tool("gmail.send")
    delivered = Dispatcher(hitl).run_once()
    assert [d.status for d in delivered] == ["delivered"]
    ((headers, body),) = receiver.received
    assert verify_signature(
        body, headers, endpoint.secret, tolerance_seconds=300, now=1_700_000_000.0
    )
    payload = json.loads(body)
    assert payload["event"] == "run.awaiting_input" and payload["run_id"] == run.id
    assert payload["data"]["request_id"] == gate.request_id
    assert headers["Webhook-Id"] == payload["id"] and headers["Content-Type"] == "application/json"
    assert Dispatcher(hitl).run_once() == []  # nothing twice
    (log,) = hitl.webhooks.list_deliveries(endpoint.id).data
    assert (log.status, log.attempts, log.response_status_code) == ("delivered", 1, 200)


def test_events_before_the_endpoint_existed_are_not_sent(
    hitl: hitl_core.Hitl, receiver: Receiver
) -> None:
    _completed_run(hitl)
    hitl.webhooks.create(url=receiver.url)
    later = _completed_run(hitl)
    Dispatcher(hitl).run_once()
    assert [json.loads(body)["run_id"] for _, body in receiver.received] == [later]


def test_failing_twice_then_succeeding_is_delivered_on_the_third_attempt(
    hitl: hitl_core.Hitl, receiver: Receiver, clock: ManualClock
) -> None:
    endpoint = hitl.webhooks.create(url=receiver.url)
    _completed_run(hitl)
    receiver.answers = [500, 503]
    dispatcher = Dispatcher(hitl)
    (first,) = dispatcher.run_once()
    assert (first.status, first.attempts, first.response_status_code) == ("pending", 1, 500)
    assert first.next_retry_at == clock.now() + 2
    clock.advance(1.9)
    assert dispatcher.run_once() == []  # not due yet
    clock.advance(0.1)
    (second,) = dispatcher.run_once()
    assert (second.attempts, second.next_retry_at) == (2, clock.now() + 4)
    clock.advance(4)
    (third,) = dispatcher.run_once()
    assert (third.status, third.attempts, third.response_status_code) == ("delivered", 3, 200)
    ids = {headers["Webhook-Id"] for headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1
    assert hitl.webhooks.list_deliveries(endpoint.id, status="delivered").data == [third]


def test_a_dead_receiver_ends_as_a_failed_delivery(
    hitl: hitl_core.Hitl, clock: ManualClock
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    endpoint = hitl.webhooks.create(url=dead)
    _completed_run(hitl)
    dispatcher = Dispatcher(hitl, timeout=2.0)
    outcomes = []
    for wait in (0, 2, 4):
        clock.advance(wait)
        outcomes.extend(dispatcher.run_once())
    assert [d.status for d in outcomes] == ["pending", "pending", "failed"]
    final = outcomes[-1]
    assert final.attempts == 3 and final.error and final.response_status_code is None
    clock.advance(100)
    assert dispatcher.run_once() == []
    assert hitl.webhooks.list_deliveries(endpoint.id, status="failed").data == [final]


def test_a_hanging_receiver_is_cut_off_and_retried(
    hitl: hitl_core.Hitl, receiver: Receiver, clock: ManualClock
) -> None:
    hitl.webhooks.create(url=receiver.url)
    _completed_run(hitl)
    receiver.answers = ["hang"]
    dispatcher = Dispatcher(hitl, timeout=0.3)
    started = time.monotonic()
    (first,) = dispatcher.run_once()
    assert time.monotonic() - started < 4  # cut off, not waiting for the receiver
    assert first.status == "pending" and first.error
    # the engine was never blocked: other calls work while a send is in flight
    assert hitl.runs.create().status == "running"
    clock.advance(2)
    (second,) = dispatcher.run_once()
    assert second.status == "delivered" and second.attempts == 2


def test_deactivating_fails_pending_deliveries(hitl: hitl_core.Hitl, receiver: Receiver) -> None:
    endpoint = hitl.webhooks.create(url=receiver.url)
    _completed_run(hitl)
    hitl.webhooks.enqueue()
    hitl.webhooks.update(endpoint.id, active=False)
    assert Dispatcher(hitl).run_once() == [] and receiver.received == []
    (log,) = hitl.webhooks.list_deliveries(endpoint.id).data
    assert (log.status, log.error) == ("failed", "endpoint deactivated")


def test_a_stale_outcome_changes_nothing(hitl: hitl_core.Hitl, clock: ManualClock) -> None:
    hitl.webhooks.create(url="http://127.0.0.1:9/x")
    _completed_run(hitl)
    hitl.webhooks.enqueue()
    (claimed,) = hitl.webhooks.claim(lease_seconds=10)
    clock.advance(11)  # the lease ran out: another worker claims it again
    (again,) = hitl.webhooks.claim(lease_seconds=10)
    assert again.delivery.attempts == 2
    late = hitl.webhooks.record(claimed.delivery.id, attempt=1, status_code=200)
    assert late.status == "pending" and late.attempts == 2
    done = hitl.webhooks.record(again.delivery.id, attempt=2, status_code=204)
    assert done.status == "delivered"


def test_pending_deliveries_resume_after_a_restart(
    tmp_path: Path, receiver: Receiver, clock: ManualClock
) -> None:
    url = f"sqlite:///{tmp_path}/outbox.db"
    with hitl_core.connect(url, clock=clock) as hitl:
        hitl.webhooks.create(url=receiver.url)
        _completed_run(hitl)
        hitl.webhooks.enqueue()
        (claimed,) = hitl.webhooks.claim(lease_seconds=30)
        # the worker dies here, before sending
    clock.advance(31)
    with hitl_core.connect(url, clock=clock) as hitl:
        (delivered,) = Dispatcher(hitl).run_once()
    assert delivered.id == claimed.delivery.id and delivered.status == "delivered"
    assert delivered.attempts == 2 and len(receiver.received) == 1


def test_a_second_endpoint_does_not_skip_events_waiting_for_the_first(
    hitl: hitl_core.Hitl, receiver: Receiver
) -> None:
    first = hitl.webhooks.create(url=receiver.url)  # on an empty event log
    run_id = _completed_run(hitl)
    hitl.webhooks.create(url=receiver.url + "/second")  # before any delivery pass
    Dispatcher(hitl).run_once()
    (log,) = hitl.webhooks.list_deliveries(first.id).data
    assert (log.run_id, log.status) == (run_id, "delivered")


@pytest.mark.parametrize(
    "call",
    [
        lambda h: h.webhooks.enqueue(limit="a"),
        lambda h: h.webhooks.enqueue(limit=-1),
        lambda h: h.webhooks.claim(limit=0),
        lambda h: h.webhooks.claim(lease_seconds=10**400),
        lambda h: h.webhooks.record("dlv_x", attempt=1, status_code="200"),
        lambda h: h.webhooks.record("dlv_x", attempt=1, status_code=10**30),
        lambda h: h.webhooks.record("dlv_x", attempt=1, response_body=5),
        lambda h: h.webhooks.record("dlv_x", attempt=1, error=object()),
        lambda h: h.webhooks.record("dlv_x", attempt="1"),
    ],
)
def test_outbox_arguments_are_checked(hitl: hitl_core.Hitl, call: Any) -> None:
    with pytest.raises(ValidationError):
        call(hitl)


# -- the worker loop survives a failing pass ------------------------------------------------

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # hold the write lock until told to let go
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class Records(logging.Handler):
    """Collects the log records of one logger."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.logger.removeHandler(self)
        super().close()


def _until(condition: Any, thread: threading.Thread, what: str) -> None:
    """Wait (at most 60 s) for `condition()` while the worker thread lives."""
    deadline = time.monotonic() + 60
    while not condition():
        assert thread.is_alive(), f"the worker ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.02)


def test_run_forever_survives_a_locked_store(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "locked.db"
    records = Records("hitl_webhooks")
    with hitl_core.connect(f"sqlite:///{db}") as hitl:
        hitl.webhooks.create(url=receiver.url)
        run_id = _completed_run(hitl)  # the first pass must write: fan this event out
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stop = threading.Event()
        worker = threading.Thread(
            target=Dispatcher(hitl).run_forever, args=(stop,), kwargs={"interval": 0.05}
        )
        try:
            assert locker.stdout is not None and locker.stdin is not None
            assert locker.stdout.readline() == "locked\n"
            worker.start()

            def busy_logged() -> bool:
                return any(
                    r.exc_info and getattr(r.exc_info[1], "code", None) == "store_busy"
                    for r in records.records
                )

            _until(busy_logged, worker, "store_busy error logged")
            locker.stdin.write("go\n")
            locker.stdin.flush()
            assert locker.wait(timeout=30) == 0
            _until(lambda: len(receiver.received) == 1, worker, "delivery after the lock")
            assert json.loads(receiver.received[0][1])["run_id"] == run_id
        finally:
            stop.set()
            worker.join(30)
            locker.kill()
            records.close()
        assert not worker.is_alive()
    (error,) = {r.levelno for r in records.records if r.exc_info}
    assert error == logging.ERROR


def test_a_sender_that_raises_is_a_failed_attempt(clock: ManualClock) -> None:
    sent: list[str] = []

    def flaky(url: str, body: str, headers: dict[str, str], timeout: float) -> Response:
        if not sent:
            sent.append("boom")
            raise RuntimeError("boom")
        sent.append(body)
        return Response(204)

    records = Records("hitl_webhooks")
    try:
        with hitl_core.connect("memory://", clock=clock) as hitl:
            hitl.webhooks.create(url="http://127.0.0.1:9/hook")
            run_id = _completed_run(hitl)
            (first,) = Dispatcher(hitl, send=flaky).run_once()
            assert (first.status, first.attempts) == ("pending", 1)
            assert first.error == "RuntimeError: boom"
            clock.advance(2)
            (second,) = Dispatcher(hitl, send=flaky).run_once()
            assert (second.id, second.status, second.attempts) == (first.id, "delivered", 2)
            assert json.loads(sent[1])["run_id"] == run_id
    finally:
        records.close()
    (logged,) = [r for r in records.records if r.exc_info]
    assert isinstance(logged.exc_info[1], RuntimeError)  # type: ignore[index]


def test_run_forever_survives_a_sender_that_always_raises(clock: ManualClock) -> None:
    calls: list[str] = []

    def broken(url: str, body: str, headers: dict[str, str], timeout: float) -> Response:
        calls.append(url)
        raise OSError("no route")

    with hitl_core.connect("memory://", clock=clock) as hitl:
        endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/hook")
        _completed_run(hitl)
        stop = threading.Event()
        loop = Dispatcher(hitl, send=broken, backoff=(0.0, 0.0)).run_forever  # retry at once
        worker = threading.Thread(target=loop, args=(stop,), kwargs={"interval": 0.01})
        worker.start()
        try:
            _until(lambda: len(calls) == 3, worker, "three attempts")

            def failed() -> bool:
                (log,) = hitl.webhooks.list_deliveries(endpoint.id).data
                return bool(log.status == "failed")

            _until(failed, worker, "the delivery to fail")
            _completed_run(hitl)  # the loop goes on with the next event
            _until(lambda: len(calls) == 6, worker, "the next event's attempts")
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive()


def test_the_dispatcher_claims_with_its_own_max_attempts(
    hitl: hitl_core.Hitl, clock: ManualClock, receiver: Receiver
) -> None:
    """Three workers died mid-send; a dispatcher allowing five attempts still sends."""
    hitl.webhooks.create(url=receiver.url)
    _completed_run(hitl)
    hitl.webhooks.enqueue()
    for _ in range(3):
        assert len(hitl.webhooks.claim(lease_seconds=1, max_attempts=5)) == 1
        clock.advance(2)  # the lease ends with no outcome recorded
    (delivered,) = Dispatcher(hitl, max_attempts=5).run_once()
    assert (delivered.status, delivered.attempts) == ("delivered", 4)
    assert len(receiver.received) == 1


def test_a_receiver_answering_with_a_nul_byte_is_recorded_and_holds_up_nobody() -> None:
    """A receiver's answer comes from outside: it is kept (escaped), never refused, and
    one delivery's trouble never stops the others of the pass."""
    import http.server

    hits = {"/bad": 0, "/good": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hits[self.path] += 1
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\x00\xff" if self.path == "/bad" else b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clock = hitl_core.ManualClock(1000.0)
    hitl = hitl_core.connect("memory://", clock=clock)
    endpoints = [
        hitl.webhooks.create(
            url=f"http://127.0.0.1:{server.server_port}{path}", events=["run.completed"]
        )
        for path in hits
    ]
    run = hitl.runs.create()
    hitl.agent(run.id).complete()
    Dispatcher(hitl).run_once()
    assert hits == {"/bad": 1, "/good": 1}
    for endpoint in endpoints:
        (delivery,) = hitl.webhooks.list_deliveries(endpoint.id).data
        assert (delivery.status, delivery.attempts) == ("delivered", 1)
    (bad,) = hitl.webhooks.list_deliveries(endpoints[0].id).data
    assert bad.response_body is not None and "\x00" not in bad.response_body
    server.shutdown()
    hitl.close()
