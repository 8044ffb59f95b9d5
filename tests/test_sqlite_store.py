"""The SQLite store on real files: URLs, reopening, exact round trips, foreign files left
untouched, unusable directories, busy files, and step-by-step agreement with memory."""

from __future__ import annotations

import hashlib
import os
import random
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import hitl_sqlite
import pytest
from hitl_memory import MemoryStore
from hitl_sqlite import _store as sqlite_store

import hitl_core
from hitl_core import HitlError, ManualClock, StoreError, ValidationError
from hitl_core._records import (
    Event,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)
from hitl_core.testing.helpers import QUESTION, counter_ids, snapshot

USERS = (None, "cust_1", "cust_2")


def url(path: Path | str, query: str = "") -> str:
    return "sqlite:///" + str(path) + query


def open_hitl(path: Path, start: float = 0.0, **options: Any) -> hitl_core.Hitl:
    return hitl_core.connect(url(path), clock=ManualClock(start=start), **options)


def fingerprint(path: Path) -> tuple[str, bool, bool]:
    """The file's hash and whether its -wal and -shm siblings exist."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, Path(f"{path}-wal").exists(), Path(f"{path}-shm").exists()


# -- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?synchronous=OFF",
        "sqlite:///x.db?synchronous=",
        "sqlite:///x.db?journal_mode=delete",
        "sqlite:///x.db?synchronous",
        "postgresql:///x.db",
    ],
)
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        hitl_sqlite.open_store(bad)
    assert caught.value.code == "invalid_url" and bad in str(caught.value)


def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with hitl_core.connect("sqlite:///rel.db") as hitl:
        hitl.runs.create()
    assert (tmp_path / "rel.db").exists()
    absolute = tmp_path / "sub" / "abs.db"
    absolute.parent.mkdir()
    assert url(absolute).startswith("sqlite:////")
    with hitl_core.connect(url(absolute)) as hitl:
        hitl.runs.create()
    assert absolute.exists()


@pytest.mark.parametrize(
    ("query", "level"), [("", 2), ("?synchronous=NORMAL", 1), ("?synchronous=full", 2)]
)
def test_file_is_wal_with_chosen_synchronous(tmp_path: Path, query: str, level: int) -> None:
    store = hitl_sqlite.open_store(url(tmp_path / "h.db", query))
    try:
        db = store._session().db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        store.close()
        store.close()  # twice is fine
    with pytest.raises(StoreError) as caught, store.transaction(write=False):
        pass
    assert caught.value.code == "store_closed"


def test_memory_url_is_shared_by_threads_and_fresh_per_connect() -> None:
    import threading

    with hitl_core.connect("sqlite:///:memory:") as hitl:
        created: list[str] = []

        def work() -> None:
            for _ in range(20):
                created.append(hitl.runs.create().id)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        listed = hitl.runs.list(limit=100).data
        assert sorted(run.id for run in listed) == sorted(created)
        assert len(created) == 80
    with hitl_core.connect("sqlite:///:memory:") as other:
        assert other.runs.list().data == []


# -- reopening ----------------------------------------------------------------------------


def build_history(hitl: hitl_core.Hitl, clock: ManualClock) -> dict[str, Any]:
    """A store with something of everything: every request status, decisions with
    reasons and actors, remembered tools, policies (one deleted), tasks, every run end."""
    runs = hitl.runs
    made: dict[str, Any] = {}
    plain = runs.create(metadata={})
    made["plain"] = plain.id
    hitl.agent(plain.id).complete(output={"n": 1, "ratio": 0.1, "items": [True, None, "é"]})

    busy = runs.create(
        human_in_the_loop=True, permission_mode="approval", user_id="cust_1", input_timeout=30
    )
    agent = hitl.agent(busy.id)
    allowed = agent.request_tool("gmail.send", {"to": "a@b.c", "n": 2})
    denied = agent.request_tool("shell.exec", {"cmd": "rm -rf /"})
    assert allowed.request_id is not None and denied.request_id is not None
    clock.advance(2.5)
    runs.approve(busy.id, request_id=allowed.request_id, remember=True, actor="ana", reason="ok")
    runs.approve(busy.id, request_id=denied.request_id, decision="deny", reason="no", remember=True)
    question = agent.ask([QUESTION])
    clock.advance(1)
    runs.answer(busy.id, answers={QUESTION["question"]: "SQLite"}, actor="bo")
    agent.request_tool("db.query", {})  # stays pending
    agent.ask([QUESTION])  # stays pending
    made["busy"] = busy.id
    made["question"] = question.request_id

    planned = runs.create(human_in_the_loop=True, permission_mode="plan")
    planner = hitl.agent(planned.id)
    first = planner.propose_plan("1. read\n2. write")
    runs.answer(planned.id, answers={"Plan Approval": "add tests"}, request_id=first.request_id)
    planner.propose_plan("1. read\n2. test\n3. write")
    runs.answer(planned.id, answers={"Plan Approval": " approve "})
    planner.request_tool("files.write", {"path": "x"})
    runs.update_permission_mode(planned.id, permission_mode="autonomous")
    made["planned"] = planned.id

    cancelled = runs.create(human_in_the_loop=True, permission_mode="approval", user_id="cust_2")
    hitl.agent(cancelled.id).request_tool("x.y")
    runs.cancel(cancelled.id)
    failed = runs.create(human_in_the_loop=True, permission_mode="approval")
    hitl.agent(failed.id).request_tool("x.y")
    hitl.agent(failed.id).fail(RuntimeError("boom"))

    hitl.permissions.create(tool="slack.*", user_id="cust_1")
    hitl.permissions.create(tool="db.query")
    gone = hitl.permissions.create(tool="temp.tool", user_id="cust_2")
    hitl.permissions.delete(gone.id, user_id="cust_2")
    task = hitl.tasks.create(name="nightly", human_in_the_loop=True, permission_mode="approval")
    bare = hitl.tasks.create(name="bare")
    made["tasks"] = [task.id, bare.id]
    from_task = hitl.tasks.run(task.id, user_id="cust_1", metadata={"a": {"b": [1.5, -0.25]}})
    made["from_task"] = from_task.id
    return made


def full_state(hitl: hitl_core.Hitl, made: dict[str, Any]) -> Any:
    tasks = [hitl.tasks.get(task_id) for task_id in made["tasks"]]
    return snapshot(hitl, USERS), tasks


def test_close_and_reopen_gives_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    clock = ManualClock(start=100.0)
    hitl = hitl_core.connect(url(path), clock=clock)
    made = build_history(hitl, clock)
    before = full_state(hitl, made)
    hitl.close()
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed the log

    with hitl_core.connect(url(path), clock=ManualClock(start=clock.now())) as again:
        after = full_state(again, made)
        assert after == before
        requests = after[0][1]
        statuses = {r.status.value for reqs in requests.values() for r in reqs}
        assert statuses == {"pending", "answered", "allowed", "denied", "cancelled"}
        busy = again.runs.get(made["busy"])
        assert busy.remembered_allow == {"gmail.send"} and busy.remembered_deny == {"shell.exec"}
        assert again.runs.get(made["plain"]).metadata == {}
        assert again.runs.get(made["planned"]).metadata is None
        answered = again.agent(made["busy"]).result(made["question"])
        assert answered.answers == {QUESTION["question"]: "SQLite"} and answered.actor == "bo"
        assert [p.tool_name for p in again.permissions.list(user_id="cust_1").data] == [
            "gmail.send",
            "slack.*",
        ]
        assert again.permissions.list(user_id="cust_2").data == []
        # a remembered allow and a pattern policy still decide after the reopen
        run = again.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_1"
        )
        assert again.agent(run.id).request_tool("gmail.send").source == "remembered"
        assert again.agent(run.id).request_tool("slack.post").source == "policy"
        assert again.tasks.get(made["tasks"][1]).human_in_the_loop is None


def test_pending_deadline_keeps_counting_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with open_hitl(path, start=0.0) as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval", input_timeout=75)
        gate = hitl.agent(run.id).request_tool("gmail.send")
    assert gate.request_id is not None
    with open_hitl(path, start=80.0) as hitl:
        assert hitl.runs.get(run.id).suspended is True
        suspended = [e for e in hitl.events.list(run_id=run.id) if e.type == "run.suspended"]
        assert [e.created_at for e in suspended] == [75.0]
        result = hitl.runs.approve(run.id, request_id=gate.request_id)
        assert result.resumed is True
    with open_hitl(path, start=200.0) as hitl:
        assert hitl.runs.get(run.id).status == "running"
        assert hitl.tick() == []


def odd_records() -> tuple[Run, PermissionRequest, PermissionPolicy, Task, Event]:
    run = Run(
        id="run_odd",
        status="awaiting_approval",
        human_in_the_loop=True,
        permission_mode="approval",
        user_id="ü\x00ser",
        task_id="task_x",
        metadata={"f": 0.1, "big": 2**70, "neg": -1e-300, "n": None, "e": {}, "l": [[]]},
        input_timeout=0.001,
        suspended=True,
        created_at=1e18,
        updated_at=1.0000000000000002e18,
        plan_approved=True,
        plan_revisions=3,
        remembered_allow=frozenset({"b", "a", "ç"}),
        remembered_deny=frozenset({"z"}),
        deadline=123.456,
        output=["x", 1, 2.5, False, {"k": '\U0001f600 \\ " \n\x00'}],
        error="bad",
        version=7,
    )
    request = PermissionRequest(
        request_id="req_odd",
        run_id="run_odd",
        kind="question",
        tool_name="AskUserQuestion",
        tool_input={"questions": [{"question": "q?", "options": []}], "x": 1.5},
        status="answered",
        created_at=0.5,
        resolved_at=0.75,
        answers={"q?": ["a", "b"]},
        decision="answer",
        reason="",
        remember=True,
        actor="",
        source="human",
    )
    policy = PermissionPolicy(
        id="pol_odd", user_id=None, tool_name="a[bc]?.*", source="api", created_at=3.25
    )
    task = Task(
        id="task_odd",
        name="t",
        human_in_the_loop=False,
        permission_mode=None,
        user_id=None,
        created_at=9.0,
    )
    event = Event(id="evt_odd", type="run.started", run_id="run_odd", created_at=2.0, data={})
    return run, request, policy, task, event


def test_records_round_trip_exactly_through_the_port(tmp_path: Path) -> None:
    target = url(tmp_path / "h.db")
    run, request, policy, task, event = odd_records()
    empty = Run(
        id="run_empty",
        status="running",
        human_in_the_loop=False,
        permission_mode="autonomous",
        user_id=None,
        task_id=None,
        metadata=None,
        input_timeout=75.0,
        created_at=0.0,
        updated_at=0.0,
    )
    store = hitl_sqlite.open_store(target)
    with store.transaction(write=True) as tx:
        tx.insert_run(run)
        tx.insert_run(empty)
        tx.save_requests([request])
        tx.insert_policy(policy)
        tx.insert_task(task)
        tx.append_events([event])
    store.close()
    store = hitl_sqlite.open_store(target)
    try:
        with store.transaction(write=False) as tx:
            got = tx.get_run("run_odd")
            assert got == run and got is not None
            assert got.metadata == run.metadata and got.output == run.output
            assert type(got.suspended) is bool and type(got.plan_approved) is bool
            assert type(got.input_timeout) is float and type(got.version) is int
            assert tx.get_run("run_empty") == empty
            assert tx.get_run("run_empty").metadata is None  # type: ignore[union-attr]
            got_request = tx.get_request("req_odd")
            assert got_request == request and got_request is not None
            assert got_request.answers == {"q?": ["a", "b"]} and got_request.remember is True
            assert tx.get_policy("pol_odd") == policy
            assert tx.get_task("task_odd") == task
            assert tx.list_events(after=None, run_id=None, limit=10) == [event]
            assert tx.get_run("\ud800") is None  # not encodable: simply not there
            assert tx.list_requests("\ud800") == []
    finally:
        store.close()


def test_unencodable_text_is_refused_and_rolled_back(tmp_path: Path) -> None:
    with open_hitl(tmp_path / "h.db") as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        before = snapshot(hitl)
        with pytest.raises(ValidationError):
            hitl.agent(run.id).request_tool("bad\ud800name")
        assert snapshot(hitl) == before
        with pytest.raises(ValidationError):
            hitl.runs.create(metadata={"pair": "\ud83d\ude00"})
        assert snapshot(hitl) == before
        with pytest.raises(hitl_core.NotFoundError):
            hitl.runs.get("run_\udfff")


# -- the port, directly -------------------------------------------------------------------


def new_run(run_id: str, **changes: Any) -> Run:
    fields: dict[str, Any] = {
        "id": run_id,
        "status": "running",
        "human_in_the_loop": True,
        "permission_mode": "approval",
        "user_id": None,
        "task_id": None,
        "metadata": None,
        "input_timeout": 75.0,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    fields.update(changes)
    return Run(**fields)


def test_update_run_is_compare_and_set(tmp_path: Path) -> None:
    target = url(tmp_path / "h.db")
    first, second = hitl_sqlite.open_store(target), hitl_sqlite.open_store(target)
    try:
        with first.transaction(write=True) as tx:
            tx.insert_run(new_run("run_a"))
        with first.transaction(write=False) as tx:
            seen_by_first = tx.get_run("run_a")
        with second.transaction(write=False) as tx:
            seen_by_second = tx.get_run("run_a")
        assert seen_by_first is not None and seen_by_second is not None
        with first.transaction(write=True) as tx:
            tx.update_run(attrs.evolve(seen_by_first, version=2, error="first"))
        with pytest.raises(hitl_core.ConflictError) as caught, second.transaction(write=True) as tx:
            tx.update_run(attrs.evolve(seen_by_second, version=2, error="second"))
        assert caught.value.code == "concurrent_update"
        with pytest.raises(hitl_core.ConflictError), second.transaction(write=True) as tx:
            tx.update_run(new_run("run_missing", version=2))
        with second.transaction(write=False) as tx:
            assert tx.get_run("run_a") == attrs.evolve(seen_by_first, version=2, error="first")
    finally:
        first.close()
        second.close()


def test_a_raising_transaction_leaves_nothing_and_transactions_do_not_nest(
    tmp_path: Path,
) -> None:
    store = hitl_sqlite.open_store(url(tmp_path / "h.db"))
    try:
        with pytest.raises(KeyError), store.transaction(write=True) as tx:
            tx.insert_run(new_run("run_a"))
            raise KeyError("boom")
        with pytest.raises(StoreError) as caught, store.transaction(write=True) as tx:
            tx.insert_run(new_run("run_b"))
            with store.transaction(write=False):
                pass
        assert caught.value.code == "store_nested"
        with store.transaction(write=True) as tx:
            tx.insert_run(new_run("run_c"))
        with store.transaction(write=False) as tx:
            found = tx.list_runs(user_id=None, status=None, limit=10, starting_after=None)
            assert found is not None
            assert [run.id for run in found[0]] == ["run_c"]
    finally:
        store.close()


def test_sqlite_errors_become_store_errors(tmp_path: Path) -> None:
    store = hitl_sqlite.open_store(url(tmp_path / "h.db"))
    try:
        with pytest.raises(HitlError) as caught, store.transaction(write=True) as tx:
            tx.insert_run(new_run("run_a"))
            tx.insert_run(new_run("run_a"))  # the id is UNIQUE
        assert isinstance(caught.value, StoreError) and caught.value.code == "store_constraint"
        assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
        with store.transaction(write=False) as tx:
            assert tx.get_run("run_a") is None
    finally:
        store.close()


def test_due_runs_break_ties_like_the_memory_store(tmp_path: Path) -> None:
    """Equal deadlines come out in the order the runs were created, however they were set."""
    stores = [MemoryStore(), hitl_sqlite.open_store(url(tmp_path / "h.db"))]
    answers = []
    for store in stores:
        with store.transaction(write=True) as tx:
            for name in "abcde":
                tx.insert_run(new_run(f"run_{name}", deadline=40.0 if name == "e" else None))
        for name in "dbca":
            with store.transaction(write=True) as tx:
                run = tx.get_run(f"run_{name}")
                assert run is not None
                tx.update_run(attrs.evolve(run, version=run.version + 1, deadline=50.0))
        with store.transaction(write=True) as tx:  # touching a run does not move it
            run = tx.get_run("run_d")
            assert run is not None
            tx.update_run(attrs.evolve(run, version=run.version + 1, error="x"))
        with store.transaction(write=False) as tx:
            answers.append(
                (
                    [run.id for run in tx.due_runs(50.0, 10)],
                    [run.id for run in tx.due_runs(50.0, 2)],
                    [run.id for run in tx.due_runs(49.9, 10)],
                )
            )
        store.close()
    assert answers[0] == answers[1]
    assert answers[1][0] == ["run_e", "run_a", "run_b", "run_c", "run_d"]


# -- files that are not ours ----------------------------------------------------------------


def make_text(path: Path) -> None:
    path.write_text("this is a shopping list\nmilk\neggs\n" * 20)


def make_random(path: Path) -> None:
    path.write_bytes(b"\x01" + random.Random(7).randbytes(8191))


def make_fake_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(8).randbytes(4080))


def make_foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (id TEXT, laps INTEGER)")
    db.execute("INSERT INTO runs VALUES ('morning', 3)")
    db.commit()
    db.close()


def make_foreign_wal(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE notes (body TEXT)")
    db.commit()
    db.close()


def make_too_new(path: Path) -> None:
    with hitl_core.connect(url(path)) as hitl:
        hitl.runs.create()
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE hitl_meta SET value = ? WHERE key = 'schema_version'",
        (str(hitl_sqlite.SCHEMA_VERSION + 1),),
    )
    db.commit()
    db.close()


def make_bad_version(path: Path) -> None:
    make_too_new(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE hitl_meta SET value = 'one' WHERE key = 'schema_version'")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (make_text, "not_a_database", "not an SQLite database"),
        (make_random, "not_a_database", "not an SQLite database"),
        (make_fake_header, "not_a_database", "cannot be read"),
        (make_foreign, "foreign_database", "another application"),
        (make_foreign_wal, "foreign_database", "another application"),
        (make_too_new, "schema_too_new", "upgrade hitl-core"),
        (make_bad_version, "foreign_database", "no valid schema version"),
    ],
)
def test_files_that_are_not_ours_are_refused_untouched(
    tmp_path: Path, make: Callable[[Path], None], code: str, words: str
) -> None:
    path = tmp_path / "data.db"
    make(path)
    before = fingerprint(path)
    for attempt in range(2):
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(url(path))
        assert caught.value.code == code, caught.value
        assert words in caught.value.message and str(path) in caught.value.message
        assert fingerprint(path) == before, f"attempt {attempt} changed the file"


def test_too_new_database_in_use_by_another_process_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_too_new(path)
    holder = sqlite3.connect(path)  # keeps -wal and -shm in place, as a live user would
    holder.execute("SELECT count(*) FROM runs").fetchone()
    try:
        digest = fingerprint(path)[0]
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(url(path))
        assert caught.value.code == "schema_too_new"
        assert fingerprint(path)[0] == digest
    finally:
        holder.close()


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with open_hitl(path) as hitl:
        run = hitl.runs.create()
    with open_hitl(path) as hitl:
        assert hitl.runs.get(run.id) == run


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "h.db"
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(url(path))
    assert caught.value.code == "store_unavailable"
    assert "does not exist" in caught.value.message
    assert not (tmp_path / "no").exists()


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(url(tmp_path))
    assert caught.value.code == "store_unavailable" and "is a directory" in caught.value.message


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores directory permissions, so chmod cannot make a directory unwritable; "
    "test_directory_nobody_can_write covers the same refusal",
)
def test_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(url(locked / "h.db"))
        assert caught.value.code == "store_unavailable" and "not writable" in caught.value.message
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux procfs")
def test_directory_nobody_can_write() -> None:
    """/proc refuses new files even to root: the honest unwritable directory here."""
    path = Path("/proc/hitl-core-test.db")
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(url(path))
    assert caught.value.code == "store_unavailable" and str(path) in caught.value.message
    assert not path.exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores directory permissions, so the -wal/-shm files could still be made",
)
def test_existing_store_in_a_read_only_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with open_hitl(folder / "h.db") as hitl:
        hitl.runs.create()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError) as caught:
            open_hitl(folder / "h.db")
        assert caught.value.code in ("store_unavailable", "store_read_only")
    finally:
        folder.chmod(0o755)


# -- a busy file ----------------------------------------------------------------------------


def test_busy_file_gives_store_busy_and_reads_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT", 0.02)
    monkeypatch.setattr(sqlite_store, "BUSY_ATTEMPTS", 3)
    path = tmp_path / "h.db"
    with open_hitl(path) as hitl:
        run = hitl.runs.create()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file
        try:
            with pytest.raises(StoreError) as caught:
                hitl.runs.create()
            assert caught.value.code == "store_busy"
            assert hitl.runs.get(run.id) == run  # WAL: readers are not blocked by a writer
        finally:
            other.execute("ROLLBACK")
            other.close()
        hitl.runs.create()  # and writing works again once the lock is gone
        assert len(hitl.runs.list().data) == 2


# -- agreement with the memory store ------------------------------------------------------


class LockStep:
    """The same program driven through a memory engine and an SQLite engine at once."""

    def __init__(self, sqlite_url: str) -> None:
        self.clocks = [ManualClock(start=0.0), ManualClock(start=0.0)]
        self.engines = []
        for target, clock in zip(["memory://", sqlite_url], self.clocks, strict=True):
            self.engines.append(hitl_core.connect(target, clock=clock, ids=counter_ids()))

    def do(self, call: Callable[[hitl_core.Hitl], Any]) -> Any:
        outcomes: list[tuple[Any, ...]] = []
        for engine in self.engines:
            try:
                outcomes.append(("ok", call(engine)))
            except HitlError as error:
                outcomes.append(("error", type(error).__name__, error.code))
        assert outcomes[0] == outcomes[1]
        return outcomes[0]

    def call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        """Call e.g. "runs.approve" on both engines with the same arguments."""

        def invoke(engine: hitl_core.Hitl) -> Any:
            found: Any = engine
            for part in target.split("."):
                found = getattr(found, part)
            return found(*args, **kwargs)

        return self.do(invoke)

    def agent(self, run_id: str, method: str, *args: Any) -> Any:
        """Call an agent-side method of run `run_id` on both engines."""
        return self.do(lambda engine: getattr(engine.agent(run_id), method)(*args))

    def advance(self, seconds: float) -> None:
        for clock in self.clocks:
            clock.advance(seconds)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


# how often each action of random_program is drawn (ending a run is rare)
WEIGHTS = (2, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1, 0.4, 1, 0.5, 1, 1)


def random_program(step: LockStep, rng: random.Random, steps: int) -> None:
    runs: list[str] = []
    tools: list[tuple[str, str]] = []
    asks: list[tuple[str, str, str]] = []
    policies: list[tuple[str, str | None]] = []
    names = ["gmail.send", "slack.post", "slack.read", "db.query"]
    for _ in range(steps):
        action = rng.choices(range(16), weights=WEIGHTS)[0]
        run_id = rng.choice(runs) if runs else "run_none"
        if action == 0 or not runs:
            out = step.call(
                "runs.create",
                human_in_the_loop=rng.random() < 0.9,
                permission_mode=rng.choice(["autonomous", "approval", "approval", "plan"]),
                user_id=rng.choice(USERS),
                input_timeout=rng.choice([5.0, 30.0]),  # equal deadlines happen: both
                # stores suspend them in run creation order
            )
            if out[0] == "ok":
                runs.append(out[1].id)
        elif action in (1, 2):
            out = step.agent(run_id, "request_tool", rng.choice(names), {"k": 1})
            if out[0] == "ok" and out[1].request_id:
                tools.append((run_id, out[1].request_id))
        elif action == 3:
            out = step.agent(run_id, "ask", [QUESTION])
            if out[0] == "ok":
                asks.append((run_id, out[1].request_id, "question"))
        elif action == 4:
            out = step.agent(run_id, "propose_plan", "do it")
            if out[0] == "ok":
                asks.append((run_id, out[1].request_id, "plan"))
        elif action in (5, 6) and tools:
            rid, req = rng.choice(tools)
            step.call(
                "runs.approve",
                rid,
                request_id=req,
                decision=rng.choice(["allow", "allow", "deny"]),
                remember=rng.random() < 0.3,
            )
        elif action == 7 and asks:
            rid, req, kind = rng.choice(asks)
            if kind == "plan":
                answers = {"Plan Approval": rng.choice(["Approve", "more detail"])}
            else:
                answers = {QUESTION["question"]: rng.choice(["SQLite", "Postgres", "other"])}
            step.call("runs.answer", rid, answers=answers, request_id=req)
        elif action == 8:
            step.advance(rng.choice([0.5, 3.0, 10.0, 40.0]))
        elif action == 9:
            step.call("tick")
        elif action == 10:
            mode = rng.choice(["autonomous", "approval", "plan"])
            step.call("runs.update_permission_mode", run_id, permission_mode=mode)
        elif action == 11:
            end = rng.choice(["cancel", "complete", "fail"])
            if end == "cancel":
                step.call("runs.cancel", run_id)
            else:
                step.agent(run_id, end, {"ok": True} if end == "complete" else "broken")
        elif action == 12:
            user = rng.choice(USERS)
            tool = rng.choice([*names, "slack.*", "*.send"])
            out = step.call("permissions.create", tool=tool, user_id=user)
            if out[0] == "ok":
                policies.append((out[1].id, user))
        elif action == 13 and policies:
            pid, user = policies.pop(rng.randrange(len(policies)))
            step.call("permissions.delete", pid, user_id=user)
        elif action == 14:
            step.call(
                "runs.list",
                user_id=rng.choice(USERS),
                status=rng.choice([None, "running", "awaiting_approval", "cancelled"]),
                limit=3,
                starting_after=rng.choice([None, *runs[:3]]),
            )
        else:
            step.call("events.list", after=None, run_id=run_id, limit=5)
            step.call("runs.permissions", run_id)
    step.do(lambda engine: snapshot(engine, USERS))


@pytest.fixture
def lockstep(tmp_path: Path) -> Iterator[LockStep]:
    step = LockStep(url(tmp_path / "h.db", "?synchronous=NORMAL"))
    yield step
    step.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_agrees_with_the_memory_store_step_by_step(lockstep: LockStep, seed: int) -> None:
    random_program(lockstep, random.Random(seed), 250)


def test_equal_deadlines_suspend_in_the_same_order_as_memory(lockstep: LockStep) -> None:
    first = lockstep.do(lambda h: h.runs.create(human_in_the_loop=True, permission_mode="approval"))
    second = lockstep.do(
        lambda h: h.runs.create(human_in_the_loop=True, permission_mode="approval")
    )
    lockstep.do(lambda h: h.agent(second[1].id).request_tool("a"))  # the later run waits first
    lockstep.do(lambda h: h.agent(first[1].id).request_tool("a"))
    lockstep.advance(100)
    out = lockstep.do(lambda h: h.tick())
    # equal deadlines (no time passed between the requests) suspend in run creation order
    assert [e.run_id for e in out[1]] == [first[1].id, second[1].id]


def test_a_refused_call_after_a_deadline_agrees_with_memory(lockstep: LockStep) -> None:
    """A refused call rolls back the suspension it applied first; the deadline stays."""
    run = lockstep.call("runs.create", human_in_the_loop=True, permission_mode="approval")[1]
    lockstep.agent(run.id, "request_tool", "a")
    lockstep.advance(100)
    lockstep.call("runs.approve", run.id, request_id="req_unknown")  # refused: rolled back
    lockstep.call("runs.get", run.id)  # SQLite: suspended now (the deadline was kept)


def test_webhook_records_round_trip_and_agree_with_memory(tmp_path: Path) -> None:
    endpoints = [
        WebhookEndpoint(
            id=f"whk_{n}",
            url=f"https://example.test/{n}",
            events=("run.awaiting_input", "run.completed"),
            secret=f"whsec_{n}",
            active=n != 1,
            created_at=float(n),
            updated_at=float(n),
        )
        for n in range(2)
    ]

    def delivery(n: int, endpoint: int, status: str, retry: float | None) -> WebhookDelivery:
        return WebhookDelivery(
            id=f"dlv_{n}",
            endpoint_id=f"whk_{endpoint}",
            event_id=f"evt_{n}",
            event_type="run.completed",
            run_id="run_x",
            payload='{"a": 1}',
            status=status,
            attempts=n % 3,
            response_status_code=500 if n % 2 else None,
            response_body="oops" if n % 2 else None,
            error=None,
            next_retry_at=retry,
            created_at=1.0,
            updated_at=2.0,
        )

    deliveries = [
        delivery(0, 0, "pending", 5.0),
        delivery(1, 0, "delivered", None),
        delivery(2, 1, "pending", None),
        delivery(3, 0, "pending", 5.0),
        delivery(4, 0, "failed", None),
        delivery(5, 0, "pending", 1.0),
    ]
    target = url(tmp_path / "h.db")
    writer = hitl_sqlite.open_store(target)
    memory = MemoryStore()
    for store in (writer, memory):
        with store.transaction(write=True) as tx:
            for endpoint in endpoints:
                tx.insert_endpoint(endpoint)
            tx.save_deliveries(deliveries)
            tx.set_cursor("webhooks", "evt_1")
            tx.set_cursor("webhooks", "evt_2")
            tx.update_endpoint(attrs.evolve(endpoints[1], active=True, updated_at=9.0))
    writer.close()
    reopened = hitl_sqlite.open_store(target)

    def look(store: Any) -> Any:
        with store.transaction(write=False) as tx:
            return (
                tx.get_cursor("webhooks"),
                tx.get_cursor("other"),
                tx.list_endpoints(limit=1, starting_after=None),
                tx.list_endpoints(limit=5, starting_after="whk_0"),
                tx.list_endpoints(limit=5, starting_after="whk_none"),
                [tx.get_delivery(d.id) for d in deliveries],
                [d.id for d in tx.due_deliveries(5.0, 10)],
                [d.id for d in tx.due_deliveries(0.5, 10)],
                tx.list_deliveries("whk_0", status=None, limit=2, starting_after=None),
                tx.list_deliveries("whk_0", status="pending", limit=5, starting_after="dlv_1"),
                tx.list_deliveries("whk_1", status=None, limit=5, starting_after="dlv_0"),
            )

    try:
        seen = look(reopened)
        assert seen == look(memory)
        assert seen[5] == deliveries
        assert seen[6] == ["dlv_2", "dlv_5", "dlv_0", "dlv_3"]
        for store in (reopened, memory):
            with store.transaction(write=True) as tx:
                tx.delete_endpoint("whk_0")
            with store.transaction(write=False) as tx:
                assert tx.get_endpoint("whk_0") is None and tx.get_delivery("dlv_0") is None
                assert [d.id for d in tx.due_deliveries(99.0, 10)] == ["dlv_2"]
    finally:
        reopened.close()


# -- schema upgrades -------------------------------------------------------------------


def _version_1_file(path: Path) -> None:
    """A database as hitl-core 0.1 wrote it: schema version 1, one paused run."""
    from hitl_sqlite._schema import APPLICATION, SCHEMA_V1

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN")
    for statement in SCHEMA_V1:
        db.execute(statement)
    db.executemany(
        "INSERT INTO hitl_meta (key, value) VALUES (?, ?)",
        [("application", APPLICATION), ("schema_version", "1")],
    )
    db.execute(
        "INSERT INTO runs (id, status, human_in_the_loop, permission_mode, user_id, task_id, "
        "metadata, input_timeout, suspended, created_at, updated_at, plan_approved, "
        "plan_revisions, remembered_allow, remembered_deny, deadline, output, error, version) "
        "VALUES ('run_old', 'awaiting_approval', 1, 'approval', 'u', NULL, '{\"a\":1}', 75.0, 0, "
        "10.0, 11.0, 0, 0, '[]', '[\"shell\"]', 86.0, NULL, NULL, 2)"
    )
    db.execute(
        "INSERT INTO requests (request_id, run_id, kind, tool_name, tool_input, status, "
        "created_at, remember, resumed) VALUES ('req_old', 'run_old', 'tool', 'deploy', "
        "'{\"v\":7}', 'pending', 11.0, 0, 0)"
    )
    db.execute("COMMIT")
    db.close()


def test_a_version_1_file_is_upgraded_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    hitl = hitl_core.connect(url(path), clock=ManualClock(start=20.0))
    run = hitl.runs.get("run_old")
    assert (run.status, run.user_id, run.metadata, run.remembered_deny) == (
        "awaiting_approval",
        "u",
        {"a": 1},
        frozenset({"shell"}),
    )
    assert (run.lease_token, run.lease_worker, run.checkpoint) == (0, None, None)
    result = hitl.runs.approve("run_old", request_id="req_old")
    assert result.request.tool_input == {"v": 7} and result.applied
    assert hitl.runs.claimable()[0].id == "run_old"
    hitl.close()
    db = sqlite3.connect(path)
    version = db.execute("SELECT value FROM hitl_meta WHERE key = 'schema_version'").fetchone()
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    db.close()
    assert version == (str(hitl_sqlite.SCHEMA_VERSION),)
    assert {"runs_by_status", "runs_claimable", "runs_ended"} <= indexes


UPGRADER = """
import sys, hitl_core
with hitl_core.connect(sys.argv[1]) as hitl:
    print(hitl.runs.get("run_old").status.value)
