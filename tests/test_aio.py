"""The asyncio engine (SPEC 14): the shared contract suite through `hitl_core.aio` (on
memory and on an SQLite file), a thousand waits in one event loop holding no thread, a
decision from another process ending an awaited wait, and the loop never blocked by a
store call that waits for a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hitl_memory import MemoryStore

import hitl_core
import hitl_core.aio
from hitl_core import ManualClock, Store
from hitl_core.adapter import open_store
from hitl_core.testing.bridge import EventLoopThread, bridged
from hitl_core.testing.contract import HitlContract


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread()
    yield thread
    thread.stop()


class AsyncContract(HitlContract):
    """The contract suite, every call made through the asyncio engine."""

    @pytest.fixture(autouse=True)
    def _bridge(self, loop_thread: EventLoopThread) -> Iterator[None]:
        self.loop_thread = loop_thread
        self.opened: list[Any] = []
        yield
        for engine in self.opened:
            loop_thread.run(engine.close())

    def open_engine(self, store: str | Store, **options: Any) -> Any:
        engine = hitl_core.aio.connect(store, **options)
        self.opened.append(engine)
        return bridged(engine, self.loop_thread)


class TestAsyncMemory(AsyncContract):
    durable = False

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    @pytest.fixture
    def store_factory(self) -> Callable[[], Store]:
        shared = MemoryStore()
        return lambda: shared


class TestAsyncSqliteFile(AsyncContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'hitl.db'}"


# -- waits hold no thread ------------------------------------------------------------------


def test_a_thousand_waits_in_one_loop_hold_no_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    person = hitl_core.connect(url)
    waits = 1_000

    async def main() -> list[str]:
        async with hitl_core.aio.connect(url) as hitl:
            gates = []
            for _ in range(waits):
                run = await hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
                agent = await hitl.agent(run.id)
                gate = await agent.request_tool("deploy")
                gates.append((agent, run.id, gate.request_id))
            before = threading.active_count()
            tasks = [asyncio.create_task(a.wait(rid, timeout=120)) for a, _, rid in gates]
            await asyncio.sleep(0.5)  # every wait has looked once and now waits
            assert not any(task.done() for task in tasks)
            # at most the engine's pool filling up and the store's change watcher starting:
            # a fixed number, whatever the number of waits
            assert threading.active_count() <= before + hitl_core.aio.THREADS + 1

            def decide_all() -> None:  # a person, in another thread, decides them all
                for _, run_id, rid in gates:
                    person.runs.approve(run_id, request_id=rid)

            await asyncio.to_thread(decide_all)
            done = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return [request.status for request in done]

    statuses = asyncio.run(main())
    assert statuses == ["allowed"] * waits
    person.close()


PERSON = """
import sys, time, hitl_core
hitl = hitl_core.connect(sys.argv[1])
time.sleep(0.3)
hitl.runs.approve(sys.argv[2], request_id=sys.argv[3], actor="another process")
"""


def test_a_decision_made_in_another_process_ends_an_awaited_wait(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"

    async def main() -> hitl_core.PermissionRequest:
        async with hitl_core.aio.connect(url) as hitl:
            run = await hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            agent = await hitl.agent(run.id)
            gate = await agent.request_tool("deploy")
            assert gate.request_id is not None
            person = subprocess.Popen([sys.executable, "-c", PERSON, url, run.id, gate.request_id])
            try:
                return await asyncio.wait_for(agent.wait(gate.request_id), 60)
            finally:
                assert person.wait(60) == 0

    request = asyncio.run(main())
    assert (request.status, request.actor) == ("allowed", "another process")


def test_a_store_call_waiting_for_a_lock_never_blocks_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    url = f"sqlite:///{path}"
    hitl_core.connect(url).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer holds the file

    async def main() -> tuple[int, Any]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with hitl_core.aio.connect(url) as hitl:
            counting = asyncio.create_task(ticker())
            threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
            run = await hitl.runs.create()  # waits for the lock, on the pool
            counting.cancel()
            return ticks, run

    ticks, run = asyncio.run(main())
    holder.close()
    assert run.status == "running"
    assert ticks >= 10, "the loop stood still while the call waited for the lock"


def test_async_waits_with_a_manual_clock_take_no_real_time() -> None:
    clock = ManualClock(start=0.0)

    async def main() -> tuple[str, bool]:
        async with hitl_core.aio.connect("memory://", clock=clock) as hitl:
            run = await hitl.runs.create(
                human_in_the_loop=True, permission_mode="approval", input_timeout=30.0
            )
            agent = await hitl.agent(run.id)
            gate = await agent.request_tool("deploy")
            asyncio.get_running_loop().call_later(0.1, clock.advance, 31.0)
            started = time.monotonic()
            request = await asyncio.wait_for(agent.wait(gate.request_id), 30)
            assert time.monotonic() - started < 25  # woken by the clock, not a timer
            return request.status.value, (await hitl.runs.get(run.id)).suspended

    assert asyncio.run(main()) == ("pending", True)


def test_async_errors_are_the_sync_errors() -> None:
    async def main() -> None:
        async with hitl_core.aio.connect("memory://") as hitl:
            with pytest.raises(hitl_core.NotFoundError) as caught:
                await hitl.runs.get("run_missing")
            assert caught.value.code == "run_not_found"
            with pytest.raises(hitl_core.ValidationError) as refused:
                await hitl.runs.create(permission_mode="approval")
            assert refused.value.code == "hitl_required"

    asyncio.run(main())


def test_connect_refuses_a_bad_pool_size() -> None:
    with pytest.raises(hitl_core.ValidationError):
        hitl_core.aio.connect("memory://", threads=0)
    store = open_store("memory://")
    assert isinstance(store, Store)
    store.close()


SLOW_STORE = '''
"""A memory store that is slow to open and to subscribe to, as a server far away is."""
import time

from hitl_memory import MemoryStore


class SlowStore(MemoryStore):
    def subscribe(self, listener):
        time.sleep(0.5)
        return super().subscribe(listener)


def open_store(url):
    time.sleep(0.5)
    return SlowStore()
'''


def test_opening_and_subscribing_to_a_slow_store_never_block_the_loop(tmp_path: Path) -> None:
    from register import entry_point

    (tmp_path / "slow_store.py").write_text(SLOW_STORE)

    async def main() -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        counting = asyncio.create_task(ticker())
        hitl = hitl_core.aio.connect("slow://")  # nothing is opened yet
        async with hitl:  # opened on the engine's threads
            run = await hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
            agent = await hitl.agent(run.id)
            gate = await agent.request_tool("deploy")
            assert gate.request_id is not None
            request = await agent.wait(gate.request_id, timeout=0.05)  # subscribes: slow
        counting.cancel()
        return ticks, request.status.value

    with entry_point("hitl_core.stores", "slow = slow_store:open_store", import_from=tmp_path):
        ticks, status = asyncio.run(main())
    sys.modules.pop("slow_store", None)
    assert status == "pending"
    assert ticks >= 40, f"the loop stood still while the store opened ({ticks} ticks)"


def test_connect_refuses_an_unknown_scheme_at_once() -> None:
    with pytest.raises(hitl_core.ValidationError) as caught:
        hitl_core.aio.connect("nosuchstore://x")
    assert caught.value.code == "invalid_url"


def _files_open_on(path: Path) -> int:
    """How many of this process's descriptors are on the SQLite file or its -wal/-shm."""
    found = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        found += target.startswith(str(path))
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("how", ["first call cancelled", "closed while opening"])
def test_a_store_opened_by_a_cancelled_or_overtaken_first_call_is_closed(
    tmp_path: Path, how: str
) -> None:
    # The first call opens the store on the pool; when it was cancelled meanwhile, or
    # close() ran meanwhile, the opened engine was dropped (or set after close) and its
    # files stayed open for good.
    path = tmp_path / "a.db"

    async def main() -> None:
        hitl = hitl_core.aio.connect(f"sqlite:///{path}")
        first = asyncio.create_task(hitl.runs.list())
        await asyncio.sleep(0)  # the opening has begun on the pool
        if how == "first call cancelled":
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            assert (await hitl.runs.list()).data == []  # later calls use the one store
            await hitl.close()
        else:
            await hitl.close()
            with pytest.raises(hitl_core.ConflictError) as refused:
                await first
            assert refused.value.code == "closed"
            with pytest.raises(hitl_core.ConflictError):
                await hitl.runs.list()

    asyncio.run(main())
    assert _files_open_on(path) == 0


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_close_cancelled_during_the_opening_still_closes_the_store(tmp_path: Path) -> None:
    # close() marked the engine closed, then waited for the opening: cancelled there (a
    # shutdown's own timeout), it never closed what the opening made, and every later
    # close() returned at once.
    path = tmp_path / "a.db"

    async def main() -> None:
        hitl = hitl_core.aio.connect(f"sqlite:///{path}")
        opener = hitl._opener
        assert opener is not None
        hitl._opener = lambda: (time.sleep(0.3), opener())[1]  # a slow opening
        first = asyncio.create_task(hitl.runs.list())
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(hitl.close(), 0.05)
        await asyncio.gather(first, return_exceptions=True)
        await hitl.close()

    asyncio.run(main())
    assert _files_open_on(path) == 0
