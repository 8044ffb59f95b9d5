"""A smoke run of the benchmarks: every measurement still runs and reports (no timing
assertions; speed is compared in bench/, never in unit tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "Pause-resume cycle" in result.stdout and "Ratios" in result.stdout
    assert "Wake-up" in result.stdout and "waiters in one asyncio loop" in result.stdout
    data = json.loads(out_file.read_text())
    rates = data["cycles_per_second"]
    for name in (
        "hitl-core memory://",
        "hitl-core sqlite FULL",
        "floor: sqlite3 FULL, 2 tx",
        "floor: sqlite3 FULL, 3 tx",
        "floor: memory cycle by hand",
        "floor: hitl schema by hand, FULL",
    ):
        assert rates[name] > 0
    has_langgraph = importlib.util.find_spec("langgraph") is not None
    assert (rates["LangGraph InMemorySaver"] is not None) == has_langgraph
    sizes = data["bytes_per_paused_run"]
    assert sizes["memory"] > 0 and sizes["sqlite"] > 0
    assert [row["requests"] for row in data["latency"]] == [1000, 10_000]
    for row in data["latency"]:
        assert all(row[key] > 0 for key in ("permissions_us", "tick_us", "pending_us", "claim_us"))
    waiting = data["waiting"]
    for name in ("memory://, same process", "sqlite, same process", "sqlite, another process"):
        wake = waiting["wake"][name]
        assert 0 < wake["median_us"] <= wake["p99_us"]
    for loop in waiting["loop"].values():
        assert loop["idle_cpu_percent"] >= 0 and loop["all_woken_s"] > 0
    assert waiting["idle_threads_cpu_percent"] >= 0


def test_hitl_only_run_needs_no_peer(tmp_path: Path) -> None:
    """`--only hitl` (what bench/before_after.py runs against an older tree) measures
    hitl-core's cycles, policy checks and bytes, and nothing else."""
    out_file = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "hitl"]
    subprocess.run(
        [*command, "--json", str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(out_file.read_text())
    assert set(data["cycles_per_second"]) == {
        "hitl-core memory://",
        "hitl-core sqlite FULL",
        "hitl-core sqlite NORMAL",
    }
    assert "latency" not in data and "waiting" not in data


@pytest.mark.postgres
def test_quick_postgres_benchmark_runs_and_reports(tmp_path: Path, pg_server: str) -> None:
    out_file = tmp_path / "bench-postgres.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "postgres.py"),
            "--quick",
            "--url",
            pg_server,
            "--json",
            str(out_file),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "Pause-resume cycle on PostgreSQL" in result.stdout and "Ratios" in result.stdout
    data = json.loads(out_file.read_text())
    rates = data["cycles_per_second"]
    for name in (
        "hitl-core postgresql",
        "hitl-core postgresql, 8 threads",
        "floor: psycopg, statement by statement",
        "floor: psycopg, one statement per tx",
    ):
        assert rates[name] > 0
    has_peer = importlib.util.find_spec("langgraph.checkpoint.postgres") is not None
    assert (rates["LangGraph PostgresSaver"] is not None) == has_peer
    assert data["wake_up"]["from_call_ms"] > 0  # woken after the decision was asked for
    assert data["bytes_per_paused_run"]["hitl-core postgresql"]["written"] > 0
    bench = str(ROOT / "bench" / "postgres.py")
    profiled = subprocess.run(
        [sys.executable, bench, "--profile", "--quick", "--url", pg_server],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "write (hitl_write)" in profiled.stdout and "read: overdue runs" in profiled.stdout
