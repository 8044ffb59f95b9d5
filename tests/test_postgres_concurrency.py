"""The PostgreSQL store under concurrency and failure (SPEC 13), with real processes on
the real server: eight processes deciding the same requests at once, writers killed
mid-stream, the server restarted and connections killed during a stream of calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import (
    admin,
    can_restart,
    ensure_running,
    restart_server,
    with_options,
)

import hitl_core
from hitl_core import ManualClock

pytestmark = pytest.mark.postgres

STATUS = {"allow": "allowed", "deny": "denied"}
ROOT = Path(__file__).resolve().parent.parent


def open_hitl(url: str) -> hitl_core.Hitl:
    return hitl_core.connect(url, clock=ManualClock(start=0.0))


class Child:
    """A Python subprocess started with `script`; its stdout lines are collected by a
    thread (so a pipe never fills up), stdin is open for a "go"."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors: list[str] = []
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if line == "ready":
                self._ready.set()
            else:
                self.lines.append(line)
        self._ready.set()

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._errors.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._errors)

    def wait_ready(self) -> None:
        assert self._ready.wait(60), "the child did not start"
        assert self.process.poll() is None, self.stderr

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 180) -> list[str]:
        """Wait for a clean exit; the lines it printed."""
        self.process.wait(timeout=timeout)
        self._reader.join(10)
        self._err_reader.join(10)
        assert self.process.returncode == 0, self.stderr
        return self.lines

    def kill(self) -> list[str]:
        """SIGKILL, then the lines it printed before dying."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        self._reader.join(10)
        return self.lines


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        for stream in (child.process.stdin, child.process.stdout, child.process.stderr):
            if stream is not None:
                stream.close()


def all_runs(hitl: hitl_core.Hitl) -> list[hitl_core.Run]:
    runs: list[hitl_core.Run] = []
    cursor = None
    while True:
        page = hitl.runs.list(limit=100, starting_after=cursor)
        runs.extend(page.data)
        if not page.has_more:
            return runs
        cursor = page.next_starting_after


# -- eight processes, the same 200 requests -----------------------------------------------

DECIDER = """
import json, sys
import hitl_core

url, decision, gates = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
hitl = hitl_core.connect(url, clock=hitl_core.ManualClock(start=0.0))
hitl.runs.get(gates[0][0])  # connected before the start
print("ready", flush=True)
sys.stdin.readline()
for run_id, request_id in gates:
    try:
        result = hitl.runs.approve(run_id, request_id=request_id, decision=decision)
        print(json.dumps([request_id, result.applied, None]), flush=True)
    except hitl_core.HitlError as error:
        print(json.dumps([request_id, False, error.code]), flush=True)
hitl.close()
"""


def test_eight_processes_decide_the_same_200_requests(pg_url: str, children: list[Child]) -> None:
    with open_hitl(pg_url) as hitl:
        gates = []
        for _ in range(200):
            run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            gate = hitl.agent(run.id).request_tool("deploy.prod", {"version": 7})
            gates.append((run.id, gate.request_id))
        decisions = ["allow" if index % 2 else "deny" for index in range(8)]
        for decision in decisions:
            children.append(Child(DECIDER, pg_url, decision, json.dumps(gates)))
        for child in children:
            child.wait_ready()
        for child in children:
            child.go()
        outcomes: dict[str, list[tuple[str, bool, str | None]]] = {rid: [] for _, rid in gates}
        for decision, child in zip(decisions, children, strict=True):
            for line in child.finish():
                request_id, applied, error = json.loads(line)
                outcomes[request_id].append((decision, applied, error))

        for run_id, request_id in gates:
            told = outcomes[request_id]
            assert len(told) == 8  # every process heard back about every request
            applied = [decision for decision, was_applied, _ in told if was_applied]
            assert len(applied) == 1, told  # one decision each, never two
            winner = applied[0]
            for decision, _, error in told:  # the same decision: accepted; the other: told
                assert error == (None if decision == winner else "gate_resolved_otherwise"), told
            request = hitl.agent(run_id).result(request_id)
            assert request.status == STATUS[winner]
            resolved = [e for e in hitl.events.list(run_id=run_id) if e.type == "request.resolved"]
            assert len(resolved) == 1 and resolved[0].data["status"] == STATUS[winner]
            assert hitl.runs.get(run_id).status == "running"
        # the whole log holds each decision once, in an order every reader agrees on
        log = [e for e in hitl.events.list(limit=1000) if e.type == "request.resolved"]
        assert sorted(e.data["request_id"] for e in log) == sorted(rid for _, rid in gates)


# -- writers killed mid-stream ------------------------------------------------------------

STREAM = """
import json, sys
import hitl_core

url = sys.argv[1]
hitl = hitl_core.connect(url, clock=hitl_core.ManualClock(start=0.0))
hitl.runs.list(limit=1)
print("ready", flush=True)
sys.stdin.readline()
index = 0
while True:
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    gate = hitl.agent(run.id).request_tool("deploy", {"index": index})
    decision = "allow" if index % 3 else "deny"
    hitl.runs.approve(run.id, request_id=gate.request_id, decision=decision, reason=str(index))
    print(json.dumps([run.id, gate.request_id, decision, index]), flush=True)
    index += 1
