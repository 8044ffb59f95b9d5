"""Several `hitl serve` processes on one SQLite file, and retries: every simulated agent
is played by one server at a time (leases fenced by a token), a killed server's agents
are finished by another exactly once, and an Idempotency-Key is bound to the request it
came with, in the same transaction as the run it made."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, call, needs_serve_stack, refused

import hitl_core

pytestmark = pytest.mark.usefixtures("_stack")

LEASE = {"HITL_SERVE_LEASE_SECONDS": "1"}
"""A short lease, so that a killed server's agents are taken over within seconds."""
APPROVAL = {"stream": False, "human_in_the_loop": True, "permission_mode": "approval"}


@pytest.fixture(scope="module")
def _stack() -> None:
    needs_serve_stack()


def core(wire: int) -> str:
    """The core id of a run's wire id."""
    return f"run_{wire:024x}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def engine(db: Path) -> Iterator[hitl_core.Hitl]:
    """The test's own view of the store the servers share."""
    with hitl_core.connect(f"sqlite:///{db}") as hitl:
        yield hitl


class Servers:
    """Live servers on one store, stopped (or found killed) at the end."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.started: list[LiveServer] = []

    def start(self) -> LiveServer:
        server = LiveServer(self.db, env=LEASE)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                code, err = server.stop()
                assert code == 0, err
                assert "Traceback" not in err, err


@pytest.fixture
def servers(db: Path) -> Iterator[Servers]:
    group = Servers(db)
    try:
        yield group
    finally:
        group.stop_all()


def create(server: LiveServer, message: str, **extra: Any) -> int:
    status, _, run = call(server.url, "POST", "/runs/", {"message": message, **APPROVAL, **extra})
    assert status == 200, run
    wire: int = run["id"]
    return wire


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def first_requests(engine: hitl_core.Hitl, runs: list[int]) -> bool:
    return all(engine.runs.permissions(core(r)) for r in runs)


def approve_until_done(servers: list[LiveServer], runs: list[int], timeout: float = 60) -> None:
    """Allow every pending request, through the servers in turn, until every run ended."""
    deadline = time.monotonic() + timeout
    turn = 0
    while time.monotonic() < deadline:
        open_runs = 0
        for run in runs:
            url = servers[turn % len(servers)].url
            turn += 1
            if call(url, "GET", f"/runs/{run}")[2]["status"] in ("completed", "failed"):
                continue
            open_runs += 1
            for request in call(url, "GET", f"/runs/{run}/permissions")[2]:
                if request["status"] == "pending":
                    other = servers[turn % len(servers)].url
                    body = {"request_id": request["request_id"], "decision": "allow"}
                    status, _, answer = call(other, "POST", f"/runs/{run}/approve", body)
                    assert status == 200, answer
        if not open_runs:
            return
        time.sleep(0.05)
    raise AssertionError("the runs did not end in time")


def played_once(engine: hitl_core.Hitl, run: int, tools: list[str]) -> None:
    """The run completed once, each of its tools requested exactly once, in order."""
    stored = engine.runs.get(core(run))
    assert stored.status == "completed", stored
    requests = engine.runs.permissions(core(run))
    assert [r.tool_name for r in requests] == tools, requests
    events = [e.type for e in engine.events.list(run_id=core(run), limit=1000)]
    assert events.count("run.completed") == 1 and events.count("run.started") == 1, events
    for tool in tools:
        assert str(stored.output).count(f"{tool}: allowed (human)") == 1, stored.output


def holder(engine: hitl_core.Hitl, run: int) -> str | None:
    stored = engine.runs.get(core(run))
    return stored.lease_worker if stored.lease_at(time.time()) else None


def of(server: LiveServer) -> str:
    """The part of a worker name that says which server process it is."""
    return f":{server.process.pid}:"


# -- several servers, one store -------------------------------------------------------------


def test_two_servers_play_each_agent_once(servers: Servers, engine: hitl_core.Hitl) -> None:
    a = servers.start()
    early = [create(a, "tool:t.one tool:t.two") for _ in range(4)]
    wait_for(lambda: first_requests(engine, early))
    b = servers.start()  # a second server on the same file, while the agents wait
    late = [create(b if i % 2 else a, "tool:t.one tool:t.two") for i in range(4)]
    approve_until_done([a, b], early + late)
    for run in early + late:
        played_once(engine, run, ["t.one", "t.two"])


def created_by(server: LiveServer, engine: hitl_core.Hitl, message: str, made: list[int]) -> int:
    """Create runs on `server` (each added to `made`) until one is held by it."""
    for _ in range(10):
        run = create(server, message)
        made.append(run)
        wait_for(lambda r=run: holder(engine, r))
        if of(server) in (holder(engine, run) or ""):
            return run
    raise AssertionError("the server never held a run it created")


def test_a_killed_server_leaves_its_runs_to_the_other(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    b = servers.start()
    a = servers.start()
    made: list[int] = []
    # runs that a holds when it dies: waiting for a person, and busy (asleep)
    waiting = [created_by(a, engine, "tool:k.one tool:k.two", made) for _ in range(2)]
    wait_for(lambda: first_requests(engine, waiting))
    busy = created_by(a, engine, "sleep:2 tool:k.one", made)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=10)
    approve_until_done([b], made)
    for run in made:
        played_once(engine, run, ["k.one"] if run == busy else ["k.one", "k.two"])


def taken_by(engine: hitl_core.Hitl, server: LiveServer, run: int) -> bool:
    """Whether `server` holds the run now, or held it until it ended."""
    if engine.runs.get(core(run)).is_terminal:
        return True
    return of(server) in (holder(engine, run) or "")


def test_a_frozen_server_loses_its_runs_and_its_agents_stop(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    """A server paused past its leases (SIGSTOP: a long GC pause, a suspended VM) finds
    its runs taken over when it wakes; its agents stop instead of playing on."""
    b = servers.start()
    a = servers.start()
    made: list[int] = []
    runs = [created_by(a, engine, "tool:f.one tool:f.two", made) for _ in range(2)]
    wait_for(lambda: first_requests(engine, made))
    for _ in range(3):
        a.process.send_signal(signal.SIGSTOP)
        try:  # decided while a sleeps: the runs need a server again
            for run in made:
                for request in engine.runs.permissions(core(run)):
                    if request.is_pending:
                        engine.runs.approve(core(run), request_id=request.request_id)
            break
        except hitl_core.HitlError as error:  # a was stopped inside a write: let it end it
            assert error.code == "store_busy", error
            a.process.send_signal(signal.SIGCONT)
            time.sleep(0.2)
    else:
        raise AssertionError("the store stayed busy")
    try:
        wait_for(lambda: all(taken_by(engine, b, r) for r in runs))
    finally:
        a.process.send_signal(signal.SIGCONT)
    approve_until_done([a, b], made)
    for run in made:
        played_once(engine, run, ["f.one", "f.two"])
    assert call(a.url, "GET", f"/runs/{runs[0]}")[0] == 200  # a is well and serving


# -- Idempotency-Key --------------------------------------------------------------------------


def test_a_key_is_bound_to_the_request_it_came_with(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    server = servers.start()
    url = server.url
    body = {"message": "email the team", "user_id": "alice", "metadata": {"order": 7}, **APPROVAL}
    key = {"Idempotency-Key": "k-77"}
    status, headers, first = call(url, "POST", "/runs/", body, headers=key)
    assert status == 200 and "idempotent-replay" not in headers
    status, headers, again = call(url, "POST", "/runs/", body, headers=key)
    assert status == 200 and headers["idempotent-replay"] == "true"
    assert again["id"] == first["id"]
    before = [r.id for r in engine.runs.list(limit=100).data]
    for other in (
        {**body, "user_id": "bob"},  # another user: never alice's run (nor its metadata)
        {**body, "metadata": {"order": 8}},
        {**body, "message": "email the board"},
        {**body, "tools": ["slack.post"]},
        {**body, "agent_id": 3},
        {**body, "permission_mode": "plan"},
    ):
        error = refused(
            call(url, "POST", "/runs/", other, headers=key), 422, "idempotency_key_reused"
        )
        shown = json.dumps(error)  # nothing of alice's run
        assert "alice" not in shown and str(first["id"]) not in shown and "run_" not in shown
    scoped = {k: v for k, v in body.items() if k != "user_id"}
    refused(
        call(url, "POST", "/runs/?user_id=bob", scoped, headers=key), 422, "idempotency_key_reused"
    )
    refused(call(url, "GET", f"/runs/{first['id']}?user_id=bob"), 404, "run_not_found")
    task = call(url, "POST", "/tasks/", {"instructions": "email the team"})[2]
    refused(
        call(url, "POST", f"/tasks/{task['id']}/runs", APPROVAL, headers=key),
        422,
        "idempotency_key_reused",
    )
    assert [r.id for r in engine.runs.list(limit=100).data] == before  # nothing made
    # a task run's key works the same way
    task_key = {"Idempotency-Key": "task-run-1"}
    made = call(url, "POST", f"/tasks/{task['id']}/runs", APPROVAL, headers=task_key)[2]
    status, headers, replay = call(
        url, "POST", f"/tasks/{task['id']}/runs", APPROVAL, headers=task_key
    )
    assert status == 200 and replay["id"] == made["id"] and headers["idempotent-replay"] == "true"
    assert replay["task_id"] == task["id"]


def burst(urls: list[str], body: dict[str, Any], key: str) -> list[Any]:
    """The same POST /runs with one Idempotency-Key from 12 threads at once, spread over
    the servers; the answers."""
    answers: list[tuple[int, dict[str, str], Any]] = []
    gate = threading.Barrier(12)

    def retry(n: int) -> None:
        gate.wait()
        url = urls[n % len(urls)]
        answers.append(call(url, "POST", "/runs/", body, headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=retry, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_retries_with_one_key_make_one_run(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    both = [servers.start(), servers.start()]
    made = []
    for round_ in range(5):  # retries racing each other on both servers, five times
        user = f"cust_burst{round_}"
        body = {"message": "tool:burst.go", "user_id": user, **APPROVAL}
        answers = burst([s.url for s in both], body, f"burst-{round_}")
        assert [a[0] for a in answers] == [200] * 12, answers
        assert len({a[2]["id"] for a in answers}) == 1, answers
        assert [a[1].get("idempotent-replay") for a in answers].count(None) == 1
        assert [r.id for r in engine.runs.list(user_id=user).data] == [core(answers[0][2]["id"])]
        made.append(answers[0][2]["id"])
    approve_until_done(both, made)
    for run in made:
        played_once(engine, run, ["burst.go"])


def test_a_run_whose_server_died_before_starting_it_is_played_and_its_retry_replays(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    """A server that crashed right after committing a run (before any server claimed it)
    leaves the run as the store has it: its agent's program in the checkpoint and its
    key, written in that one transaction. A retry returns it; a server plays it."""
    import hitl_server

    body = {"message": "tool:crash.one", **APPROVAL}
    engine.runs.create(
        human_in_the_loop=True,
        permission_mode="approval",
        checkpoint=hitl_server.initial_checkpoint(
            message="tool:crash.one", permission_mode="approval"
        ),
        idempotency_key="crash-1",
    )
    server = servers.start()
    status, headers, run = call(
        server.url, "POST", "/runs/", body, headers={"Idempotency-Key": "crash-1"}
    )
    assert status == 200 and headers["idempotent-replay"] == "true"
    assert len(engine.runs.list(limit=100).data) == 1
    approve_until_done([server], [run["id"]])
    played_once(engine, run["id"], ["crash.one"])


# -- an older server's side file --------------------------------------------------------------


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE agents (
    run_id TEXT PRIMARY KEY, message TEXT NOT NULL, teammate_id INTEGER,
    program TEXT NOT NULL, progress TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, extras TEXT NOT NULL);
CREATE TABLE idempotency (key TEXT PRIMARY KEY, run_id TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
"""


