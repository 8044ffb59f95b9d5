"""The SQLite store under concurrency and crashes (SPEC 12): threads and processes deciding
one request at once, several writers, a writer killed mid-stream, eight busy threads."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_together

import hitl_core
from hitl_core import HitlError, ManualClock, NotFoundError
from hitl_core.testing.helpers import QUESTION

STATUS = {"allow": "allowed", "deny": "denied"}
OPPOSITE = {"allow": "deny", "deny": "allow"}
# (first contender's decision, second contender's decision) for each round
ROUNDS = [("allow", "deny"), ("deny", "allow"), ("allow", "allow"), ("deny", "deny")] * 2


def url(path: Path) -> str:
    return "sqlite:///" + str(path)


def open_hitl(path: Path) -> hitl_core.Hitl:
    return hitl_core.connect(url(path), clock=ManualClock(start=0.0))


def open_gate(hitl: hitl_core.Hitl) -> tuple[str, str]:
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(run.id).request_tool("deploy.prod", {"version": 7})
    assert gate.request_id is not None
    return run.id, gate.request_id


def decide(hitl: hitl_core.Hitl, run_id: str, request_id: str, decision: str) -> str | None:
    """Approve or deny; None when accepted, else the error code."""
    try:
        result = hitl.runs.approve(run_id, request_id=request_id, decision=decision)
    except HitlError as error:
        return error.code
    assert result.request.status == STATUS[decision]
    return None


def check_one_decision_applied(
    hitl: hitl_core.Hitl, run_id: str, request_id: str, outcomes: list[tuple[str, str | None]]
) -> None:
    """Exactly one decision stands; the other contender was accepted only if it asked for
    the same thing, and refused with gate_resolved_otherwise if not."""
    accepted = {decision for decision, error in outcomes if error is None}
    assert len(accepted) == 1, outcomes
    winner = accepted.pop()
    for decision, error in outcomes:
        assert error == (None if decision == winner else "gate_resolved_otherwise"), outcomes
    assert hitl.agent(run_id).result(request_id).status == STATUS[winner]
    resolved = [e for e in hitl.events.list(run_id=run_id) if e.type == "request.resolved"]
    assert [e.data["request_id"] for e in resolved] == [request_id]
    assert resolved[0].data["status"] == STATUS[winner]
    assert hitl.runs.get(run_id).status == "running"
    # afterwards: the same decision again is accepted, the opposite one is refused
    assert decide(hitl, run_id, request_id, winner) is None
    with pytest.raises(NotFoundError) as caught:
        hitl.runs.approve(run_id, request_id=request_id, decision=OPPOSITE[winner])
    assert caught.value.code == "gate_resolved_otherwise"
    assert len([e for e in hitl.events.list(run_id=run_id) if e.type == "request.resolved"]) == 1


# -- threads ------------------------------------------------------------------------------


def contend(
    barrier: threading.Barrier,
    hitl: hitl_core.Hitl,
    run_id: str,
    request_id: str,
    decision: str,
    outcomes: list[tuple[str, str | None]],
    index: int,
) -> None:
    """One contender: wait for the other, then decide at once."""
    barrier.wait()
    outcomes[index] = (decision, decide(hitl, run_id, request_id, decision))


@pytest.mark.parametrize("engines", ["one shared engine", "an engine per thread"])
def test_two_threads_decide_the_same_request_at_once(tmp_path: Path, engines: str) -> None:
    path = tmp_path / "h.db"
    main = open_hitl(path)
    contenders = [main, main] if engines == "one shared engine" else [main, open_hitl(path)]
    try:
        for decisions in ROUNDS:
            run_id, request_id = open_gate(main)
            barrier = threading.Barrier(2)
            outcomes: list[tuple[str, str | None]] = [("", None), ("", None)]
            threads = [
                threading.Thread(
                    target=contend,
                    args=(
                        barrier,
                        contenders[index],
                        run_id,
                        request_id,
                        decision,
                        outcomes,
                        index,
                    ),
                )
                for index, decision in enumerate(decisions)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            check_one_decision_applied(main, run_id, request_id, outcomes)
    finally:
        for engine in {id(e): e for e in contenders}.values():
            engine.close()


# -- processes ----------------------------------------------------------------------------

DECIDER = """
import json, os, sys, time
import hitl_core

