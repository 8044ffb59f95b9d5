"""Waiting, where it is easy to get wrong: a process forked after its parent waited,
timeouts too large for the platform's timers, a deadline passing under the system clock
while `events.wait` follows the log, a wait on a closed engine, and a signal that lands in
another thread while the main thread waits."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hitl_core
from hitl_core import ConflictError

APPROVE = """
import sys, hitl_core
with hitl_core.connect(sys.argv[1]) as hitl:
    (request,) = hitl.runs.pending()
    hitl.runs.approve(request.run_id, request_id=request.request_id, actor="approver")
"""


def _approval_run(hitl: hitl_core.Hitl, **options: object) -> hitl_core.Run:
    return hitl.runs.create(human_in_the_loop=True, permission_mode="approval", **options)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_is_woken_by_another_processes_decision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    warm = _approval_run(hitl)  # the parent has waited once: its feed is running
    gate = hitl.agent(warm.id).request_tool("x")
    assert gate.request_id is not None
    hitl.agent(warm.id).wait(gate.request_id, timeout=0.01)
    hitl.runs.cancel(warm.id)
    run = _approval_run(hitl)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            agent = hitl.agent(run.id)
            opened = agent.request_tool("deploy")
            started = time.monotonic()
            assert opened.request_id is not None
            done = agent.wait(opened.request_id, timeout=30)
            os.write(write, f"{time.monotonic() - started:.2f} {done.status.value}".encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 30
    while not hitl.runs.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    subprocess.run([sys.executable, "-c", APPROVE, url], check=True, timeout=60)
    os.waitpid(child, 0)
    seconds, status = os.read(read, 100).decode().split()
    assert status == "allowed"
    assert float(seconds) < 20, "the child was not woken by the decision"
    hitl.close()


def test_a_huge_timeout_or_input_timeout_is_a_long_wait_not_a_crash() -> None:
    clock = hitl_core.ManualClock(start=0.0)
    with hitl_core.connect("memory://") as hitl:  # the system clock: real-time waits
        run = _approval_run(hitl, input_timeout=1e10)  # "never suspend"
        agent = hitl.agent(run.id)
        gate = agent.request_tool("deploy")
        assert gate.request_id is not None
        rid = gate.request_id
        import threading

        threading.Timer(0.2, lambda: hitl.runs.approve(run.id, request_id=rid)).start()
        assert agent.wait(rid).status == "allowed"
        assert agent.wait(rid, timeout=1e300).status == "allowed"
        assert hitl.events.wait(after=hitl.events.last_id(), timeout=0.01) == []
        threading.Timer(0.2, hitl.runs.create).start()
        assert hitl.events.wait(after=hitl.events.last_id(), timeout=1e12)
    assert clock.now() == 0.0


def test_events_wait_returns_when_a_deadline_passes_under_the_system_clock() -> None:
    with hitl_core.connect("memory://") as hitl:
        run = _approval_run(hitl, input_timeout=0.3)
        hitl.agent(run.id).request_tool("deploy")
        seen = hitl.events.last_id()
        started = time.monotonic()
        events = hitl.events.wait(after=seen, timeout=20)
        assert [e.type for e in events] == ["run.suspended"]
        assert time.monotonic() - started < 10  # at the deadline, not at the timeout
        mine = hitl.events.wait(after=events[-1].id, run_id=run.id, timeout=0.01)
        assert mine == []


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_waiting_on_a_closed_engine_is_409_closed(tmp_path: Path, store: str) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    run = _approval_run(hitl)
    agent = hitl.agent(run.id)
    gate = agent.request_tool("deploy")
    assert gate.request_id is not None
    hitl.close()
    for call in (
        lambda: agent.wait(gate.request_id, timeout=1),  # type: ignore[arg-type]
        lambda: hitl.events.wait(timeout=1),
    ):
        with pytest.raises(ConflictError) as caught:
            call()
        assert caught.value.code == "closed"


class _Signalled(Exception):
    pass


def _raise_signalled(signum: int, frame: object) -> None:
    raise _Signalled


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
@pytest.mark.parametrize("call", ["agent.wait", "events.wait"])
def test_a_signal_caught_by_another_thread_interrupts_the_main_threads_wait(call: str) -> None:
    # Python runs signal handlers in the main thread, but the kernel may deliver the
    # signal to any thread (a store's watcher, a pool's worker), or just before the main
    # thread blocks; the wait must still let the handler run soon (Ctrl-C, SIGTERM), not
    # at its timeout. `hitl events --follow` ignored SIGTERM this way now and then.
    previous = signal.signal(signal.SIGUSR1, _raise_signalled)
    try:
        with hitl_core.connect("memory://") as hitl:
            run = _approval_run(hitl)
            agent = hitl.agent(run.id)
            gate = agent.request_tool("deploy")
            assert gate.request_id is not None
            rid = gate.request_id

            def signal_this_thread() -> None:
                time.sleep(0.2)
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

            threading.Thread(target=signal_this_thread).start()
            started = time.monotonic()
            with pytest.raises(_Signalled):
                if call == "agent.wait":
                    agent.wait(rid, timeout=30)
                else:
                    hitl.events.wait(after=hitl.events.last_id(), timeout=30)
            assert time.monotonic() - started < 15, "the handler ran only at the timeout"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_decision_committed_while_the_sqlite_feed_starts_ends_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first wait starts the store's watcher thread; a decision committed by another
    # connection after the wait's first look but before the watcher read its starting
    # point was taken as already seen, and the wait slept to its timeout (or deadline).
    # Slowing the watcher's start makes the window certain.
    from hitl_sqlite import _watch

    original = _watch.Watcher._loop

    def slow_start(self: _watch.Watcher, db: object) -> None:
        time.sleep(0.5)
        original(self, db)  # type: ignore[arg-type]

    monkeypatch.setattr(_watch.Watcher, "_loop", slow_start)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    with hitl_core.connect(url) as waiting, hitl_core.connect(url) as deciding:
        run = _approval_run(waiting)
        gate = waiting.agent(run.id).request_tool("deploy")
        assert gate.request_id is not None
        rid = gate.request_id
        found: list[hitl_core.PermissionRequest] = []
        waiter = threading.Thread(
            target=lambda: found.append(waiting.agent(run.id).wait(rid, timeout=20))
        )
        started = time.monotonic()
        waiter.start()
        time.sleep(0.2)  # the wait has looked once; the watcher is still starting
        deciding.runs.approve(run.id, request_id=rid, actor="bob")
        waiter.join(30)
        assert [r.status for r in found] == ["allowed"]
        assert time.monotonic() - started < 10, "the wait slept through the decision"


WAIT_WHILE_FILES_RUN_OUT = """
import logging, os, resource, sys, time
import hitl_core

