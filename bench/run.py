"""Benchmarks: the pause-resume cycle of hitl-core against LangGraph's interrupt/resume
and against hand-written floors; policy checks; bytes per paused run in memory and on
disk; read latency as the SQLite store grows; and waiting: how soon `Agent.wait` returns
after a decision, event-loop lag and CPU with 1,000 waiters. Ratios measured in one run
are the result.

    python bench/run.py                 # the full run (several minutes)
    python bench/run.py --quick         # a smoke run with tiny sizes (used by the tests)
    python bench/run.py --only hitl     # hitl-core's own numbers (see bench/before_after.py)
    python bench/run.py --postgresql postgresql://...   # the PostgreSQL server to use

A PostgreSQL store is measured too (its cycle, bytes per paused run, wake-up) when a
server answers (--postgresql, $HITL_TEST_POSTGRES_URL or the local test server), in
schemas of its own dropped at the end; bench/postgres.py has the PostgreSQL details.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

import hitl_core
import hitl_core.aio

Cycle = Callable[[int], Callable[[], None]]  # setup(n) -> timed body running n cycles


def measure(cycles: list[tuple[str, Cycle, int]], repeats: int) -> dict[str, float]:
    """Median cycles per second of each cycle over `repeats` runs of its `n` cycles
    (setup not timed). The runs take turns (every cycle once, then again), so that each
    sees the same moments of a shared machine: a disk busy for a minute slows them all."""
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cycles}
    for _ in range(repeats):
        for name, setup, n in cycles:
            body = setup(n)
            gc.collect()
            start = time.perf_counter()
            body()
            rates[name].append(n / (time.perf_counter() - start))
    return {name: statistics.median(found) for name, found in rates.items()}


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


# -- hitl-core ----------------------------------------------------------------------------


def hitl_cycle(url_factory: Callable[[], str]) -> Cycle:
    """The host starts a run and takes its agent handle, request_tool opens a request, a
    person approves it, the agent reads the decision. The run's creation is inside the
    timed cycle, as LangGraph's new thread is in its cycle."""

    def setup(n: int) -> Callable[[], None]:
        hitl = hitl_core.connect(url_factory())

        def body() -> None:
            create, approve, agent_of = hitl.runs.create, hitl.runs.approve, hitl.agent
            for _ in range(n):
                run = create(human_in_the_loop=True, permission_mode="approval")
                agent = agent_of(run.id)
                gate = agent.request_tool("gmail.send", {"to": "a@b.c"})
                approve(run.id, request_id=gate.request_id)  # type: ignore[arg-type]
                assert agent.result(gate.request_id).status == "allowed"  # type: ignore[arg-type]
            hitl.close()

        return body

    return setup


# -- LangGraph ----------------------------------------------------------------------------


def langgraph_cycle(kind: str, workdir: Path) -> Cycle | None:
    """invoke() runs to interrupt(); invoke(Command(resume=...)) finishes; a thread per cycle."""
    try:
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import END, START, StateGraph
        from langgraph.types import Command, interrupt
    except ImportError:
        return None
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError:
        if kind == "sqlite":
            return None

    from typing import TypedDict

    class State(TypedDict):
        tool: str
        decision: str

    def gate(state: State) -> dict[str, str]:
        return {"decision": interrupt({"tool": state["tool"]})}

    def setup(n: int) -> Callable[[], None]:
        graph = StateGraph(State)
        graph.add_node("gate", gate)
        graph.add_edge(START, "gate")
        graph.add_edge("gate", END)
        if kind == "memory":
            saver: Any = InMemorySaver()
        else:
            conn = sqlite3.connect(workdir / f"lg-{uuid.uuid4().hex}.db", check_same_thread=False)
            saver = SqliteSaver(conn)
        app = graph.compile(checkpointer=saver)
        threads = [{"configurable": {"thread_id": uuid.uuid4().hex}} for _ in range(n)]

        def body() -> None:
            for config in threads:
                app.invoke({"tool": "gmail.send", "decision": ""}, config)
                assert app.invoke(Command(resume="allow"), config)["decision"] == "allow"

        return body

    return setup


# -- floors -------------------------------------------------------------------------------


@attrs.frozen
class _Gate:
    id: str
    status: str
    version: int


def python_floor() -> Cycle:
    """A dict of frozen attrs records: open (insert), approve (evolve with a version
    check), read. What any pure-Python engine must at least do."""

    def setup(n: int) -> Callable[[], None]:
        store: dict[str, _Gate] = {}
        ids = [uuid.uuid4().hex for _ in range(n)]

        def body() -> None:
            for gate_id in ids:
                store[gate_id] = _Gate(gate_id, "pending", 1)
                current = store[gate_id]
                assert current.version == 1
                store[gate_id] = attrs.evolve(current, status="allowed", version=2)
                assert store[gate_id].status == "allowed"

        return body

    return setup


def _builder(cls: type, *names: str) -> Callable[..., Any]:
    """A function `(template, *values)` that makes a `cls` record with the slots `names`
    set to `values` and every other slot copied from `template`: straight-line code that
    sets each slot directly, the fastest way Python has to make a frozen record."""
    namespace: dict[str, Any] = {"_new": object.__new__, "cls": cls}
    lines = [f"def build(template, {', '.join(names)}):", "    new = _new(cls)"]
    for field in attrs.fields(cls):
        namespace[f"set{field.name}"] = getattr(cls, field.name).__set__
        value = field.name if field.name in names else f"template.{field.name}"
        lines.append(f"    set{field.name}(new, {value})")
    exec("\n".join([*lines, "    return new"]), namespace)
    build: Callable[..., Any] = namespace["build"]
    return build