path, decisions, gates = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
hitl = hitl_core.connect("sqlite:///" + path, clock=hitl_core.ManualClock(start=0.0))
print("ready", flush=True)
for index, decision in enumerate(decisions):
    go = os.path.join(gates, f"go-{index}")
    while not os.path.exists(go):
        time.sleep(0.0002)
    with open(go) as handle:
        run_id, request_id = handle.read().split()
    try:
        hitl.runs.approve(run_id, request_id=request_id, decision=decision)
        print(json.dumps([decision, None]), flush=True)
    except hitl_core.HitlError as error:
        print(json.dumps([decision, error.code]), flush=True)
hitl.close()
"""


class Child:
    """A python subprocess whose stdout lines arrive on a queue (never blocks forever)."""

    def __init__(self, script: str, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = 60.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError("the child process said nothing in time") from None
        if line is None:
            self.process.wait()
            assert self.process.stderr is not None
            raise AssertionError(f"the child process ended: {self.process.stderr.read()}")
        return line

    def rest(self) -> list[str]:
        """Every line still to come, once the process has ended."""
        self._reader.join(timeout=60)
        lines = []
        while (line := self.lines.get_nowait()) is not None:
            lines.append(line)
        return lines

    def finish(self) -> None:
        self.process.wait(timeout=60)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        assert self.process.returncode == 0, stderr


def decision_line(line: str) -> tuple[str, str | None]:
    decision, error = json.loads(line)
    return decision, error


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        for stream in (child.process.stdout, child.process.stderr):
            if stream is not None:
                stream.close()


def test_two_processes_decide_the_same_request_at_once(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "h.db"
    gates = tmp_path / "gates"
    gates.mkdir()
    hitl = open_hitl(path)
    try:
        for column in range(2):
            plan = ",".join(decisions[column] for decisions in ROUNDS)
            children.append(Child(DECIDER, str(path), plan, str(gates), cwd=tmp_path))
        for child in children:
            assert child.line() == "ready"
        for index, decisions in enumerate(ROUNDS):
            run_id, request_id = open_gate(hitl)
            staging = gates / f"staging-{index}"
            staging.write_text(f"{run_id} {request_id}")
            staging.replace(gates / f"go-{index}")  # both children start on this
            outcomes = [decision_line(child.line()) for child in children]
            assert [decision for decision, _ in outcomes] == list(decisions)
            check_one_decision_applied(hitl, run_id, request_id, outcomes)
        for child in children:
            child.finish()
    finally:
        hitl.close()


WRITER = """
import sys
import hitl_core

path, count = sys.argv[1], int(sys.argv[2])
hitl = hitl_core.connect("sqlite:///" + path, clock=hitl_core.ManualClock(start=0.0))
print("ready", flush=True)
sys.stdin.readline()
for index in range(count):
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval", user_id="w")
    gate = hitl.agent(run.id).request_tool("deploy", {"index": index})
    hitl.runs.approve(run.id, request_id=gate.request_id, decision="allow")
    hitl.agent(run.id).complete(output=index)
hitl.close()
print("done", flush=True)
"""


def test_three_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    open_hitl(path).close()
    count = 25
    assert [out.strip() for out in run_together(WRITER, str(path), str(count), count=3)] == [
        "done"
    ] * 3
    with open_hitl(path) as hitl:
        runs = pages(hitl)
        assert len(runs) == 3 * count
        assert all(run.status == "completed" for run in runs)
        assert sorted(run.output for run in runs) == sorted(list(range(count)) * 3)
        events = hitl.events.list(limit=1000)
        assert len(events) == 3 * count * 4  # started, awaiting_input, resolved, completed
        assert len({event.id for event in events}) == len(events)


OPENER = """
import sys
import hitl_core

print("ready", flush=True)
sys.stdin.readline()
with hitl_core.connect("sqlite:///" + sys.argv[1]) as hitl:
    hitl.runs.create()