def test_an_older_servers_waiting_agents_are_taken_over(
    servers: Servers, engine: hitl_core.Hitl, db: Path
) -> None:
    """The side file of hitl serve 0.x kept each agent's program; a newer server moves
    the unfinished ones into the store and plays them on."""
    run = engine.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = engine.agent(run.id).request_tool("old.one", {})
    program = [
        {"action": "request_tool", "tool": "old.one", "input": {}},
        {"action": "request_tool", "tool": "old.two", "input": {}},
        {"action": "complete"},
    ]
    progress = {"step": 1, "waiting": [gate.request_id], "notes": [], "done": False}
    side = sqlite3.connect(f"{db}.serve")
    side.executescript(OLD_SCHEMA)
    side.execute(
        "INSERT INTO agents VALUES (?, ?, 4, ?, ?, 0)",
        (run.id, "tool:old.one tool:old.two", json.dumps(program), json.dumps(progress)),
    )
    side.execute("INSERT INTO tasks VALUES ('task_x', '{}')")
    side.commit()
    side.close()
    server = servers.start()
    wire = int(run.id.split("_")[1], 16)
    assert call(server.url, "GET", f"/runs/{wire}")[2]["teammate_id"] == 4
    approve_until_done([server], [wire])
    played_once(engine, wire, ["old.one", "old.two"])
    assert os.path.exists(f"{db}.serve")