url = sys.argv[1]
hitl = hitl_core.connect(url)
run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
agent = hitl.agent(run.id)
gate = agent.request_tool("deploy")
fillers = []


class Failed(logging.Handler):
    def emit(self, record):
        if fillers:  # the watcher could not open its connection: files are back now
            for fd in fillers:
                os.close(fd)
            fillers.clear()
            print("watcher failed", flush=True)


logging.getLogger("hitl_sqlite.watch").addHandler(Failed())
highest = max(int(name) for name in os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
try:
    while True:  # use up every file this process may open
        fillers.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
started = time.monotonic()
done = agent.wait(gate.request_id, timeout=25)
print(done.status.value, round(time.monotonic() - started, 1), flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_wait_outlives_a_watcher_that_could_not_open_its_connection(tmp_path: Path) -> None:
    # The SQLite feed's watcher opens a connection of its own when the first wait begins.
    # When that failed (here: the process had used up its files), the thread ended, and
    # every later wait in the process slept through decisions made in other processes
    # until its timeout. The watcher now tries again until it watches.
    url = f"sqlite:///{tmp_path / 'h.db'}"
    with subprocess.Popen(
        [sys.executable, "-c", WAIT_WHILE_FILES_RUN_OUT, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "watcher failed\n", line + child.communicate(timeout=60)[1]
        with hitl_core.connect(url) as hitl:
            (request,) = hitl.runs.pending()
            hitl.runs.approve(request.run_id, request_id=request.request_id, actor="bob")
        status, seconds = child.stdout.readline().split()
        child.wait(60)
    assert status == "allowed"
    assert float(seconds) < 12, "the wait slept through the decision to its timeout"


def test_a_watcher_that_fails_at_once_backs_off_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The watcher's connection opened, but its first read failed (the file was deleted
    # under the store: a new empty file has no events table): it tried again every 50 ms
    # and logged each try, because opening counted as success.
    path = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{path}") as hitl:
        run = _approval_run(hitl)
        gate = hitl.agent(run.id).request_tool("deploy")
        assert gate.request_id is not None
        for suffix in ("", "-wal", "-shm"):
            os.remove(f"{path}{suffix}")
        caplog.set_level(logging.INFO, logger="hitl_sqlite.watch")
        hitl.agent(run.id).wait(gate.request_id, timeout=2.0)
        tries = [r for r in caplog.records if r.name == "hitl_sqlite.watch"]
        assert len(tries) == 1, [r.getMessage() for r in tries]
        assert tries[0].levelno == logging.WARNING
        assert not path.exists()  # the watcher does not make an empty file in its place


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hitl-sqlite-watch")]


def test_engines_on_one_file_share_one_watcher_thread(tmp_path: Path) -> None:
    # Each store object had a watcher thread of its own, looking every 16 ms until the
    # store closed: idle CPU grew with the engines of a process (100 engines on one
    # file: 38 % of a core). Now a process watches a file once, for all its engines,
    # and stops when the last of them is closed.
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert _watch_threads() == []
    engines = [hitl_core.connect(url) for _ in range(5)]
    runs = [_approval_run(hitl) for hitl in engines]
    gates = [
        hitl.agent(run.id).request_tool("deploy") for hitl, run in zip(engines, runs, strict=True)
    ]
    found: list[str] = []

    def wait(i: int) -> None:
        request_id = gates[i].request_id
        assert request_id is not None
        found.append(engines[i].agent(runs[i].id).wait(request_id, timeout=20).status.value)

    waits = [threading.Thread(target=wait, args=(i,)) for i in range(1, 5)]
    for thread in waits:
        thread.start()
    time.sleep(0.3)  # every wait has begun
    assert len(_watch_threads()) == 1
    started = time.monotonic()
    for i in range(1, 5):  # engine 0 decides the requests the others wait on
        engines[0].runs.approve(runs[i].id, request_id=gates[i].request_id, actor="bob")  # type: ignore[arg-type]
    for thread in waits:
        thread.join(30)
    assert found == ["allowed"] * 4
    assert time.monotonic() - started < 10
    for hitl in engines[1:]:
        hitl.close()
    assert len(_watch_threads()) <= 1  # engine 0 still watches, if it ever waited
    engines[0].close()
    assert _watch_threads() == []


def test_a_watcher_thread_that_could_not_start_is_started_by_the_next_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting the shared watcher's thread can fail ("can't start new thread" when a
    # process is at its limit). The failed watcher stayed registered with a listener
    # nobody could remove, so no wait of the process was ever woken by another
    # process's decision again, on any engine.
    url = f"sqlite:///{tmp_path / 'h.db'}"
    real_start = threading.Thread.start
    failures: list[str] = []

    def failing_once(self: threading.Thread) -> None:
        if self.name.startswith("hitl-sqlite-watch") and not failures:
            failures.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", failing_once)
    with hitl_core.connect(url) as first:
        run = _approval_run(first)
        gate = first.agent(run.id).request_tool("x")
        assert gate.request_id is not None
        with pytest.raises(RuntimeError):
            first.agent(run.id).wait(gate.request_id, timeout=0.1)
    assert failures
    with hitl_core.connect(url) as second:
        agent = second.agent(run.id)
        gate = agent.request_tool("y")
        assert gate.request_id is not None
        rid = gate.request_id
        approve = (
            "import sys, hitl_core\n"
            "hitl_core.connect(sys.argv[1]).runs.approve(sys.argv[2], request_id=sys.argv[3])"
        )
        decider = subprocess.Popen([sys.executable, "-c", approve, url, run.id, rid])
        started = time.monotonic()
        assert agent.wait(rid, timeout=20).status == "allowed"
        assert time.monotonic() - started < 10, "the wait slept through the decision"
        decider.wait(30)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_starts_a_watcher_can_wait(tmp_path: Path) -> None:
    # The process's registry of SQLite watchers is guarded by one lock, held while a
    # watcher thread starts; a child forked at that moment inherited it held, and its
    # first wait (and its close) hung for ever. A child now starts with a registry of
    # its own.
    from hitl_sqlite import _watch

    url = f"sqlite:///{tmp_path / 'h.db'}"
    hitl = hitl_core.connect(url)
    run = _approval_run(hitl)
    gate = hitl.agent(run.id).request_tool("deploy")
    assert gate.request_id is not None
    hitl.agent(run.id).wait(gate.request_id, timeout=0.01)  # the parent watches the file
    read, write = os.pipe()
    held, done_forking = threading.Event(), threading.Event()

    def starting_a_watcher() -> None:  # holds the registry's lock as watch() does
        with _watch._WATCHERS_LOCK:
            held.set()
            done_forking.wait(10)

    other = threading.Thread(target=starting_a_watcher)
    other.start()
    assert held.wait(10)
    child = os.fork()
    if child != 0:
        done_forking.set()
        other.join(10)
    if child == 0:  # pragma: no cover - runs in the child
        try:
            with hitl_core.connect(url) as mine:
                found = mine.agent(run.id).wait(gate.request_id, timeout=0.2)
            hitl.close()
            os.write(write, found.status.value.encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child hung")
    assert os.read(read, 100) == b"pending"
    hitl.close()