print("done", flush=True)
"""


def test_processes_creating_one_new_file_at_once(tmp_path: Path) -> None:
    for attempt in range(2):
        path = tmp_path / f"new-{attempt}.db"
        outputs = run_together(OPENER, str(path), count=4)
        assert [out.strip() for out in outputs] == ["done"] * 4
        with open_hitl(path) as hitl:
            assert len(hitl.runs.list().data) == 4


def pages(hitl: hitl_core.Hitl) -> list[hitl_core.Run]:
    runs: list[hitl_core.Run] = []
    cursor = None
    while True:
        page = hitl.runs.list(limit=100, starting_after=cursor)
        runs.extend(page.data)
        if not page.has_more:
            return runs
        cursor = page.next_starting_after


# -- a crash ------------------------------------------------------------------------------

STREAM = """
import json, sys
import hitl_core

hitl = hitl_core.connect("sqlite:///" + sys.argv[1], clock=hitl_core.ManualClock(start=0.0))
index = 0
while True:
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(run.id).request_tool("deploy", {"index": index})
    decision = "allow" if index % 3 else "deny"
    hitl.runs.approve(run.id, request_id=gate.request_id, decision=decision, reason=str(index))
    print(json.dumps([run.id, gate.request_id, decision, index]), flush=True)
    index += 1
"""


def test_killed_writer_keeps_every_acknowledged_decision(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "h.db"
    child = Child(STREAM, str(path), cwd=tmp_path)
    children.append(child)
    acknowledged = [json.loads(child.line()) for _ in range(12)]
    child.process.send_signal(signal.SIGKILL)  # mid-stream: it is writing all the time
    child.process.wait(timeout=60)
    assert child.process.returncode == -signal.SIGKILL
    acknowledged += [json.loads(line) for line in child.rest()]  # printed before the kill
    assert Path(f"{path}-wal").exists()  # nobody checkpointed: recovery has work to do

    with open_hitl(path) as hitl:
        for run_id, request_id, decision, index in acknowledged:
            request = hitl.agent(run_id).result(request_id)
            assert (request.status, request.decision) == (STATUS[decision], decision)
            assert request.reason == str(index)
            assert hitl.runs.get(run_id).status == "running"
        run_id, request_id = open_gate(hitl)  # and the file takes new writes
        assert decide(hitl, run_id, request_id, "allow") is None
    check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


# -- eight threads of mixed work ----------------------------------------------------------


def test_eight_threads_of_mixed_work_stay_consistent(tmp_path: Path) -> None:
    hitl = open_hitl(tmp_path / "h.db")
    made: list[list[str]] = [[] for _ in range(8)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for step in range(6):
                user = f"user_{worker % 3}"
                run = hitl.runs.create(
                    human_in_the_loop=True, permission_mode="approval", user_id=user
                )
                made[worker].append(run.id)
                agent = hitl.agent(run.id)
                first = agent.request_tool(f"tool.{worker}.{step}", {"step": step})
                second = agent.request_tool("tool.shared")
                agent.ask([QUESTION])
                hitl.permissions.create(tool="shared.*")  # every thread races for one policy
                assert first.request_id is not None and second.request_id is not None
                hitl.runs.approve(run.id, request_id=first.request_id, remember=step % 2 == 0)
                hitl.runs.list(user_id=user, limit=5)
                hitl.events.list(run_id=run.id)
                if step % 3 == 0:
                    continue  # left awaiting: a tool and a question pending
                hitl.runs.approve(run.id, request_id=second.request_id, decision="deny")
                hitl.runs.answer(run.id, answers={QUESTION["question"]: "SQLite"})
                if step % 3 == 1:
                    agent.complete(output={"worker": worker})
                else:
                    agent.request_tool("tool.last")
                    hitl.runs.cancel(run.id)
        except BaseException as error:  # reported below, in the main thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        all_runs = pages(hitl)
        assert sorted(run.id for run in all_runs) == sorted(
            run_id for ids in made for run_id in ids
        )
        for run in all_runs:
            requests = hitl.runs.permissions(run.id)
            pending = [r for r in requests if r.status == "pending"]
            expected_pending = 2 if run.status == "awaiting_approval" else 0
            assert len(pending) == expected_pending, (run.status, requests)
            assert run.status in ("awaiting_approval", "completed", "cancelled")
            events = hitl.events.list(run_id=run.id)
            opened = [e.data["request_id"] for e in events if e.type == "run.awaiting_input"]
            resolved = [e.data["request_id"] for e in events if e.type == "request.resolved"]
            assert opened == [r.request_id for r in requests]
            assert sorted(resolved) == sorted(r.request_id for r in requests if not r.is_pending)
        shared = [p for p in hitl.permissions.list(limit=100).data if p.tool_name == "shared.*"]
        assert len(shared) == 1
        remembered = hitl.permissions.list(user_id="user_0", limit=100).data
        assert {p.tool_name for p in remembered} == {
            f"tool.{worker}.{step}" for worker in (0, 3, 6) for step in (0, 2, 4)
        }
    finally:
        hitl.close()


def test_a_store_works_from_threads_that_come_and_go(tmp_path: Path) -> None:
    """Connections of ended threads are closed and replaced, not leaked or shared."""
    hitl = open_hitl(tmp_path / "h.db")
    try:
        for _ in range(20):
            thread = threading.Thread(target=hitl.runs.create)
            thread.start()
            thread.join()
        assert len(hitl.runs.list(limit=100).data) == 20
        sessions: Any = hitl._store._sessions  # type: ignore[attr-defined]
        assert len(sessions) <= 2
    finally:
        hitl.close()
    assert os.path.exists(tmp_path / "h.db")


CLOSE_WHILE_IN_USE = """
import asyncio, sys, threading, time
import hitl_core, hitl_core.aio