def test_runs_of_other_hosts_on_the_store_do_not_starve_the_servers_agents(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    """A library host on the same store that holds no leases keeps its running runs
    claimable; more of them than one scan looks at must not hide the server's own."""
    foreign = [engine.runs.create() for _ in range(1100)]
    assert len(engine.runs.claimable(limit=1000)) == 1000
    server = servers.start()
    runs = [create(server, "tool:t.one") for _ in range(2)]
    approve_until_done([server], runs, timeout=30)
    for run in runs:
        played_once(engine, run, ["t.one"])
    assert all(engine.runs.get(r.id).lease_worker is None for r in foreign[:5])


def test_a_killed_servers_busy_agent_is_found_behind_other_hosts_runs(
    servers: Servers, engine: hitl_core.Hitl
) -> None:
    """The periodic scan looked only at the first 1,000 claimable runs, and lease-less
    runs of a library host come first there: a killed server's agent that was busy (no
    event names its run, so nothing else points at it) was never taken over."""
    b = servers.start()
    a = servers.start()
    made: list[int] = []
    created_by(a, engine, "sleep:6 tool:k.one", made)  # busy (asleep) when a dies
    foreign = [engine.runs.create() for _ in range(1100)]
    assert {r.id for r in engine.runs.claimable(limit=1000)} <= {r.id for r in foreign}
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=10)
    approve_until_done([b], made, timeout=40)
    for run in made:
        played_once(engine, run, ["k.one"])
    assert all(engine.runs.get(r.id).lease_worker is None for r in foreign[:5])