"""


def test_processes_opening_an_old_file_together_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADER, url(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert outputs == ["awaiting_approval"] * 4
    assert [process.returncode for process in processes] == [0] * 4


def test_a_version_1_file_keeps_its_events_and_requests_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO events (id, type, run_id, created_at, data) VALUES "
        "('evt_a', 'run.started', 'run_old', 10.0, '{}'), "
        "('evt_b', 'run.awaiting_input', 'run_old', 11.0, "
        '\'{"request_id":"req_old","kind":"tool","tool_name":"deploy"}\')'
    )
    db.commit()
    db.close()
    hitl = hitl_core.connect(url(path), clock=ManualClock(start=20.0))
    events = hitl.events.list(run_id="run_old")
    assert [(e.id, e.data) for e in events] == [
        ("evt_a", {}),
        ("evt_b", {"request_id": "req_old", "kind": "tool", "tool_name": "deploy"}),
    ]
    assert [r.request_id for r in hitl.runs.pending()] == ["req_old"]
    hitl.runs.approve("run_old", request_id="req_old")
    assert hitl.events.list(after="evt_b")[0].data["status"] == "allowed"
    hitl.close()


# -- the version 2 schema -----------------------------------------------------------------


def _statements() -> dict[str, str]:
    """Every SQL statement the store runs (module constants and the generated ones)."""
    from hitl_sqlite import _rows

    found = {
        name: value
        for name, value in vars(_rows).items()
        if name.isupper()
        and not name.startswith("_")  # fragments of statements
        and isinstance(value, str)
        and value.split()[0] in ("SELECT", "INSERT", "UPDATE", "DELETE")
    }
    found.update({f"LIST_RUNS{key}": sql for key, sql in _rows.LIST_RUNS.items()})
    found["update_run"] = _rows.update_run(("status", "updated_at", "deadline", "version"))
    found["update_request"] = _rows.update_request(("status", "resolved_at", "decision"))
    found["pattern_policies"] = _rows.pattern_policies(3)
    found.update({f"delete_runs{n}": sql for n, sql in enumerate(_rows.delete_runs(2))})
    return found


def _plan(db: sqlite3.Connection, sql: str) -> tuple[str, list[str]]:
    """The query plan's text and the program's opcodes of a statement."""
    numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
    params = [None] * (max(numbered) if numbered else sql.count("?"))
    plan = " | ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
    return plan, [str(row[1]) for row in db.execute("EXPLAIN " + sql, params)]


def test_every_index_is_read_by_a_statement_and_no_write_builds_a_temporary_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    hitl_core.connect(url(path)).close()
    db = sqlite3.connect(path)
    indexes = {
        name
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        if not name.startswith("sqlite_autoindex")  # the UNIQUE constraints themselves
    }
    used = set()
    for name, sql in _statements().items():
        plan, opcodes = _plan(db, sql)
        used |= {index for index in indexes if re.search(rf"\b{index}\b", plan)}
        if sql.startswith(("INSERT", "UPDATE")):
            assert "OpenEphemeral" not in opcodes, f"{name} builds a temporary table"
    db.close()
    # every index answers a query (the flat reads of docs/sqlite-store.md); the unique
    # one on (scope, tool_name) also keeps one policy per scope and tool
    assert indexes == used | {"policies_by_scope_tool"}, indexes - used


def test_requests_and_events_need_a_stored_run(tmp_path: Path) -> None:
    store = hitl_sqlite.open_store(url(tmp_path / "h.db"))
    request = PermissionRequest(
        request_id="req_lost",
        run_id="run_missing",
        kind="tool",
        tool_name="t",
        tool_input={},
        status=RequestStatus.PENDING,
        created_at=1.0,
    )
    event = Event(id="evt_lost", type="run.started", run_id="run_missing", created_at=1.0)
    try:
        for write in (lambda tx: tx.save_requests([request]), lambda tx: tx.append_events([event])):
            with pytest.raises(StoreError) as caught, store.transaction(write=True) as tx:
                write(tx)
            assert caught.value.code == "store_constraint"
        with store.transaction(write=False) as tx:
            assert tx.get_request("req_lost") is None
            assert tx.list_events(after=None, run_id=None, limit=10) == []
    finally:
        store.close()


def test_a_row_changed_by_another_connection_is_read_anew(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    hitl = hitl_core.connect(url(path))
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(run.id).request_tool("deploy")
    assert hitl.runs.get(run.id).error is None  # decoded, and kept with its row
    db = sqlite3.connect(path)  # another writer changes the row, not its version
    db.execute("UPDATE runs SET error = 'set elsewhere' WHERE id = ?", (run.id,))
    db.execute("UPDATE requests SET reason = 'why' WHERE request_id = ?", (gate.request_id,))
    db.commit()
    db.close()
    assert hitl.runs.get(run.id).error == "set elsewhere"
    assert hitl.agent(run.id).result(gate.request_id).reason == "why"  # type: ignore[arg-type]
    hitl.close()


def test_event_data_of_every_shape_comes_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    shapes = [
        {},
        {"human_in_the_loop": True, "permission_mode": "plan", "user_id": "u", "task_id": None},
        {"request_id": "req_1", "kind": "question", "tool_name": "AskUserQuestion"},
        {"kind": "tool", "request_id": "req_1", "tool_name": "t"},  # another key order
        {"error": "boom"},
        {"error": "boom", "more": [1, {"deep": None}]},
        {
            "request_id": "r",
            "kind": "tool",
            "status": "denied",
            "decision": "deny",
            "source": "human",
        },
    ]
    store = hitl_sqlite.open_store(url(path))
    try:
        with store.transaction(write=True) as tx:
            tx.insert_run(new_run("run_e"))
            tx.append_events(
                [
                    Event(id=f"evt_{n}", type="t", run_id="run_e", created_at=1.0, data=data)
                    for n, data in enumerate(shapes)
                ]
            )
        with store.transaction(write=False) as tx:
            events = tx.list_events(after=None, run_id="run_e", limit=20)
            assert events is not None
            assert [e.data for e in events] == shapes
            assert [list(e.data) for e in events] == [list(data) for data in shapes]
    finally:
        store.close()