url, how = sys.argv[1], sys.argv[2]
unexpected = []


def busy(hitl):
    try:
        while True:
            run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            hitl.agent(run.id).request_tool("x")
    except hitl_core.HitlError as error:
        if error.code not in ("closed", "store_closed"):
            unexpected.append(error.code)
    except Exception as error:
        unexpected.append(repr(error))


async def busy_tasks():
    async with hitl_core.aio.connect(url, threads=4) as hitl:
        async def one():
            try:
                while True:
                    await hitl.runs.get((await hitl.runs.create()).id)
            except hitl_core.HitlError as error:
                if error.code not in ("closed", "store_closed"):
                    unexpected.append(error.code)
        tasks = [asyncio.create_task(one()) for _ in range(4)]
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)


for _ in range(10):
    if how == "threads":
        hitl = hitl_core.connect(url)
        workers = [threading.Thread(target=busy, args=(hitl,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(0.1)
        hitl.close()
        for worker in workers:
            worker.join()
    else:
        asyncio.run(busy_tasks())
print("survived", unexpected)
"""


@pytest.mark.parametrize(
    ("where", "how"), [("file", "threads"), (":memory:", "threads"), ("file", "asyncio")]
)
def test_closing_an_engine_while_other_threads_use_it(tmp_path: Path, where: str, how: str) -> None:
    # close() closed every thread's connection, also one another thread was running a
    # statement on: the process died of a segmentation fault, every time. Now calls in
    # flight finish (or fail with 409 closed), and nothing else happens.
    store = url(tmp_path / "h.db") if where == "file" else "sqlite:///:memory:"
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_IN_USE, store, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "survived []", done.stdout + done.stderr[-2000:]


def test_a_write_queued_behind_another_when_the_store_closes_does_not_happen(
    tmp_path: Path,
) -> None:
    # A write waiting for the process's writer lock when close() ran went on to commit
    # after close() had returned (and its connection stayed open until then).
    from hitl_sqlite import SqliteStore

    path = tmp_path / "h.db"
    store = SqliteStore(str(path))
    hitl = hitl_core.connect(store)
    inside, go = threading.Event(), threading.Event()
    result: list[str] = []

    def holder() -> None:
        with store.transaction(write=True):
            inside.set()
            go.wait(30)

    def creator() -> None:
        try:
            result.append(hitl.runs.create().id)
        except HitlError as error:
            result.append(error.code)

    first = threading.Thread(target=holder)
    first.start()
    assert inside.wait(30)
    queued = threading.Thread(target=creator)
    queued.start()
    time.sleep(0.3)  # it waits for the writer lock
    hitl.close()
    go.set()
    first.join(30)
    queued.join(30)
    assert result == ["store_closed"]
    count = sqlite3.connect(path).execute("SELECT count(*) FROM runs").fetchone()[0]
    assert count == 0
