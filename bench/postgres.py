"""Benchmarks of the PostgreSQL store: the pause-resume cycle against LangGraph's
PostgresSaver and hand-written psycopg floors (one connection, and eight threads), the
wake-up of `Agent.wait` in one process after a decision in another, and bytes per
paused run on disk. Ratios measured in one run are the result.

    python bench/postgres.py            # the full run (a few minutes)
    python bench/postgres.py --quick    # a smoke run with tiny sizes (used by the tests)
    python bench/postgres.py --profile  # only: each statement of a cycle, timed

The server is --url, else $HITL_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1/test;
every measurement works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

import hitl_core

Cycle = Callable[[int], Callable[[], None]]  # setup(n) -> timed body running n cycles
LOCAL = "postgresql://postgres@127.0.0.1:5432/test"


def with_query(url: str, **options: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(options)
    return urlunsplit(parts._replace(query=urlencode(query)))


class Server:
    """The server, and schemas made for one measurement and dropped afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def schema(self) -> str:
        name = f"hitl_bench_{secrets.token_hex(4)}"
        self.made.append(name)
        return name

    def store_url(self, schema: str, **options: str) -> str:
        return with_query(self.url, schema=schema, **options)

    def libpq_url(self, schema: str | None = None) -> str:
        """A URL for plain psycopg; with `schema`, that schema first on the search path."""
        if schema is None:
            return self.url
        return with_query(self.url, options=f"-csearch_path={schema}")

    def connect(self, schema: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.libpq_url(schema), autocommit=True, **kwargs)

    def drop_all(self) -> None:
        with self.connect() as conn:
            for name in self.made:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.made.clear()

    def schema_bytes(self, schema: str) -> int:
        """Bytes on disk of every table of `schema` with its indexes and TOAST."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                (schema,),
            ).fetchone()
            assert row is not None
            return int(row[0])


def measure(setup: Cycle, n: int, repeats: int) -> float:
    """Median cycles per second over `repeats` runs of `n` cycles (setup not timed)."""
    rates = []
    for _ in range(repeats):
        body = setup(n)
        gc.collect()
        start = time.perf_counter()
        body()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


# -- hitl-core ----------------------------------------------------------------------------


def hitl_cycle(server: Server, threads: int = 1, **options: str) -> Cycle:
    """request_tool opens a request, a person approves it, the agent reads the decision;
    every cycle on its own run (made before timing). With `threads`, that many threads
    share one engine, each on its own runs; the rate is the total."""

    def setup(n: int) -> Callable[[], None]:
        hitl = hitl_core.connect(server.store_url(server.schema(), **options))
        agents = [
            (run.id, hitl.agent(run.id))
            for run in (
                hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
                for _ in range(n)
            )
        ]

        def cycles(part: list[tuple[str, hitl_core.Agent]]) -> None:
            approve = hitl.runs.approve
            for run_id, agent in part:
                gate = agent.request_tool("gmail.send", {"to": "a@b.c"})
                approve(run_id, request_id=gate.request_id)  # type: ignore[arg-type]
                assert agent.result(gate.request_id).status == "allowed"  # type: ignore[arg-type]

        def body() -> None:
            run_in_threads(cycles, agents, threads)
            hitl.close()

        return body

    return setup


def run_in_threads(work: Callable[[list[Any]], None], items: list[Any], threads: int) -> None:
    if threads == 1:
        work(items)
        return
    failures: list[BaseException] = []

    def guarded(part: list[Any]) -> None:
        try:
            work(part)
        except BaseException as error:
            failures.append(error)

    workers = [
        threading.Thread(target=guarded, args=(items[index::threads],)) for index in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


# -- LangGraph ----------------------------------------------------------------------------


def langgraph_cycle(server: Server) -> Cycle | None:
    """invoke() runs to interrupt(); invoke(Command(resume=...)) finishes; a thread per
    cycle; PostgresSaver on its own connection, in a schema of its own."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.graph import END, START, StateGraph
        from langgraph.types import Command, interrupt
    except ImportError:
        return None
    from typing import TypedDict

    class State(TypedDict):
        tool: str
        decision: str

    def gate(state: State) -> dict[str, str]:
        return {"decision": interrupt({"tool": state["tool"]})}

    def setup(n: int) -> Callable[[], None]:
        schema = server.schema()
        with server.connect() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        saver_cm = PostgresSaver.from_conn_string(server.libpq_url(schema))
        saver = saver_cm.__enter__()
        saver.setup()
        graph = StateGraph(State)
        graph.add_node("gate", gate)
        graph.add_edge(START, "gate")
        graph.add_edge("gate", END)
        app = graph.compile(checkpointer=saver)
        threads = [{"configurable": {"thread_id": uuid.uuid4().hex}} for _ in range(n)]

        def body() -> None:
            for config in threads:
                app.invoke({"tool": "gmail.send", "decision": ""}, config)  # type: ignore[arg-type]
                result = app.invoke(Command(resume="allow"), config)  # type: ignore[arg-type]
                assert result["decision"] == "allow"
            saver_cm.__exit__(None, None, None)

        return body

    return setup


