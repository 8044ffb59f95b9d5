"""Regression tests for what broke when the project was tried as its users would use it:
time that went backwards under contention, webhook deliveries claimed forever, every
call paying for every overdue run, lookups that slowed as data grew, decisions that lost
a race looking like wins, and wrong-typed ids answered as unknown."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hitl_memory import MemoryStore

import hitl_core
from hitl_core import ManualClock, Store, ValidationError
from hitl_core.adapter import Transaction


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path)


def approval_run(hitl: hitl_core.Hitl, **options: Any) -> hitl_core.Run:
    return hitl.runs.create(human_in_the_loop=True, permission_mode="approval", **options)


# -- time never runs backwards ------------------------------------------------------------


class _PausingClock(ManualClock):
    """A shared manual clock whose first reading in the deciding thread waits (up to a
    moment) for the suspending thread to finish: the interleaving of the defect."""

    def __init__(self) -> None:
        super().__init__(start=99.0)
        self.decider: int | None = None
        self.read = threading.Event()
        self.other_done = threading.Event()

    def now(self) -> float:
        reading = super().now()
        if threading.get_ident() == self.decider and not self.read.is_set():
            self.read.set()
            self.other_done.wait(1.0)  # with the clock read inside the lock, this times out
        return reading


def test_a_decision_is_never_stamped_before_the_change_it_follows(tmp_path: Path) -> None:
    clock = _PausingClock()
    deciding = hitl_core.connect(sqlite_url(tmp_path / "h.db"), clock=clock)
    other = hitl_core.connect(sqlite_url(tmp_path / "h.db"), clock=clock)
    run = approval_run(deciding, input_timeout=1.0)  # the deadline is 100.0
    gate = deciding.agent(run.id).request_tool("deploy")
    assert gate.request_id is not None

    def decide() -> None:
        clock.decider = threading.get_ident()
        deciding.runs.approve(run.id, request_id=gate.request_id)  # type: ignore[arg-type]

    thread = threading.Thread(target=decide)
    thread.start()
    assert clock.read.wait(5)
    clock.advance(1.0)  # 100.0: the other engine suspends the run at its deadline
    other.tick()
    clock.other_done.set()
    thread.join(10)
    events = other.events.list(run_id=run.id)
    stamps = [event.created_at for event in events]
    assert stamps == sorted(stamps), [(e.type, e.created_at) for e in events]
    request = other.agent(run.id).result(gate.request_id)  # type: ignore[arg-type]
    assert request.resolved_at is not None and request.resolved_at >= request.created_at
    updated = [e.created_at for e in events]
    assert other.runs.get(run.id).updated_at >= max(updated)
    deciding.close()
    other.close()


# -- webhook claims respect the attempt limit -----------------------------------------


def test_a_delivery_whose_workers_keep_dying_fails_after_its_attempts() -> None:
    clock = ManualClock(start=0.0)
    hitl = hitl_core.connect("memory://", clock=clock)
    endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/hook", events=["run.started"])
    hitl.runs.create()
    hitl.webhooks.enqueue()
    claims = []
    for _ in range(10):  # a worker claims, then dies before recording an outcome
        claims.append(len(hitl.webhooks.claim(lease_seconds=5.0, max_attempts=3)))
        clock.advance(6.0)
    assert claims[:3] == [1, 1, 1] and sum(claims) == 3
    (delivery,) = hitl.webhooks.list_deliveries(endpoint.id).data
    assert delivery.status == "failed" and delivery.attempts == 3
    assert "no outcome was recorded" in (delivery.error or "")


# -- a call does bounded work for runs it did not touch ---------------------------------


class _Counting(MemoryStore):
    """The memory store, counting the runs written."""

    def __init__(self) -> None:
        super().__init__()
        self.updates = 0

    def update_run(self, run: hitl_core.Run) -> None:
        self.updates += 1
        super().update_run(run)


def test_one_call_suspends_its_own_run_and_a_small_batch_not_every_overdue_run() -> None:
    store = _Counting()
    clock = ManualClock(start=0.0)
    hitl = hitl_core.connect(store, clock=clock)
    runs = [approval_run(hitl, input_timeout=1.0) for _ in range(2_000)]
    for run in runs:
        hitl.agent(run.id).request_tool("t")
    mine = approval_run(hitl)
    clock.advance(10.0)
    store.updates = 0
    assert hitl.runs.get(mine.id).suspended is False  # a read of a run not due: no writes
    assert hitl.runs.cancel(mine.id).status == "cancelled"  # a write: its run + a batch
    assert store.updates <= 16 + 1, store.updates
    store.updates = 0
    assert hitl.runs.get(runs[-1].id).suspended is True  # its own deadline, at once
    assert store.updates <= 16 + 1, store.updates
    events = hitl.tick()  # the rest is tick's work, a batch per transaction
    assert len([e for e in events if e.type == "run.suspended"]) >= 2_000 - 2 * 17
    assert all(hitl.runs.get(run.id).suspended for run in runs)


def test_a_damaged_overdue_row_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h.db"
    clock = ManualClock(start=0.0)
    hitl = hitl_core.connect(sqlite_url(path), clock=clock)
    broken = approval_run(hitl, input_timeout=1.0)
    hitl.agent(broken.id).request_tool("t")
    fine = approval_run(hitl, input_timeout=1.0)
    hitl.agent(fine.id).request_tool("t")
    db = sqlite3.connect(path)  # a row no engine would write: running with a deadline
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (broken.id,))
    db.commit()
    db.close()
    clock.advance(5.0)
    assert hitl.tick()[0].run_id == fine.id  # the others are suspended
    assert hitl.runs.get(fine.id).suspended is True
    assert caplog.text.count(broken.id) == 1  # reported once
    other = approval_run(hitl)  # unrelated calls keep working
    assert hitl.runs.get(other.id).status == "running"
    assert hitl.tick() == []  # and nothing spins on the damaged row
    assert caplog.text.count(broken.id) == 1
    hitl.close()


@pytest.mark.parametrize("of_one_run", [False, True])
def test_a_follower_does_not_spin_on_a_damaged_overdue_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, of_one_run: bool
) -> None:
    # The follower of the log sleeps until the next deadline; a damaged row's deadline,
    # which no look can apply, had passed already: events.wait looked again at once, for
    # its whole timeout (some 27,000 looks in 2 s, a core at 100 %).
    path = tmp_path / "h.db"
    hitl = hitl_core.connect(sqlite_url(path))  # the system clock
    broken = approval_run(hitl, input_timeout=0.1)
    hitl.agent(broken.id).request_tool("t")
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (broken.id,))
    db.commit()
    db.close()
    time.sleep(0.2)
    assert hitl.tick() == []  # reported once, skipped from then on
    looks = []
    original = type(hitl.events).list
    monkeypatch.setattr(
        type(hitl.events), "list", lambda self, **kw: looks.append(1) or original(self, **kw)
    )
    run_id = {"run_id": broken.id} if of_one_run else {}
    assert hitl.events.wait(after=hitl.events.last_id(), timeout=1.0, **run_id) == []
    assert len(looks) <= 3, len(looks)  # it waited, without looking again and again
    hitl.close()


# -- lookups stay flat as data grows ------------------------------------------------------


class _Spy(dict[str, Any]):
    """A dict that counts lookups: what a store reads to answer a call."""

    reads = 0

    def __getitem__(self, key: str) -> Any:
        _Spy.reads += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        _Spy.reads += 1
        return super().get(key, default)


class _CountingList(list[str]):
    """A list that counts the items read by iterating over it."""

    seen = 0

    def __iter__(self) -> Iterator[str]:
        for item in super().__iter__():
            _CountingList.seen += 1
            yield item


def test_memory_store_reads_a_runs_pending_requests_without_its_history() -> None:
    store = MemoryStore()
    hitl = hitl_core.connect(store)
    run = approval_run(hitl)
    agent = hitl.agent(run.id)
    for _ in range(3_000):
        gate = agent.request_tool("t")
        hitl.runs.approve(run.id, request_id=gate.request_id)  # type: ignore[arg-type]
    gate = agent.request_tool("t")
    store._requests = _Spy(store._requests)
    entry = store._runs[run.id]  # the run's entry: its requests, oldest first
    entry.requests = _CountingList(entry.requests)
    _Spy.reads = _CountingList.seen = 0
    with store.transaction(write=False) as tx:
        assert [r.request_id for r in tx.list_requests(run.id, pending_only=True)] == [
            gate.request_id
        ]
    assert _Spy.reads <= 2 and _CountingList.seen <= 2  # not the 3,000 resolved ones


def test_memory_store_lists_and_claims_without_scanning_everything() -> None:
    store = MemoryStore()
    clock = ManualClock(start=0.0)
    hitl = hitl_core.connect(store, clock=clock)
    endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/hook", events=["run.started"])
    for _ in range(3_000):
        hitl.runs.create(user_id="busy")
    last = hitl.runs.create(user_id="rare")
    hitl.webhooks.enqueue()
    store._runs = _Spy(store._runs)
    store._deliveries = _Spy(store._deliveries)
    _Spy.reads = 0
    page = hitl.runs.list(user_id="rare")
    assert [r.id for r in page.data] == [last.id]
    assert hitl.runs.list(status="running", limit=5).has_more
    page = hitl.runs.list(status="running", starting_after=page.data[0].id)
    assert page.data == []
    assert len(hitl.webhooks.claim(limit=5)) == 5
    assert len(hitl.webhooks.list_deliveries(endpoint.id, limit=5).data) == 5
    events = hitl.events.list(run_id=last.id)
    assert [e.type for e in events] == ["run.started"]
    assert _Spy.reads < 200, _Spy.reads


def test_sqlite_lists_runs_by_status_through_an_index(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    hitl_core.connect(sqlite_url(path)).close()
    db = sqlite3.connect(path)
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM runs INDEXED BY runs_by_status "
            "WHERE seq > 0 AND status = 'running' ORDER BY seq LIMIT 5"
        )
    )
    db.close()
    assert "runs_by_status" in plan and "TEMP B-TREE" not in plan


# -- a decision that lost a race says so --------------------------------------------------


@pytest.fixture
def hitl() -> Iterator[hitl_core.Hitl]:
    engine = hitl_core.connect("memory://", clock=ManualClock(start=0.0))
    yield engine
    engine.close()


def test_a_repeated_decision_says_it_found_the_decision_made(hitl: hitl_core.Hitl) -> None:
    run = approval_run(hitl)
    gate = hitl.agent(run.id).request_tool("deploy")
    rid = gate.request_id
    assert rid is not None
    first = hitl.runs.approve(run.id, request_id=rid, reason="ship it", actor="alice")
    assert first.applied is True
    second = hitl.runs.approve(run.id, request_id=rid, reason="me too", actor="bob")
    assert second.applied is False
    assert (second.request.actor, second.request.reason) == ("alice", "ship it")
    assert second.request.resolved_at == first.request.resolved_at


def test_a_repeated_answer_says_it_found_the_answer_given(hitl: hitl_core.Hitl) -> None:
    from hitl_core.testing.helpers import QUESTION

    run = hitl.runs.create(human_in_the_loop=True)
    request = hitl.agent(run.id).ask([QUESTION])
    answers = {QUESTION["question"]: "SQLite"}
    first = hitl.runs.answer(run.id, answers=answers, request_id=request.request_id, actor="a")
    again = hitl.runs.answer(run.id, answers=answers, request_id=request.request_id, actor="b")
    assert (first.applied, again.applied) == (True, False)
    assert again.request.actor == "a"


# -- wrong-typed ids are bad input, not unknown ids -------------------------------------


@pytest.mark.parametrize("bad", [5, 5.0, ["req_1"], None, b"req"])
def test_a_request_id_that_is_not_a_string_is_422(hitl: hitl_core.Hitl, bad: object) -> None:
    run = approval_run(hitl)
    with pytest.raises(ValidationError) as caught:
        hitl.runs.approve(run.id, request_id=bad)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_request" and "request_id" in caught.value.message


def test_the_run_is_still_looked_up_first(hitl: hitl_core.Hitl) -> None:
    with pytest.raises(hitl_core.NotFoundError) as caught:
        hitl.runs.approve("run_missing", request_id=5)  # type: ignore[arg-type]
    assert caught.value.code == "run_not_found"


# -- the store port's test helpers -----------------------------------------------------


def test_store_and_transaction_are_the_public_port() -> None:
    assert issubclass(MemoryStore, Store) and issubclass(MemoryStore, Transaction)


def test_a_lease_nobody_was_given_is_refused() -> None:
    # fence() compared only the token: a hand-built Lease with token 0 renewed a run
    # that was never claimed (leasing it to a worker without claim), and a lease given
    # up with release() still acted for the run, as did one naming another worker.
    hitl = hitl_core.connect("memory://")
    run = approval_run(hitl)
    forged = hitl_core.Lease(run_id=run.id, worker="evil", token=0, expires_at=0.0)
    for act in (
        lambda: hitl.runs.renew(forged),
        lambda: hitl.agent(run.id, lease=forged).request_tool("t"),
    ):
        with pytest.raises(hitl_core.ConflictError) as refused:
            act()
        assert refused.value.code == "lease_lost"
    assert hitl.runs.get(run.id).lease_worker is None
    lease = hitl.runs.claim(run.id, worker="w")
    renamed = hitl_core.Lease(run_id=run.id, worker="evil", token=lease.token, expires_at=0.0)
    with pytest.raises(hitl_core.ConflictError) as refused:
        hitl.runs.renew(renamed)
    assert refused.value.code == "lease_lost"
    assert hitl.runs.get(run.id).lease_worker == "w"
    assert hitl.runs.release(renamed) is False  # nor does another worker's name release it
    assert hitl.runs.get(run.id).lease_worker == "w"
    assert hitl.runs.release(lease) is True
    with pytest.raises(hitl_core.ConflictError) as refused:
        hitl.agent(run.id, lease=lease).request_tool("t")
    assert refused.value.code == "lease_lost"
    assert hitl.agent(run.id).request_tool("t").status == "pending"  # nobody holds it now


def test_a_bad_prune_batch_is_named_as_batch() -> None:
    hitl = hitl_core.connect("memory://")
    for batch in (0, 10_001, "5", True):
        with pytest.raises(ValidationError) as refused:
            hitl.runs.prune(before=0.0, batch=batch)  # type: ignore[arg-type]
        assert refused.value.code == "invalid_request"
        assert str(refused.value).startswith("invalid_request: batch must be"), str(refused.value)


class _Reads:
    """A clock whose readings are given."""

    def __init__(self, value: object) -> None:
        self.value = value

    def now(self) -> object:
        return self.value


@pytest.mark.parametrize("reading", [float("nan"), float("inf"), None, "1000", True, 10**400])
def test_a_clock_reading_that_is_not_seconds_is_refused(reading: object) -> None:
    # Readings were never checked: a NaN clock stored created_at=nan and a wait on it
    # never returned; None gave a bare AssertionError or TypeError; a string was stored.
    hitl = hitl_core.connect("memory://", clock=_Reads(reading))  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as refused:
        hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    assert refused.value.code == "invalid_config"
    with pytest.raises(ValidationError):
        hitl.runs.list()
    hitl.close()


def test_an_ids_source_is_checked() -> None:
    with pytest.raises(ValidationError) as refused:
        hitl_core.connect("memory://", ids=5)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_config"
    for made in (5, "", None):
        hitl = hitl_core.connect("memory://", ids=lambda prefix, made=made: made)  # type: ignore[misc]
        with pytest.raises(ValidationError) as refused:
            hitl.runs.create()
        assert refused.value.code == "invalid_config"
        assert hitl.runs.list().data == []  # nothing was stored