def memory_floor() -> Cycle:
    """The memory cycle's unavoidable work, written by hand: under a lock per call, a
    clock reading, random ids, the records the API hands out (Run, PermissionRequest,
    ToolGate, ApproveResult) and the three events, in plain dicts and a list; no
    checks, rules, indexes, undo log or change feed."""
    from hitl_core import (
        ApproveResult,
        Event,
        PermissionRequest,
        RequestStatus,
        Run,
        RunStatus,
        ToolGate,
    )

    run_template = Run(
        id="",
        status=RunStatus.RUNNING,
        human_in_the_loop=True,
        permission_mode="approval",
        user_id=None,
        task_id=None,
        metadata=None,
        input_timeout=75.0,
        created_at=0.0,
        updated_at=0.0,
    )
    request_template = PermissionRequest(
        request_id="",
        run_id="",
        kind="tool",
        tool_name="",
        tool_input={},
        status=RequestStatus.PENDING,
        created_at=0.0,
    )
    event_template = Event(id="", type="", run_id="", created_at=0.0, data={})
    gate_template = ToolGate(status="pending", source=None)
    result_template = ApproveResult(request=request_template, resumed=False, remembered=False)
    new_run = _builder(Run, "id", "created_at", "updated_at")
    opened = _builder(Run, "version", "updated_at", "status", "deadline")
    settled = _builder(Run, "version", "updated_at", "status", "deadline")
    new_request = _builder(
        PermissionRequest, "request_id", "run_id", "tool_name", "tool_input", "created_at"
    )
    decided = _builder(PermissionRequest, "status", "decision", "source", "resolved_at")
    new_event = _builder(Event, "id", "type", "run_id", "created_at", "_data")
    new_gate = _builder(ToolGate, "request_id")
    new_result = _builder(ApproveResult, "request")
    awaiting, running, allowed = (
        RunStatus.AWAITING_APPROVAL,
        RunStatus.RUNNING,
        RequestStatus.ALLOWED,
    )

    def setup(n: int) -> Callable[[], None]:
        lock, clock = threading.Lock(), time.time
        runs: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        events: list[Any] = []

        def new_id(prefix: str) -> str:
            return f"{prefix}_{os.urandom(12).hex()}"

        def body() -> None:
            for _ in range(n):
                with lock:  # runs.create
                    now = clock()
                    run = new_run(run_template, new_id("run"), now, now)
                    runs[run.id] = run
                    data = {"human_in_the_loop": True, "permission_mode": "approval"}
                    events.append(
                        new_event(event_template, new_id("evt"), "run.started", run.id, now, data)
                    )
                with lock:  # hitl.agent(run_id)
                    run = runs[run.id]
                with lock:  # agent.request_tool
                    now, run = clock(), runs[run.id]
                    request = new_request(
                        request_template, new_id("req"), run.id, "gmail.send", {"to": "a@b.c"}, now
                    )
                    requests[request.request_id] = request
                    runs[run.id] = opened(run, run.version + 1, now, awaiting, now + 75.0)
                    data = {
                        "request_id": request.request_id,
                        "kind": "tool",
                        "tool_name": "gmail.send",
                    }
                    events.append(
                        new_event(
                            event_template, new_id("evt"), "run.awaiting_input", run.id, now, data
                        )
                    )
                    gate = new_gate(gate_template, request.request_id)
                with lock:  # runs.approve
                    now, run, request = clock(), runs[run.id], requests[gate.request_id]
                    done = decided(request, allowed, "allow", "human", now)
                    requests[done.request_id] = done
                    runs[run.id] = settled(run, run.version + 1, now, running, None)
                    data = {"request_id": done.request_id, "kind": "tool", "status": "allowed"}
                    events.append(
                        new_event(
                            event_template, new_id("evt"), "request.resolved", run.id, now, data
                        )
                    )
                    new_result(result_template, done)
                with lock:  # agent.result
                    assert requests[gate.request_id].status is allowed

        return body

    return setup