# -- floors -------------------------------------------------------------------------------

FLOOR_SCHEMA = (
    "CREATE TABLE runs (id text PRIMARY KEY, status text NOT NULL, version int NOT NULL)",
    "CREATE TABLE requests (id text PRIMARY KEY, run_id text NOT NULL, status text NOT NULL)",
    "CREATE TABLE events (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "run_id text NOT NULL, type text NOT NULL)",
)
OPEN_STEPS = (
    "UPDATE runs SET status = 'awaiting', version = 2 WHERE id = %(run)s AND version = 1",
    "INSERT INTO requests VALUES (%(req)s, %(run)s, 'pending')",
    "INSERT INTO events (run_id, type) VALUES (%(run)s, 'run.awaiting_input')",
)
DECIDE_STEPS = (
    "UPDATE runs SET status = 'running', version = 3 WHERE id = %(run)s AND version = 2",
    "UPDATE requests SET status = 'allowed' WHERE id = %(req)s AND status = 'pending'",
    "INSERT INTO events (run_id, type) VALUES (%(run)s, 'request.resolved')",
)
OPEN_CTE = (
    "WITH r AS (UPDATE runs SET status = 'awaiting', version = 2 "
    "WHERE id = %(run)s AND version = 1 RETURNING id), "
    "q AS (INSERT INTO requests SELECT %(req)s, id, 'pending' FROM r), "
    "e AS (INSERT INTO events (run_id, type) SELECT id, 'run.awaiting_input' FROM r) "
    "SELECT count(*) FROM r"
)
DECIDE_CTE = (
    "WITH r AS (UPDATE runs SET status = 'running', version = 3 "
    "WHERE id = %(run)s AND version = 2 RETURNING id), "
    "q AS (UPDATE requests SET status = 'allowed' WHERE id = %(req)s AND status = 'pending' "
    "AND EXISTS (SELECT 1 FROM r)), "
    "e AS (INSERT INTO events (run_id, type) SELECT id, 'request.resolved' FROM r) "
    "SELECT count(*) FROM r"
)
READ = "SELECT status FROM requests WHERE id = %(req)s"


def floor_cycle(server: Server, *, cte: bool, threads: int = 1) -> Cycle:
    """The same writes as a cycle, by hand: open (compare-and-set the run, insert the
    request and its event), decide (compare-and-set the run, update the request, insert
    the event), read the request. Statement by statement in BEGIN ... COMMIT (11 round
    trips), or one data-modifying statement per transaction (3 round trips)."""

    def setup(n: int) -> Callable[[], None]:
        schema = server.schema()
        with server.connect() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        with server.connect(schema) as conn:
            for statement in FLOOR_SCHEMA:
                conn.execute(statement)
            ids = [(f"run_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}") for _ in range(n)]
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO runs VALUES (%s, 'running', 1)", [(r,) for r, _ in ids]
                )

        def cycles(part: list[tuple[str, str]]) -> None:
            with server.connect(schema) as conn:
                for run_id, request_id in part:
                    params = {"run": run_id, "req": request_id}
                    if cte:
                        assert conn.execute(OPEN_CTE, params).fetchone() == (1,)
                        assert conn.execute(DECIDE_CTE, params).fetchone() == (1,)
                    else:
                        for steps in (OPEN_STEPS, DECIDE_STEPS):
                            conn.execute("BEGIN")
                            assert conn.execute(steps[0], params).rowcount == 1
                            conn.execute(steps[1], params)
                            conn.execute(steps[2], params)
                            conn.execute("COMMIT")
                    assert conn.execute(READ, params).fetchone() == ("allowed",)

        return lambda: run_in_threads(cycles, ids, threads)

    return setup


