"""Benchmarks: the pause-resume cycle of hitl-core against LangGraph's interrupt/resume
and against hand-written floors, plus policy checks, memory per paused run, and read
latency as the SQLite store grows. Ratios measured in one run are the result.

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # a smoke run with tiny sizes (used by the tests)
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import hitl_core

Cycle = Callable[[int], Callable[[], None]]  # setup(n) -> timed body running n cycles


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


def sqlite_floor(workdir: Path, synchronous: str) -> Cycle:
    """Two short transactions on a WAL file: insert the pending gate; then compare-and-set
    it to allowed; then read it back. What any SQLite-backed engine must at least do."""

    def setup(n: int) -> Callable[[], None]:
        path = workdir / f"floor-{uuid.uuid4().hex}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
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


# -- other measurements -------------------------------------------------------------------


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


def memory_per_paused_run(count: int) -> float:
    """Bytes of Python heap per run waiting on one tool request, in the memory store."""
    hitl = hitl_core.connect("memory://")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        hitl.agent(run.id).request_tool("gmail.send", {"to": "a@b.c"})
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_run = (after - before) / count
    hitl.close()
    return per_run


def latency_as_data_grows(
    workdir: Path, steps: list[tuple[int, int]], probes: int
) -> list[dict[str, float]]:
    """Median µs of runs.permissions(run) and tick() after each growth step
    (total requests, pending deadlines), on one SQLite file (FULL)."""
    url = f"sqlite:///{workdir / 'grow.db'}"
    clock = hitl_core.ManualClock(start=1000.0)
    hitl = hitl_core.connect(url, clock=clock)
    rows = []
    loaded_runs = 0
    for total_requests, pending in steps:
        runs = total_requests // 10
        if runs > loaded_runs:
            # grow_sqlite loads from run 0; load only the new range by offsetting ids
            _grow_range(hitl, loaded_runs, runs, pending)
            loaded_runs = runs
        probe_runs = [f"run_{i}" for i in range(0, runs, max(1, runs // probes))][:probes]
        perms = []
        for run_id in probe_runs:
            start = time.perf_counter()
            assert len(hitl.runs.permissions(run_id)) == 10
            perms.append(time.perf_counter() - start)
        ticks = []
        for _ in range(probes):
            start = time.perf_counter()
            hitl.tick()
            ticks.append(time.perf_counter() - start)
        rows.append(
            {
                "requests": total_requests,
                "pending": pending,
                "permissions_us": statistics.median(perms) * 1e6,
                "tick_us": statistics.median(ticks) * 1e6,
            }
        )
    hitl.close()
    return rows


def _grow_range(hitl: hitl_core.Hitl, first: int, last: int, pending: int) -> None:
    from hitl_core._records import PermissionRequest, RequestStatus, Run, RunStatus

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


# -- the report ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    n_mem, n_sql, n_lg, reps = (50, 20, 10, 1) if quick else (3000, 600, 300, 5)
    results: dict[str, Any] = {"cycles_per_second": {}, "quick": quick}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def file_url(sync: str) -> Callable[[], str]:
            return lambda: f"sqlite:///{work / uuid.uuid4().hex}.db?synchronous={sync}"

        cycles: list[tuple[str, Cycle | None, int]] = [
            ("hitl-core memory://", hitl_cycle(lambda: "memory://"), n_mem),
            ("hitl-core sqlite FULL", hitl_cycle(file_url("FULL")), n_sql),
            ("hitl-core sqlite NORMAL", hitl_cycle(file_url("NORMAL")), n_sql),
            ("LangGraph InMemorySaver", langgraph_cycle("memory", work), n_lg),
            ("LangGraph SqliteSaver", langgraph_cycle("sqlite", work), n_lg),
            ("floor: dict + attrs.evolve", python_floor(), n_mem * 10),
            ("floor: sqlite3 FULL, 2 tx", sqlite_floor(work, "FULL"), n_sql),
            ("floor: sqlite3 NORMAL, 2 tx", sqlite_floor(work, "NORMAL"), n_sql),
        ]
        rates = results["cycles_per_second"]
        for name, setup, n in cycles:
            rates[name] = None if setup is None else measure(setup, n, reps)
            shown = (
                "not installed (pip install -e '.[bench]')"
                if setup is None
                else (f"{rates[name]:>12,.0f}")
            )
            print(f"  measured {name:<30} {shown}", file=sys.stderr, flush=True)

        policy_n, checks = (1000, 200) if quick else (100_000, 3000)
        results["policy_checks_per_second"] = {
            "exact": policy_checks(f"sqlite:///{work / 'pol-e.db'}", policy_n, checks, False),
            "pattern": policy_checks(f"sqlite:///{work / 'pol-p.db'}", policy_n, checks, True),
            "exact_memory": policy_checks("memory://", policy_n, checks, False),
            "pattern_memory": policy_checks("memory://", policy_n, checks, True),
            "policies": policy_n,
        }
        results["bytes_per_paused_run"] = memory_per_paused_run(200 if quick else 20_000)
        steps = (
            [(1000, 100), (10_000, 1000)]
            if quick
            else [(10_000, 1000), (100_000, 10_000), (1_000_000, 100_000)]
        )
        results["latency"] = latency_as_data_grows(work, steps, 20 if quick else 200)

    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:,.2f}x"


def report(results: dict[str, Any]) -> None:
    rates = results["cycles_per_second"]
    mem, full, normal = (
        rates["hitl-core memory://"],
        rates["hitl-core sqlite FULL"],
        rates["hitl-core sqlite NORMAL"],
    )
    lg_mem, lg_sql = rates["LangGraph InMemorySaver"], rates["LangGraph SqliteSaver"]
    print("\nPause-resume cycle (open a tool request, approve it, the agent reads it):")
    print(f"  {'':<30} {'cycles/s':>12}")
    for name, rate in rates.items():
        print(f"  {name:<30} {'-' if rate is None else f'{rate:,.0f}':>12}")
    print("\nRatios (the result; absolute numbers vary between machines):")
    rows = [
        ("memory:// / LangGraph InMemorySaver", _ratio(mem, lg_mem), ">= 50x"),
        ("sqlite FULL / LangGraph SqliteSaver", _ratio(full, lg_sql), ">= 10x"),
        (
            "sqlite FULL / sqlite3 FULL floor",
            _ratio(full, rates["floor: sqlite3 FULL, 2 tx"]),
            ">= 0.5x",
        ),
        (
            "sqlite NORMAL / sqlite3 NORMAL floor",
            _ratio(normal, rates["floor: sqlite3 NORMAL, 2 tx"]),
            "",
        ),
        ("memory:// / dict + attrs floor", _ratio(mem, rates["floor: dict + attrs.evolve"]), ""),
    ]
    for name, value, target in rows:
        print(f"  {name:<40} {value:>10}   {target}")
    pol = results["policy_checks_per_second"]
    print(f"\nAuto-allowed tool checks/s with {pol['policies']:,} policies in the scope:")
    print(
        f"  sqlite: exact {pol['exact']:,.0f}, pattern {pol['pattern']:,.0f}; "
        f"memory: exact {pol['exact_memory']:,.0f}, pattern {pol['pattern_memory']:,.0f}"
    )
    print(
        f"\nMemory per paused run (memory store): {results['bytes_per_paused_run']:,.0f} bytes"
        "   target <= 2048"
    )
    print("\nSQLite read latency as data grows (median µs):")
    print(f"  {'requests':>10} {'pending':>8} {'permissions(run)':>17} {'tick()':>8}")
    for row in results["latency"]:
        print(
            f"  {row['requests']:>10,} {row['pending']:>8,} {row['permissions_us']:>17,.0f}"
            f" {row['tick_us']:>8,.0f}"
        )


if __name__ == "__main__":
    sys.exit(main())
