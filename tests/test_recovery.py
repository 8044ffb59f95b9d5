"""Hosts that recover after a crash (the waiting issue): a real worker host process
(docs/examples/worker_host.py) is SIGKILLed at each point of its loop (before a request,
while waiting, after the decision, before completing) while people decide from another
process; a second host then finishes every run exactly once: each run completed once,
no tool requested twice, each step's effect recorded once. Also: a host killed while
waiting whose decision then came before the deadline leaves a run a second host takes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hitl_core

HOST = Path(__file__).resolve().parent.parent / "docs" / "examples" / "worker_host.py"
RUNS = 3
LEASE = "1.0"
EXPECTED_DONE = ["files.read:allowed", "deploy.prod:allowed", "slack.post:allowed"]


def _host(url: str, worker: str, *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HOST), url, "--worker", worker, "--lease", LEASE, *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Person:
    """Approves every pending request, from this process, until stopped."""

    def __init__(self, url: str) -> None:
        self.hitl = hitl_core.connect(url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        seen = self.hitl.events.last_id()
        while not self.stop.is_set():
            for request in self.hitl.runs.pending():
                self.hitl.runs.approve(request.run_id, request_id=request.request_id)
            events = self.hitl.events.wait(after=seen, timeout=0.5)
            if events:
                seen = events[-1].id

    def __enter__(self) -> Person:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.hitl.close()


def _finished_exactly_once(hitl: hitl_core.Hitl, run_ids: list[str]) -> None:
    for run_id in run_ids:
        run = hitl.runs.get(run_id)
        assert run.status == "completed", (run_id, run.status)
        assert run.output == {"done": EXPECTED_DONE}
        assert run.checkpoint == {"step": 3, "done": EXPECTED_DONE}
        requests = hitl.runs.permissions(run_id)
        assert sorted(r.tool_name for r in requests) == ["deploy.prod", "slack.post"]
        events = hitl.events.list(run_id=run_id, limit=1000)
        assert [e.type for e in events].count("run.completed") == 1


@pytest.mark.parametrize("point", ["before_request", "waiting", "decided", "before_complete"])
def test_a_host_killed_at_any_point_leaves_its_runs_to_another(tmp_path: Path, point: str) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    run_ids = [
        hitl.runs.create(human_in_the_loop=True, permission_mode="approval").id for _ in range(RUNS)
    ]
    with Person(url):
        first = _host(url, "first", "--kill-at", point, "--until-done")
        out, err = first.communicate(timeout=120)
        assert first.returncode == -9, (first.returncode, out, err)
        assert f"killed at {point}" in out
        second = _host(url, "second", "--until-done")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, (out, err)
    _finished_exactly_once(hitl, run_ids)
    hitl.close()


def test_a_decision_that_comes_after_the_host_died_is_picked_up(tmp_path: Path) -> None:
    """The case from the issue: a host killed while waiting, whose decision then came
    before the 75 s deadline, left its run running for ever with nobody to resume it."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    first = _host(url, "first", "--kill-at", "waiting", "--until-done")
    first.communicate(timeout=120)
    (pending,) = hitl.runs.pending()
    hitl.runs.approve(run.id, request_id=pending.request_id)  # before the deadline
    assert hitl.runs.get(run.id).status == "running"  # decided; its worker is gone
    deadline = time.monotonic() + 30
    while not hitl.runs.claimable() and time.monotonic() < deadline:
        time.sleep(0.1)  # the dead host's lease lapses after a second
    assert [r.id for r in hitl.runs.claimable()] == [run.id]
    with Person(url):
        second = _host(url, "second", "--until-done")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, (out, err)
    _finished_exactly_once(hitl, [run.id])
    hitl.close()


def test_two_live_hosts_share_the_runs_without_doing_one_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    run_ids = [
        hitl.runs.create(human_in_the_loop=True, permission_mode="approval").id for _ in range(6)
    ]
    with Person(url):
        hosts = [_host(url, name, "--until-done") for name in ("a", "b")]
        for host in hosts:
            out, err = host.communicate(timeout=120)
            assert host.returncode == 0, (out, err)
    _finished_exactly_once(hitl, run_ids)
    workers = {hitl.runs.get(run_id).lease_worker for run_id in run_ids}
    assert workers == {None}  # ending a run clears its lease
    hitl.close()