# -- wake-up ------------------------------------------------------------------------------

WAITER = """
import sys, time
import hitl_core

url = sys.argv[1]
with hitl_core.connect(url) as hitl:
    for line in sys.stdin:
        run_id, request_id = line.split()
        agent = hitl.agent(run_id)
        print("waiting", flush=True)
        request = agent.wait(request_id, timeout=30)
        print(time.monotonic(), request.status, flush=True)
"""


def wake_up(server: Server, count: int) -> dict[str, float]:
    """Median milliseconds from a decision's commit in this process to `Agent.wait`
    returning in another (CLOCK_MONOTONIC is one clock for every process here)."""
    url = server.store_url(server.schema())
    hitl = hitl_core.connect(url)
    gates = []
    for _ in range(count):
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = hitl.agent(run.id).request_tool("deploy")
        gates.append((run.id, gate.request_id))
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAITER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert waiter.stdin is not None and waiter.stdout is not None
    after_commit, from_call = [], []
    try:
        for run_id, request_id in gates:
            waiter.stdin.write(f"{run_id} {request_id}\n")
            waiter.stdin.flush()
            assert waiter.stdout.readline().strip() == "waiting"
            time.sleep(0.02)  # it blocks in wait() now
            called = time.monotonic()
            hitl.runs.approve(run_id, request_id=request_id)
            acknowledged = time.monotonic()
            woke, status = waiter.stdout.readline().split()
            assert status == "allowed"
            after_commit.append((float(woke) - acknowledged) * 1000)
            from_call.append((float(woke) - called) * 1000)
    finally:
        waiter.stdin.close()
        waiter.wait(timeout=60)
        hitl.close()
    return {
        "after_commit_ms": statistics.median(after_commit),
        "from_call_ms": statistics.median(from_call),
        "notify": notify_latency(server, count),
    }


def notify_latency(server: Server, count: int) -> dict[str, float]:
    """Milliseconds from a NOTIFY (sent in autocommit, so it commits at once) to a
    connection LISTENing in another thread receiving it: medians from the call and from
    the moment the call returned."""
    channel = f"bench_{secrets.token_hex(4)}"
    received: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with server.connect() as listener:
            listener.execute(f"LISTEN {channel}")
            ready.set()
            for note in listener.notifies(timeout=30, stop_after=count):
                received[int(note.payload)] = time.monotonic()

    thread = threading.Thread(target=listen)
    thread.start()
    ready.wait(10)
    called, returned = [], []
    with server.connect() as sender:
        for index in range(count):
            called.append(time.monotonic())
            sender.execute("SELECT pg_notify(%s, %s)", (channel, str(index)))
            returned.append(time.monotonic())
            time.sleep(0.005)
    thread.join(60)
    return {
        "from_call_ms": statistics.median((received[i] - called[i]) * 1000 for i in received),
        "after_return_ms": statistics.median((received[i] - returned[i]) * 1000 for i in received),
    }


# -- bytes per paused run ---------------------------------------------------------------


def hitl_bytes(server: Server, count: int) -> dict[str, float]:
    """Bytes on disk per run waiting on one tool request: as written, and after VACUUM
    FULL (live rows only; the run row was updated once, leaving a dead version)."""
    schema = server.schema()
    hitl = hitl_core.connect(server.store_url(schema))
    before = server.schema_bytes(schema)
    for _ in range(count):
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        hitl.agent(run.id).request_tool("gmail.send", {"to": "a@b.c"})
    hitl.close()
    written = (server.schema_bytes(schema) - before) / count
    return {"written": written, "live": vacuumed(server, schema, before) / count}


def vacuumed(server: Server, schema: str, before: int) -> float:
    with server.connect() as conn:
        tables = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'VACUUM FULL "{schema}"."{table}"')
    return server.schema_bytes(schema) - before