def _floor_db(workdir: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(workdir / f"floor-{uuid.uuid4().hex}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def sqlite_floor(workdir: Path, synchronous: str) -> Cycle:
    """Two short transactions on a WAL file: insert the pending gate; then compare-and-set
    it to allowed; then read it back. What any SQLite-backed engine must at least do to
    open and decide a gate (the floor of the issue's target)."""

    def setup(n: int) -> Callable[[], None]:
        conn = _floor_db(workdir, synchronous)
        conn.execute("CREATE TABLE gates (id TEXT PRIMARY KEY, status TEXT, version INTEGER)")
        ids = [uuid.uuid4().hex for _ in range(n)]

        def body() -> None:
            for gate_id in ids:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO gates VALUES (?, 'pending', 1)", (gate_id,))
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                changed = conn.execute(
                    "UPDATE gates SET status='allowed', version=2 WHERE id=? AND version=1",
                    (gate_id,),
                ).rowcount
                conn.execute("COMMIT")
                assert changed == 1
                row = conn.execute("SELECT status FROM gates WHERE id=?", (gate_id,)).fetchone()
                assert row[0] == "allowed"
            conn.close()

        return body

    return setup


def sqlite_three_floor(workdir: Path, synchronous: str) -> Cycle:
    """The fair cycle's three calls that change something, each durable: insert the run;
    insert its pending gate; compare-and-set the gate; then read it. One row per
    transaction, a table and its primary key index each: the least three commits cost."""

    def setup(n: int) -> Callable[[], None]:
        conn = _floor_db(workdir, synchronous)
        conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT)")
        conn.execute("CREATE TABLE gates (id TEXT PRIMARY KEY, status TEXT, version INTEGER)")
        ids = [(uuid.uuid4().hex, uuid.uuid4().hex) for _ in range(n)]

        def body() -> None:
            for run_id, gate_id in ids:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO runs VALUES (?, 'running')", (run_id,))
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO gates VALUES (?, 'pending', 1)", (gate_id,))
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                changed = conn.execute(
                    "UPDATE gates SET status='allowed', version=2 WHERE id=? AND version=1",
                    (gate_id,),
                ).rowcount
                conn.execute("COMMIT")
                assert changed == 1
                row = conn.execute("SELECT status FROM gates WHERE id=?", (gate_id,)).fetchone()
                assert row[0] == "allowed"
            conn.close()

        return body

    return setup


def sqlite_schema_floor(workdir: Path, synchronous: str, lean: bool = False) -> Cycle | None:
    """hitl-core's own cycle on its own SQLite schema (version 2), as hand-written sqlite3
    statements and no engine: each call's rows and index entries (the run, its request,
    the three events) written in the call's transaction, and the two reads. What the
    cycle costs in SQLite alone, with the indexes that keep every query flat.

    `lean`: the same with one B-tree fewer, the one saving found that keeps the queries
    flat: requests stored in the order of their run (a WITHOUT ROWID table keyed by
    `(run_seq, seq)`) instead of beside an index `requests_by_run`, so opening a request
    writes three B-trees, not four, and deciding it two, not three. (A run's pending
    requests are then found by reading its requests: flat in the number of runs, not in
    one run's history.)"""
    try:
        from hitl_sqlite._schema import SCHEMA  # this tree's schema (not in --only runs)
    except ImportError:
        return None
    if not any("run_seq" in statement for statement in SCHEMA):
        return None  # a schema of another layout
    schema = _lean(SCHEMA) if lean else SCHEMA
    if schema is None:
        return None

    insert_run = (
        "INSERT INTO runs (id, status, human_in_the_loop, permission_mode, input_timeout, "
        "suspended, created_at, updated_at, plan_approved, plan_revisions, remembered_allow, "
        "remembered_deny, version, lease_token) "
        "VALUES (?, 'running', 1, 'approval', 75.0, 0, ?, ?, 0, 0, '[]', '[]', 1, 0)"
    )
    insert_event = "INSERT INTO events (id, type, run_seq, created_at, data) VALUES (?, ?, ?, ?, ?)"
    started, resolved = '[1,true,"approval",null,null]', '[3,"{}","tool","allowed","allow","human"]'

    def setup(n: int) -> Callable[[], None]:
        conn = _floor_db(workdir, synchronous)
        for statement in schema:
            conn.execute(statement)
        ids = [tuple(uuid.uuid4().hex for _ in range(5)) for _ in range(n)]
        numbers = itertools.count(1)  # the requests' seq (a rowid table would number them)

        def body() -> None:
            ex = conn.execute
            for run_id, request_id, e1, e2, e3 in ids:
                now = time.time()
                ex("BEGIN IMMEDIATE")
                seq = ex(insert_run, (run_id, now, now)).lastrowid
                ex(insert_event, (e1, "run.started", seq, now, started))
                ex("COMMIT")
                ex("BEGIN")
                ex("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
                ex("COMMIT")
                ex("BEGIN IMMEDIATE")
                ex(
                    "UPDATE runs SET status = 'awaiting_approval', updated_at = ?, deadline = ?, "
                    "version = 2 WHERE seq = ? AND version = 1",
                    (now, now + 75.0, seq),
                )
                ex(
                    "INSERT INTO requests (seq, request_id, run_seq, kind, tool_name, status, "
                    "created_at, remember, resumed, tool_input) VALUES "
                    "(?, ?, ?, 'tool', 'gmail.send', 'pending', ?, 0, 0, ?)",
                    (next(numbers), request_id, seq, now, '{"to":"a@b.c"}'),
                )
                awaiting = f'[2,"{request_id}","tool","gmail.send"]'
                ex(insert_event, (e2, "run.awaiting_input", seq, now, awaiting))
                ex("COMMIT")
                ex("BEGIN IMMEDIATE")
                ex(
                    "UPDATE runs SET status = 'running', updated_at = ?, deadline = NULL, "
                    "version = 3 WHERE seq = ? AND version = 2",
                    (now, seq),
                )
                ex(
                    "UPDATE requests SET status = 'allowed', resolved_at = ?, decision = 'allow', "
                    "source = 'human' WHERE request_id = ?",
                    (now, request_id),
                )
                ex(insert_event, (e3, "request.resolved", seq, now, resolved.format(request_id)))
                ex("COMMIT")
                ex("BEGIN")
                ex("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
                row = ex(
                    "SELECT status FROM requests WHERE request_id = ?", (request_id,)
                ).fetchone()
                ex("COMMIT")
                assert row[0] == "allowed"
            conn.close()

        return body

    return setup


def _lean(schema: tuple[str, ...]) -> tuple[str, ...] | None:
    """`schema` with requests kept in their run's order (see sqlite_schema_floor); None
    when its requests table is not written as this expects."""
    key = "seq         INTEGER PRIMARY KEY,"
    lean = []
    for statement in schema:
        if statement.startswith("CREATE INDEX requests_by_run"):
            continue
        if statement.startswith("CREATE TABLE requests"):
            if key not in statement or not statement.endswith(")"):
                return None
            statement = statement.replace(key, "seq         INTEGER NOT NULL,")
            key_clause = ",\n        PRIMARY KEY (run_seq, seq)\n    ) WITHOUT ROWID"
            statement = statement[:-1].rstrip() + key_clause
        lean.append(statement)
    return tuple(lean)


# -- policy checks and bytes per paused run -----------------------------------------------


def policy_checks(url: str, policies: int, checks: int, pattern: bool) -> float:
    """Auto-allowed request_tool calls per second with `policies` stored policies of the
    run's scope (exact names, or a share of patterns), the matching one added last."""
    hitl = hitl_core.connect(url)
    with hitl._store.transaction(write=True) as tx:  # bulk load through the port
        for index in range(policies):
            tool = f"app{index}.*" if pattern and index % 10 == 0 else f"app{index}.action"
            tx.insert_policy(
                hitl_core.PermissionPolicy(
                    id=f"pol_{index}",
                    user_id="cust",
                    tool_name=tool,
                    source="api",
                    created_at=0.0,
                )
            )
    target = f"app{policies - 10}.send" if pattern else f"app{policies - 1}.action"
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval", user_id="cust")
    agent = hitl.agent(run.id)
    assert agent.request_tool(target).source == "policy"
    start = time.perf_counter()
    for _ in range(checks):
        agent.request_tool(target)
    rate = checks / (time.perf_counter() - start)
    hitl.close()
    return rate


def _pause_runs(hitl: hitl_core.Hitl, count: int) -> None:
    for _ in range(count):
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        hitl.agent(run.id).request_tool("gmail.send", {"to": "a@b.c"})


def memory_per_paused_run(count: int) -> float:
    """Bytes of Python heap per run waiting on one tool request (with its two events), in
    the memory store (tracemalloc)."""
    hitl = hitl_core.connect("memory://")
    _pause_runs(hitl, 100)  # warm: caches, pools and first allocations are not per run
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _pause_runs(hitl, count)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    hitl.close()
    return (after - before) / count


def memory_floor_bytes(count: int) -> float:
    """Bytes of Python heap per paused run when a store keeps nothing but the records
    themselves: the Run, its PermissionRequest and its two Events as the objects the API
    hands out (ids as strings, JSON values as dicts), in a dict of runs, a dict of
    requests and a list of events; no index, no undo log. The floor of a store that keeps
    its records whole, as the memory store does to hand them out without rebuilding."""
    from hitl_core import Event, PermissionRequest, RequestStatus, Run, RunStatus

    runs: dict[str, Run] = {}
    requests: dict[str, PermissionRequest] = {}
    events: list[Event] = []

    def pause() -> None:
        created, opened = time.time(), time.time()
        run_id, request_id = f"run_{os.urandom(12).hex()}", f"req_{os.urandom(12).hex()}"
        runs[run_id] = Run(
            id=run_id,
            status=RunStatus.AWAITING_APPROVAL,
            human_in_the_loop=True,
            permission_mode="approval",
            user_id=None,
            task_id=None,
            metadata=None,
            input_timeout=75.0,
            created_at=created,
            updated_at=opened,
            deadline=opened + 75.0,
            version=2,
        )
        requests[request_id] = PermissionRequest(
            request_id=request_id,
            run_id=run_id,
            kind="tool",
            tool_name="gmail.send",
            tool_input={"to": "a@b.c"},
            status=RequestStatus.PENDING,
            created_at=opened,
        )
        started = {"human_in_the_loop": True, "permission_mode": "approval", "user_id": None}
        events.append(
            Event(
                id=f"evt_{os.urandom(12).hex()}",
                type="run.started",
                run_id=run_id,
                created_at=created,
                data={**started, "task_id": None},
            )
        )
        events.append(
            Event(
                id=f"evt_{os.urandom(12).hex()}",
                type="run.awaiting_input",
                run_id=run_id,
                created_at=opened,
                data={"request_id": request_id, "kind": "tool", "tool_name": "gmail.send"},
            )
        )

    for _ in range(100):
        pause()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        pause()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def sqlite_bytes_per_paused_run(workdir: Path, count: int) -> float:
    """Bytes of database file per paused run (with its request and events), after a
    checkpoint: pages in use, free pages left out."""
    path = workdir / f"disk-{uuid.uuid4().hex}.db"
    hitl = hitl_core.connect(f"sqlite:///{path}?synchronous=NORMAL")

    def used() -> int:
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
        return int((pages - free) * size)

    _pause_runs(hitl, 100)
    before = used()
    _pause_runs(hitl, count)
    after = used()
    hitl.close()
    return (after - before) / count


def postgres_server() -> Any:
    """The PostgreSQL server to measure too (`bench/postgres.py`'s `Server`: a schema per
    measurement, dropped at the end): --postgresql, else $HITL_TEST_POSTGRES_URL, else the
    local test server. None when psycopg is missing, no store is registered for
    postgresql://, or no server answers."""
    try:
        from postgres import LOCAL, Server  # bench/postgres.py, beside this file
    except ImportError:
        return None
    url = os.environ.get("HITL_BENCH_POSTGRESQL") or os.environ.get("HITL_TEST_POSTGRES_URL")
    server = Server(url or LOCAL)
    try:
        hitl_core.connect(server.store_url(server.schema())).close()
    except hitl_core.HitlError as error:
        print(f"  no PostgreSQL measurements ({error.code}: {error})", file=sys.stderr)
        server.drop_all()
        return None
    return server


def _quietly(call: Callable[[], Any]) -> Any:
    """`call()`, or None when the PostgreSQL server went away meanwhile (said on stderr):
    a server that stops must not cost the other measurements."""
    try:
        return call()
    except Exception as error:  # the store's HitlError, or psycopg's own
        print(f"  a PostgreSQL measurement failed: {error}", file=sys.stderr)
        return None


def postgresql_bytes_per_paused_run(server: Any, count: int) -> float | None:
    """Bytes on disk per paused run in a PostgreSQL store: growth of its schema's tables
    with their indexes and TOAST (pg_total_relation_size)."""
    if server is None:
        return None
    schema = server.schema()
    hitl = hitl_core.connect(server.store_url(schema))
    _pause_runs(hitl, 100)
    before = server.schema_bytes(schema)
    _pause_runs(hitl, count)
    after = server.schema_bytes(schema)
    hitl.close()
    return float(after - before) / count


# -- latency as data grows ----------------------------------------------------------------


def latency_as_data_grows(
    workdir: Path, steps: list[tuple[int, int]], probes: int
) -> list[dict[str, float]]:
    """Median µs of the queries that must stay flat, after each growth step (total
    requests, pending deadlines), on one SQLite file (FULL): `runs.permissions(run)`,
    `tick()`, `runs.pending()`, `runs.list(status=...)` and an outbox claim."""
    url = f"sqlite:///{workdir / 'grow.db'}"
    clock = hitl_core.ManualClock(start=1000.0)
    hitl = hitl_core.connect(url, clock=clock)
    endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/hook", events=["run.started"])
    rows = []
    loaded_runs = 0
    for total_requests, pending in steps:
        runs = total_requests // 10
        if runs > loaded_runs:
            _grow_range(hitl, endpoint.id, loaded_runs, runs, pending)
            loaded_runs = runs
        probe_runs = [f"run_{i}" for i in range(0, runs, max(1, runs // probes))][:probes]

        def timed(call: Callable[[], Any], times: int = probes) -> float:
            samples = []
            for _ in range(times):
                start = time.perf_counter()
                call()
                samples.append(time.perf_counter() - start)
            return statistics.median(samples) * 1e6

        perms = []
        for run_id in probe_runs:
            start = time.perf_counter()
            assert len(hitl.runs.permissions(run_id)) == 10
            perms.append(time.perf_counter() - start)
        rows.append(
            {
                "requests": total_requests,
                "pending": pending,
                "permissions_us": statistics.median(perms) * 1e6,
                "tick_us": timed(hitl.tick),
                "pending_us": timed(lambda: hitl.runs.pending(limit=20)),
                "list_status_us": timed(
                    lambda: hitl.runs.list(status="awaiting_approval", limit=20)
                ),
                "claim_us": timed(lambda: hitl.webhooks.claim(limit=10), max(1, probes // 10)),
            }
        )
    hitl.close()
    return rows


def _grow_range(
    hitl: hitl_core.Hitl, endpoint_id: str, first: int, last: int, pending: int
) -> None:
    """Load runs `first`..`last` through the port: each with 10 requests and a delivery;
    the first `pending` runs wait on one request (with a far deadline), the others are
    completed."""
    from hitl_core import PermissionRequest, RequestStatus, Run, RunStatus, WebhookDelivery

    for start in range(first, last, 2000):
        with hitl._store.transaction(write=True) as tx:
            for index in range(start, min(last, start + 2000)):
                waiting = index < pending
                run = Run(
                    id=f"run_{index}",
                    status=RunStatus.AWAITING_APPROVAL if waiting else RunStatus.COMPLETED,
                    human_in_the_loop=True,
                    permission_mode="approval",
                    user_id=None,
                    task_id=None,
                    metadata=None,
                    input_timeout=1e9,
                    created_at=0.0,
                    updated_at=0.0,
                    deadline=1e9 + index if waiting else None,
                )
                tx.insert_run(run)
                tx.save_requests(
                    [
                        PermissionRequest(
                            request_id=f"req_{index}_{k}",
                            run_id=run.id,
                            kind="tool",
                            tool_name="gmail.send",
                            tool_input={"to": "a@b.c"},
                            status=RequestStatus.PENDING
                            if waiting and k == 0
                            else RequestStatus.ALLOWED,
                            created_at=0.0,
                        )
                        for k in range(10)
                    ]
                )
                tx.save_deliveries(
                    [
                        WebhookDelivery(
                            id=f"dlv_{index}",
                            endpoint_id=endpoint_id,
                            event_id=f"evt_{index}",
                            event_type="run.started",
                            run_id=run.id,
                            payload="{}",
                            status="pending" if waiting else "delivered",
                            next_retry_at=0.0 if waiting else None,
                            created_at=0.0,
                            updated_at=0.0,
                        )
                    ]
                )


# -- waiting ------------------------------------------------------------------------------

DECIDER = """
import sys, time, hitl_core
hitl = hitl_core.connect(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    run_id, request_id = line.split()
    start = time.perf_counter()
    hitl.runs.approve(run_id, request_id=request_id)
    print(start, flush=True)
hitl.close()
"""


@contextmanager
def _decider_process(url: str) -> Iterator[Callable[[str, str], float]]:
    """A process that approves what it is told and answers with the perf_counter reading
    taken just before (CLOCK_MONOTONIC: one clock for every process of the machine)."""
    process = subprocess.Popen(
        [sys.executable, "-c", DECIDER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stdout.readline().strip() == "ready"

    def decide(run_id: str, request_id: str) -> float:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{run_id} {request_id}\n")
        process.stdin.flush()
        return float(process.stdout.readline())

    try:
        yield decide
    finally:
        process.stdin.close()
        process.wait(30)


def wake_latency(url: str, samples: int, other_process: bool) -> dict[str, float]:
    """µs from the start of a decision (`runs.approve`) to the return of the
    `Agent.wait` that waited for it, made in this process (a thread, same engine) or in
    another process (its own engine on the same store); median and p99."""
    hitl = hitl_core.connect(url)
    latencies = []
    with _decider_process(url) if other_process else _nothing() as remote:
        for _ in range(samples):
            run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            agent = hitl.agent(run.id)
            gate = agent.request_tool("deploy")
            assert gate.request_id is not None
            returned: list[float] = []

            waiter = threading.Thread(target=_wait, args=(agent, gate.request_id, returned))
            waiter.start()
            time.sleep(0.02)  # let it block
            if remote is not None:
                started = remote(run.id, gate.request_id)
            else:
                started = time.perf_counter()
                hitl.runs.approve(run.id, request_id=gate.request_id)
            waiter.join(30)
            latencies.append((returned[0] - started) * 1e6)
    hitl.close()
    return {"median_us": statistics.median(latencies), "p99_us": percentile(latencies, 0.99)}


def _wait(agent: hitl_core.Agent, request_id: str, returned: list[float]) -> None:
    agent.wait(request_id, timeout=30.0)
    returned.append(time.perf_counter())


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


async def _ticks(seconds: float, until: Callable[[], bool] | None = None) -> list[float]:
    """Lag of the event loop: how late (µs) each 1 ms sleep wakes, for `seconds` (or
    until `until()`)."""
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or (until is not None and not until()):
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - start - 0.001) * 1e6)
        if until is not None and until() and time.perf_counter() >= end:
            break
    return lags


def loop_with_waiters(url: str, waiters: int, seconds: float, settle: float) -> dict[str, float]:
    """`waiters` asyncio tasks in `hitl_core.aio` each awaiting `agent.wait` on its own
    run: the process's CPU while they are idle (nothing else running; measured `settle`
    seconds after they began, once their first looks are over), the loop's lag
    (how late a 1 ms sleep wakes: p50, p99) while they are idle, then the lag while
    another thread of the process decides them all in a burst (up to 2,000 a second),
    and how long until every wait returned."""

    async def main() -> dict[str, float]:
        hitl = hitl_core.aio.connect(url)
        engine = hitl.sync
        pairs = []
        for _ in range(waiters):
            run = engine.runs.create(human_in_the_loop=True, permission_mode="approval")
            gate = engine.agent(run.id).request_tool("deploy")
            pairs.append((run.id, gate.request_id))
        agents = [await hitl.agent(run_id) for run_id, _ in pairs]
        tasks = [
            asyncio.create_task(agent.wait(request_id))  # type: ignore[arg-type]
            for agent, (_, request_id) in zip(agents, pairs, strict=True)
        ]
        await asyncio.sleep(settle)  # every wait made its first look and is parked
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)  # nothing happens: what do the waits cost?
        cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        idle = await _ticks(seconds)

        def decide_all() -> None:  # a burst: up to 2,000 decisions a second
            for run_id, request_id in pairs:
                engine.runs.approve(run_id, request_id=request_id)  # type: ignore[arg-type]
                time.sleep(0.0005)

        decider = threading.Thread(target=decide_all)
        started = time.perf_counter()
        decider.start()
        busy = await _ticks(0.0, lambda: all(task.done() for task in tasks))
        await asyncio.gather(*tasks)
        drained = time.perf_counter() - started
        decider.join()
        await hitl.close()
        return {
            "idle_lag_p50_us": statistics.median(idle),
            "idle_lag_p99_us": percentile(idle, 0.99),
            "idle_cpu_percent": 100 * cpu_share,
            "deciding_lag_p50_us": statistics.median(busy),
            "deciding_lag_p99_us": percentile(busy, 0.99),
            "deciding_lag_max_us": max(busy),
            "all_woken_s": drained,
        }

    return asyncio.run(main())


def idle_thread_waiters(url: str, waiters: int, seconds: float, settle: float) -> float:
    """CPU (percent of one core) of the process while `waiters` threads block in
    `Agent.wait` with nothing happening."""
    hitl = hitl_core.connect(url)
    pairs = []
    for _ in range(waiters):
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = hitl.agent(run.id).request_tool("deploy")
        pairs.append((run.id, gate.request_id))
    threads = [
        threading.Thread(
            target=hitl.agent(run_id).wait, args=(request_id,), kwargs={"timeout": 600}
        )
        for run_id, request_id in pairs
    ]
    for thread in threads:
        thread.start()
    time.sleep(settle)  # all parked
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    for run_id, _ in pairs:
        hitl.runs.cancel(run_id)
    for thread in threads:
        thread.join(30)
    hitl.close()
    return 100 * share


# -- the report ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--only", choices=["hitl"], help="only hitl-core's cycles, policy checks and memory"
    )
    parser.add_argument(
        "--postgresql",
        metavar="URL",
        help="the PostgreSQL server to measure too (default: $HITL_TEST_POSTGRES_URL, else "
        "the local test server, when one answers)",
    )
    args = parser.parse_args(argv)
    if args.postgresql:
        os.environ["HITL_BENCH_POSTGRESQL"] = args.postgresql
    quick, everything = args.quick, args.only is None
    n_mem, n_sql, n_lg, reps = (50, 20, 10, 1) if quick else (3000, 600, 300, 5)
    results: dict[str, Any] = {"cycles_per_second": {}, "quick": quick, "only": args.only}
    pg = postgres_server() if everything else None  # --only: the tree may have no such store
    try:
        run_all(results, pg, quick, everything, n_mem, n_sql, n_lg, reps)
    finally:
        if pg is not None:
            _quietly(pg.drop_all)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def run_all(
    results: dict[str, Any],
    pg: Any,
    quick: bool,
    everything: bool,
    n_mem: int,
    n_sql: int,
    n_lg: int,
    reps: int,
) -> None:
    """Every measurement, into `results`."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def file_url(sync: str) -> Callable[[], str]:
            return lambda: f"sqlite:///{work / uuid.uuid4().hex}.db?synchronous={sync}"

        cycles: list[tuple[str, Cycle | None, int]] = [
            ("hitl-core memory://", hitl_cycle(lambda: "memory://"), n_mem),
            ("hitl-core sqlite FULL", hitl_cycle(file_url("FULL")), n_sql),
            ("hitl-core sqlite NORMAL", hitl_cycle(file_url("NORMAL")), n_sql),
        ]
        if everything:
            cycles += [
                ("LangGraph InMemorySaver", langgraph_cycle("memory", work), n_lg),
                ("LangGraph SqliteSaver", langgraph_cycle("sqlite", work), n_lg),
                ("floor: dict + attrs.evolve", python_floor(), n_mem * 10),
                ("floor: memory cycle by hand", memory_floor(), n_mem * 4),
                ("floor: sqlite3 FULL, 2 tx", sqlite_floor(work, "FULL"), n_sql),
                ("floor: sqlite3 NORMAL, 2 tx", sqlite_floor(work, "NORMAL"), n_sql),
                ("floor: sqlite3 FULL, 3 tx", sqlite_three_floor(work, "FULL"), n_sql),
                ("floor: hitl schema by hand, FULL", sqlite_schema_floor(work, "FULL"), n_sql),
                (
                    "floor: hitl schema, 1 B-tree fewer, FULL",
                    sqlite_schema_floor(work, "FULL", lean=True),
                    n_sql,
                ),
                ("floor: hitl schema by hand, NORMAL", sqlite_schema_floor(work, "NORMAL"), n_sql),
            ]
        available = [(name, setup, n) for name, setup, n in cycles if setup is not None]
        rates = results["cycles_per_second"]
        measured = measure(available, reps)
        for name, _, _ in cycles:
            rates[name] = measured.get(name)
        if pg is not None:  # on its own: a server that goes away costs only this number
            pg_cycle = hitl_cycle(lambda: pg.store_url(pg.schema()))
            found = _quietly(lambda: measure([("postgresql", pg_cycle, n_sql)], reps))
            rates["hitl-core postgresql"] = None if found is None else found["postgresql"]
        print("  measured the cycles", file=sys.stderr, flush=True)

        policy_n, checks = (1000, 200) if quick else (100_000, 3000)
        results["policy_checks_per_second"] = {
            "exact": policy_checks(f"sqlite:///{work / 'pol-e.db'}", policy_n, checks, False),
            "pattern": policy_checks(f"sqlite:///{work / 'pol-p.db'}", policy_n, checks, True),
            "exact_memory": policy_checks("memory://", policy_n, checks, False),
            "pattern_memory": policy_checks("memory://", policy_n, checks, True),
            "policies": policy_n,
        }
        paused = 200 if quick else 20_000
        results["bytes_per_paused_run"] = {
            "memory": memory_per_paused_run(paused),
            "floor: records kept whole": memory_floor_bytes(paused) if everything else None,
            "sqlite": sqlite_bytes_per_paused_run(work, paused),
            "postgresql": _quietly(lambda: postgresql_bytes_per_paused_run(pg, paused)),
        }
        print("  measured policy checks and bytes per paused run", file=sys.stderr, flush=True)
        if everything:
            steps = (
                [(1000, 100), (10_000, 1000)]
                if quick
                else [(10_000, 1000), (100_000, 10_000), (1_000_000, 100_000)]
            )
            results["latency"] = latency_as_data_grows(work, steps, 20 if quick else 200)
            print("  measured latency as data grows", file=sys.stderr, flush=True)
            results["waiting"] = waiting(work, pg, quick)


def waiting(work: Path, pg: Any, quick: bool) -> dict[str, Any]:
    """The waiting benchmarks: wake-up latency, loop lag and idle CPU."""
    # settle: how long 1,000 waits take to make their first looks and park, with room
    # (0.3 s was too short on a slower machine: its idle CPU took in their tail)
    samples, waiters, seconds, settle = (5, 20, 0.2, 0.2) if quick else (200, 1000, 3.0, 2.0)
    shared = f"sqlite:///{work / 'wait.db'}"
    wake: dict[str, Any] = {
        "memory://, same process": wake_latency("memory://", samples, False),
        "sqlite, same process": wake_latency(shared, samples, False),
        "sqlite, another process": wake_latency(shared, samples, True),
    }
    if pg is not None:
        shared_pg = pg.store_url(pg.schema())
        wake["postgresql, same process"] = _quietly(lambda: wake_latency(shared_pg, samples, False))
        wake["postgresql, another process"] = _quietly(
            lambda: wake_latency(shared_pg, samples, True)
        )
    print("  measured wake-up latency", file=sys.stderr, flush=True)
    loops = {
        "memory://": loop_with_waiters("memory://", waiters, seconds, settle),
        "sqlite": loop_with_waiters(f"sqlite:///{work / 'loop.db'}", waiters, seconds, settle),
    }
    print("  measured the event loop with waiters", file=sys.stderr, flush=True)
    threads = idle_thread_waiters(f"sqlite:///{work / 'threads.db'}", waiters, seconds, settle)
    return {"waiters": waiters, "wake": wake, "loop": loops, "idle_threads_cpu_percent": threads}


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:,.2f}x"


def report(results: dict[str, Any]) -> None:
    rates = results["cycles_per_second"]
    print("\nPause-resume cycle (start a run, open a tool request, approve it, read it):")
    print(f"  {'':<36} {'cycles/s':>12}")
    for name, rate in rates.items():
        print(f"  {name:<36} {'-' if rate is None else f'{rate:,.0f}':>12}")
    mem, full = rates["hitl-core memory://"], rates["hitl-core sqlite FULL"]
    normal = rates["hitl-core sqlite NORMAL"]
    if results["only"] is None:
        lg_mem, lg_sql = rates["LangGraph InMemorySaver"], rates["LangGraph SqliteSaver"]
        print("\nRatios (the result; absolute numbers vary between machines):")
        rows = [
            ("memory:// / LangGraph InMemorySaver", _ratio(mem, lg_mem), ">= 100x"),
            ("sqlite FULL / LangGraph SqliteSaver", _ratio(full, lg_sql), ">= 10x"),
            (
                "sqlite FULL / sqlite3 FULL 2-tx floor",
                _ratio(full, rates["floor: sqlite3 FULL, 2 tx"]),
                ">= 0.5x",
            ),
            (
                "sqlite NORMAL / sqlite3 NORMAL 2-tx floor",
                _ratio(normal, rates["floor: sqlite3 NORMAL, 2 tx"]),
                "",
            ),
            (
                "memory floor by hand / InMemorySaver",
                _ratio(rates["floor: memory cycle by hand"], lg_mem),
                "the most possible",
            ),
            (
                "memory:// / memory floor by hand",
                _ratio(mem, rates["floor: memory cycle by hand"]),
                "",
            ),
            (
                "sqlite3 FULL 3-tx floor / SqliteSaver",
                _ratio(rates["floor: sqlite3 FULL, 3 tx"], lg_sql),
                "the most possible",
            ),
            (
                "sqlite3 FULL 3-tx floor / 2-tx floor",
                _ratio(rates["floor: sqlite3 FULL, 3 tx"], rates["floor: sqlite3 FULL, 2 tx"]),
                "",
            ),
            (
                "hitl schema FULL floor / 2-tx floor",
                _ratio(
                    rates["floor: hitl schema by hand, FULL"], rates["floor: sqlite3 FULL, 2 tx"]
                ),
                "",
            ),
            (
                "same, 1 B-tree fewer / 2-tx floor",
                _ratio(
                    rates["floor: hitl schema, 1 B-tree fewer, FULL"],
                    rates["floor: sqlite3 FULL, 2 tx"],
                ),
                "",
            ),
            (
                "sqlite FULL / hitl schema FULL floor",
                _ratio(full, rates["floor: hitl schema by hand, FULL"]),
                "",
            ),
            (
                "sqlite NORMAL / hitl schema NORMAL floor",
                _ratio(normal, rates["floor: hitl schema by hand, NORMAL"]),
                "",
            ),
        ]
        for name, value, target in rows:
            print(f"  {name:<44} {value:>10}   {target}")
    pol = results["policy_checks_per_second"]
    print(f"\nAuto-allowed tool checks/s with {pol['policies']:,} policies in the scope:")
    print(
        f"  sqlite: exact {pol['exact']:,.0f}, pattern {pol['pattern']:,.0f}; "
        f"memory: exact {pol['exact_memory']:,.0f}, pattern {pol['pattern_memory']:,.0f}"
        "   target (memory) >= 100,000"
    )
    size = results["bytes_per_paused_run"]
    print("\nBytes per paused run (a run waiting on one tool request, with its events):")
    for name, value in size.items():
        shown = "-" if value is None else f"{value:,.0f}"
        target = "" if name.startswith("floor") else "   target <= 1024"
        print(f"  {name:<28} {shown:>8}{target}")
    if "latency" in results:
        print("\nSQLite read latency as data grows (median µs):")
        print(
            f"  {'requests':>10} {'pending':>8} {'permissions':>11} {'tick':>6} "
            f"{'pending()':>9} {'list(status)':>12} {'claim':>6}"
        )
        for row in results["latency"]:
            print(
                f"  {row['requests']:>10,} {row['pending']:>8,} {row['permissions_us']:>11,.0f}"
                f" {row['tick_us']:>6,.0f} {row['pending_us']:>9,.0f}"
                f" {row['list_status_us']:>12,.0f} {row['claim_us']:>6,.0f}"
            )
    if "waiting" in results:
        wait = results["waiting"]
        print("\nWake-up: from the start of runs.approve to Agent.wait returning (µs):")
        for name, value in wait["wake"].items():
            shown = (
                "skipped"
                if value is None
                else (f"median {value['median_us']:,.0f}, p99 {value['p99_us']:,.0f}")
            )
            print(f"  {name:<30} {shown}")
        print(f"\n{wait['waiters']:,} waiters in one asyncio loop (hitl_core.aio):")
        for name, value in wait["loop"].items():
            print(
                f"  {name:<10} idle: lag p50 {value['idle_lag_p50_us']:,.0f} µs, "
                f"p99 {value['idle_lag_p99_us']:,.0f} µs, CPU {value['idle_cpu_percent']:.1f} %;"
                f" deciding all: lag p50 {value['deciding_lag_p50_us']:,.0f} µs, "
                f"p99 {value['deciding_lag_p99_us']:,.0f} µs, "
                f"max {value['deciding_lag_max_us']:,.0f} µs, "
                f"all woken in {value['all_woken_s']:.2f} s"
            )
        print(
            f"  {wait['waiters']:,} threads in Agent.wait on SQLite, idle: "
            f"CPU {wait['idle_threads_cpu_percent']:.1f} % of one core"
        )


if __name__ == "__main__":
    sys.exit(main())