"""


def test_killed_writers_keep_every_acknowledged_decision(
    pg_url: str, children: list[Child]
) -> None:
    open_hitl(pg_url).close()
    for _ in range(3):
        children.append(Child(STREAM, pg_url))
    for child in children:
        child.wait_ready()
    for child in children:
        child.go()
    deadline = time.monotonic() + 60
    while min(len(child.lines) for child in children) < 15:  # all busy writing
        assert time.monotonic() < deadline, [child.stderr for child in children]
        time.sleep(0.01)
    acknowledged = [json.loads(line) for child in children for line in child.kill()]
    for child in children:
        assert child.process.returncode == -signal.SIGKILL

    with open_hitl(pg_url) as hitl:
        for run_id, request_id, decision, index in acknowledged:
            request = hitl.agent(run_id).result(request_id)
            assert (request.status, request.decision, request.reason) == (
                STATUS[decision],
                decision,
                str(index),
            )
            assert hitl.runs.get(run_id).status == "running"
        # what was cut short is whole or absent: a run awaiting approval has its request
        # and its event; nothing is half-written
        for run in all_runs(hitl):
            requests = hitl.runs.permissions(run.id)
            events = [e.type for e in hitl.events.list(run_id=run.id)]
            if run.status == "running" and not requests:
                assert events == ["run.started"]
            elif run.status == "awaiting_approval":
                assert [r.status for r in requests] == ["pending"]
                assert events == ["run.started", "run.awaiting_input"]
            else:
                assert events[-1] == "request.resolved"
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = hitl.agent(run.id).request_tool("after")
        assert hitl.runs.approve(run.id, request_id=gate.request_id).applied


# -- the server restarted, connections killed --------------------------------------------

FLAKY_STREAM = """
import json, sys, time, traceback
import hitl_core


url, seconds = sys.argv[1], float(sys.argv[2])
hitl = hitl_core.connect(url, clock=hitl_core.ManualClock(start=0.0))
hitl.runs.list(limit=1)
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds
index = 0
while time.monotonic() < end:
    step = "create"
    try:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        step = "request"
        gate = hitl.agent(run.id).request_tool("deploy", {"index": index})
        step = "approve"
        hitl.runs.approve(run.id, request_id=gate.request_id, reason=str(index))
        print(json.dumps(["ok", run.id, gate.request_id, index]), flush=True)
    except hitl_core.HitlError as error:
        print(json.dumps(["error", step, type(error).__name__, error.code, error.status]),
              flush=True)
        time.sleep(0.02)
    index += 1
hitl.close()
"""


def check_stream(url: str, lines: list[str]) -> list[list[Any]]:
    """Every acknowledged decision is stored; every failure was a 503 HitlError; the
    stream went on working afterwards. Returns the failures."""
    outcomes = [json.loads(line) for line in lines]
    failures = [o for o in outcomes if o[0] == "error"]
    for failure in failures:
        assert failure[2] in ("UnavailableError", "StoreError"), failure
        assert failure[3] in (
            "store_unavailable",
            "connection_lost",
            "commit_unknown",
            "store_busy",
        ), failure
        assert failure[4] == 503, failure
    acknowledged = [o for o in outcomes if o[0] == "ok"]
    assert acknowledged and outcomes[-1][0] == "ok", outcomes[-5:]  # later calls work
    with open_hitl(url) as hitl:
        for _, run_id, request_id, index in acknowledged:
            request = hitl.agent(run_id).result(request_id)
            assert (request.status, request.reason) == ("allowed", str(index))
    return failures


def test_server_restart_during_a_stream_of_calls(pg_url: str, children: list[Child]) -> None:
    why = can_restart(pg_url)
    if why is not None:
        pytest.skip(f"cannot restart the PostgreSQL server: {why}")
    open_hitl(pg_url).close()
    child = Child(FLAKY_STREAM, pg_url, "12")
    children.append(child)
    child.wait_ready()
    child.go()
    try:
        for _ in range(2):
            before = len(child.lines)
            deadline = time.monotonic() + 30
            while len(child.lines) < before + 10:
                assert time.monotonic() < deadline, child.stderr
                time.sleep(0.01)
            restart_server(pg_url)
    finally:
        ensure_running(pg_url)
    lines = child.finish()
    failures = check_stream(pg_url, lines)
    print("restart:", len(lines), "calls,", len(failures), "failed:", failures[:6])


def test_connections_killed_during_a_stream_of_calls(pg_url: str, children: list[Child]) -> None:
    name = f"hitl-kill-{os.getpid()}-{time.monotonic_ns()}"
    url = with_options(pg_url, application_name=name)
    open_hitl(url).close()
    child = Child(FLAKY_STREAM, url, "6")
    children.append(child)
    child.wait_ready()
    child.go()
    killed = 0
    quiet_after = time.monotonic() + 4.0  # the last 2 s of the stream show calls work again
    with admin(pg_url) as conn:  # type: ignore[attr-defined]
        while child.process.poll() is None and time.monotonic() < quiet_after:
            time.sleep(0.15)
            found = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            ).fetchone()
            killed += found[0]
    lines = child.finish()
    assert killed >= 10
    failures = check_stream(url, lines)
    print(
        "terminate:",
        killed,
        "killed,",
        len(lines),
        "calls,",
        len(failures),
        "failed:",
        failures[:6],
    )
    assert len(failures) < len(lines)