def langgraph_bytes(server: Server, count: int) -> dict[str, float] | None:
    """The same for LangGraph: threads paused at interrupt() under PostgresSaver."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.graph import END, START, StateGraph
        from langgraph.types import interrupt
    except ImportError:
        return None
    from typing import TypedDict

    class State(TypedDict):
        tool: str
        decision: str

    def gate(state: State) -> dict[str, str]:
        return {"decision": interrupt({"tool": state["tool"]})}

    schema = server.schema()
    with server.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    with PostgresSaver.from_conn_string(server.libpq_url(schema)) as saver:
        saver.setup()
        before = server.schema_bytes(schema)
        graph = StateGraph(State)
        graph.add_node("gate", gate)
        graph.add_edge(START, "gate")
        graph.add_edge("gate", END)
        app = graph.compile(checkpointer=saver)
        for _ in range(count):
            config = {"configurable": {"thread_id": uuid.uuid4().hex}}
            app.invoke({"tool": "gmail.send", "decision": ""}, config)  # type: ignore[arg-type]
    written = (server.schema_bytes(schema) - before) / count
    return {"written": written, "live": vacuumed(server, schema, before) / count}


# -- the profile ------------------------------------------------------------------------


def profile(server: Server, count: int) -> dict[str, Any]:
    """Where a cycle's time goes: each statement the store sends, timed (wall time, and
    the server process's CPU time read from /proc when the server runs on this machine),
    and the client's CPU time. One connection, `count` cycles."""
    from hitl_postgres._store import PostgresTransaction  # instrumented for this only

    tick = os.sysconf("SC_CLK_TCK")

    def server_cpu(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / tick

    found: dict[str, list[float]] = {}
    original = PostgresTransaction._execute

    def timed(self: Any, query: str, params: Any, *, committing: bool = False) -> Any:
        pid = self.conn.info.backend_pid
        before, started = server_cpu(pid), time.perf_counter()
        try:
            return original(self, query, params, committing=committing)
        finally:
            after = server_cpu(pid)
            kind = "write (hitl_write)" if "hitl_write" in query else _kind(query)
            row = found.setdefault(kind, [0, 0.0, 0.0])
            row[0] += 1
            row[1] += time.perf_counter() - started
            row[2] += 0.0 if before is None or after is None else after - before

    hitl = hitl_core.connect(server.store_url(server.schema(), pool_max_size="1"))
    agents = [
        (run.id, hitl.agent(run.id))
        for run in (
            hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            for _ in range(count)
        )
    ]
    PostgresTransaction._execute = timed  # type: ignore[method-assign]
    try:
        client, started = time.process_time(), time.perf_counter()
        for run_id, agent in agents:
            gate = agent.request_tool("gmail.send", {"to": "a@b.c"})
            hitl.runs.approve(run_id, request_id=gate.request_id)  # type: ignore[arg-type]
            agent.result(gate.request_id)  # type: ignore[arg-type]
        wall, client = time.perf_counter() - started, time.process_time() - client
    finally:
        PostgresTransaction._execute = original  # type: ignore[method-assign]
        hitl.close()
    return {
        "cycle_ms": wall / count * 1000,
        "client_cpu_ms": client / count * 1000,
        "statements": {
            kind: {
                "per_cycle": calls / count,
                "wall_us": seconds / calls * 1e6,
                "server_cpu_us": cpu / calls * 1e6,
            }
            for kind, (calls, seconds, cpu) in found.items()
        },
    }


def _kind(query: str) -> str:
    """A short name for a read statement."""
    if "json_agg" in query:
        return "read: a run with its requests"
    if "deadline <=" in query:
        return "read: overdue runs"
    if "policies" in query:
        return "read: policies that may cover a tool"
    if "requests" in query:
        return "read: requests"
    return "other: " + " ".join(query.split())[:40]


# -- the report -------------------------------------------------------------------------


@contextmanager
def server_at(url: str) -> Iterator[Server]:
    server = Server(url)
    try:
        yield server
    finally:
        server.drop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--url", help="the PostgreSQL server (a libpq URL)")
    parser.add_argument(
        "--profile", action="store_true", help="only time each statement of a cycle"
    )
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("HITL_TEST_POSTGRES_URL") or LOCAL
    if args.profile:
        with server_at(url) as server:
            report_profile(profile(server, 50 if args.quick else 1000))
        return 0
    quick = args.quick
    n, n_lg, reps = (20, 10, 1) if quick else (600, 200, 5)
    results: dict[str, Any] = {"quick": quick, "cycles_per_second": {}}
    with server_at(url) as server:
        rates = results["cycles_per_second"]
        cycles: list[tuple[str, Cycle | None, int]] = [
            ("hitl-core postgresql", hitl_cycle(server), n),
            ("hitl-core postgresql, 8 threads", hitl_cycle(server, threads=8), n),
            (
                "hitl-core postgresql, synchronous_commit=off",
                hitl_cycle(server, synchronous_commit="off"),
                n,
            ),
            ("LangGraph PostgresSaver", langgraph_cycle(server), n_lg),
            ("floor: psycopg, statement by statement", floor_cycle(server, cte=False), n),
            ("floor: psycopg, one statement per tx", floor_cycle(server, cte=True), n),
            (
                "floor: one statement per tx, 8 threads",
                floor_cycle(server, cte=True, threads=8),
                n,
            ),
        ]
        for name, setup, count in cycles:
            rates[name] = None if setup is None else measure(setup, count, reps)
            shown = "not installed (pip install -e '.[bench]')" if setup is None else ""
            if setup is not None:
                shown = f"{rates[name]:>12,.0f}"
            print(f"  measured {name:<44} {shown}", file=sys.stderr, flush=True)
            server.drop_all()
        results["wake_up"] = wake_up(server, 5 if quick else 200)
        server.drop_all()
        paused = 50 if quick else 5000
        results["bytes_per_paused_run"] = {
            "hitl-core postgresql": hitl_bytes(server, paused),
            "LangGraph PostgresSaver": langgraph_bytes(server, paused),
        }
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report_profile(found: dict[str, Any]) -> None:
    print(
        f"\nOne cycle: {found['cycle_ms']:.2f} ms of wall time, "
        f"{found['client_cpu_ms']:.2f} ms of client CPU"
    )
    print(f"  {'statement':<40} {'per cycle':>9} {'wall µs':>9} {'server CPU µs':>14}")
    server = 0.0
    for kind, row in sorted(found["statements"].items(), key=lambda kv: -kv[1]["wall_us"]):
        server += row["per_cycle"] * row["server_cpu_us"]
        print(
            f"  {kind:<40} {row['per_cycle']:>9.2f} {row['wall_us']:>9.0f}"
            f" {row['server_cpu_us']:>14.0f}"
        )
    print(f"  server CPU per cycle: {server / 1000:.2f} ms (0 when /proc cannot show it)")


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:,.2f}x"


def report(results: dict[str, Any]) -> None:
    rates = results["cycles_per_second"]
    print("\nPause-resume cycle on PostgreSQL (open a tool request, approve it, read it):")
    print(f"  {'':<46} {'cycles/s':>10}")
    for name, rate in rates.items():
        print(f"  {name:<46} {'-' if rate is None else f'{rate:,.0f}':>10}")
    one = rates["hitl-core postgresql"]
    print("\nRatios (the result; absolute numbers vary between machines):")
    rows = [
        (
            "hitl-core / LangGraph PostgresSaver",
            _ratio(one, rates["LangGraph PostgresSaver"]),
            ">= 10x",
        ),
        (
            "hitl-core / floor, statement by statement",
            _ratio(one, rates["floor: psycopg, statement by statement"]),
            ">= 0.5x",
        ),
        (
            "hitl-core / floor, one statement per tx",
            _ratio(one, rates["floor: psycopg, one statement per tx"]),
            ">= 0.5x",
        ),
        (
            "8 threads / one connection",
            _ratio(rates["hitl-core postgresql, 8 threads"], one),
            ">= 1.5x",
        ),
    ]
    for name, value, target in rows:
        print(f"  {name:<46} {value:>10}   {target}")
    wake = results["wake_up"]
    print(
        "\nWake-up, decision committed in one process -> Agent.wait returns in another"
        f" (median):\n  {wake['after_commit_ms']:.2f} ms after approve() returned,"
        f" {wake['from_call_ms']:.2f} ms after it was called   target <= 5 ms"
        f"\n  (raw NOTIFY -> LISTEN on this server: {wake['notify']['from_call_ms']:.2f} ms from"
        f" the call, {wake['notify']['after_return_ms']:.2f} ms after it returned)"
    )
    print("\nBytes on disk per paused run (tables, indexes, TOAST):")
    for name, found in results["bytes_per_paused_run"].items():
        if found is None:
            print(f"  {name:<26} not installed")
        else:
            print(
                f"  {name:<26} {found['written']:>8,.0f} as written, "
                f"{found['live']:>8,.0f} after VACUUM FULL"
            )
    print("  target for hitl-core: <= 1024")


if __name__ == "__main__":
    sys.exit(main())
