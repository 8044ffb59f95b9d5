"""The memory store's port promises that the engine does not reach today but the port
makes: all-or-nothing nested blocks, listings in their old order after a rollback, and
rollbacks that leave no stale index entries behind."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hitl_memory import MemoryStore

from hitl_core import PermissionPolicy, PermissionRequest, RequestStatus, Run, RunStatus, StoreError
from hitl_core.testing.helpers import snapshot


def run(run_id: str, deadline: float | None = None) -> Run:
    return Run(
        id=run_id,
        status=RunStatus.RUNNING,
        human_in_the_loop=True,
        permission_mode="approval",
        user_id=None,
        task_id=None,
        metadata=None,
        input_timeout=10.0,
        created_at=0.0,
        updated_at=0.0,
        deadline=deadline,
    )


def request(request_id: str, run_id: str, status: RequestStatus) -> PermissionRequest:
    return PermissionRequest(
        request_id=request_id,
        run_id=run_id,
        kind="tool",
        tool_name="t",
        tool_input={},
        status=status,
        created_at=0.0,
    )


def policy(policy_id: str, tool: str) -> PermissionPolicy:
    return PermissionPolicy(
        id=policy_id, user_id=None, tool_name=tool, source="api", created_at=0.0
    )


def test_transactions_do_not_nest_and_the_outer_one_rolls_back() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError) as caught, store.transaction(write=True) as tx:
        tx.insert_run(run("run_a"))
        with store.transaction(write=True):
            pass
    assert caught.value.code == "store_nested"
    with store.transaction(write=False) as tx:
        assert tx.get_run("run_a") is None


def test_pending_order_survives_a_rollback() -> None:
    store = MemoryStore()
    with store.transaction(write=True) as tx:
        tx.insert_run(run("run_a"))
        tx.save_requests([request(f"req_{n}", "run_a", RequestStatus.PENDING) for n in "123"])
    with pytest.raises(RuntimeError), store.transaction(write=True) as tx:
        tx.save_requests([request("req_1", "run_a", RequestStatus.ALLOWED)])
        raise RuntimeError
    with store.transaction(write=False) as tx:
        assert [r.request_id for r in tx.pending_requests(10)] == ["req_1", "req_2", "req_3"]
        assert [r.request_id for r in tx.list_requests("run_a", pending_only=True)] == [
            "req_1",
            "req_2",
            "req_3",
        ]


def test_policy_order_survives_an_undone_delete() -> None:
    store = MemoryStore()
    with store.transaction(write=True) as tx:
        for n, tool in enumerate(["a", "b.*", "c", "b.x*"]):
            tx.insert_policy(policy(f"pol_{n}", tool))
    with pytest.raises(RuntimeError), store.transaction(write=True) as tx:
        tx.delete_policy("pol_0")
        tx.delete_policy("pol_1")
        raise RuntimeError
    with store.transaction(write=False) as tx:
        page = tx.list_policies(None, limit=10, starting_after=None)
        assert page is not None
        assert [p.id for p in page[0]] == ["pol_0", "pol_1", "pol_2", "pol_3"]
        assert [p.id for p in tx.candidate_policies(None, "b.xy")] == ["pol_1", "pol_3"]


def test_a_rolled_back_run_leaves_no_deadline_behind() -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError), store.transaction(write=True) as tx:
        tx.insert_run(run("run_tmp"))
        stored = tx.get_run("run_tmp")
        assert stored is not None
        tx.update_run(attrs.evolve(stored, version=2, deadline=5.0))
        raise RuntimeError
    with store.transaction(write=False) as tx:
        assert tx.due_runs(100.0, 10) == []


def test_due_runs_is_a_read_and_respects_its_limit() -> None:
    store = MemoryStore()
    with store.transaction(write=True) as tx:
        for n in range(5):
            tx.insert_run(run(f"run_{n}", deadline=float(n)))
    with store.transaction(write=False) as tx:
        assert [r.id for r in tx.due_runs(3.0, 2)] == ["run_0", "run_1"]
        assert [r.id for r in tx.due_runs(3.0, 10)] == ["run_0", "run_1", "run_2", "run_3"]
        assert [r.id for r in tx.due_runs(3.0, 10)] == ["run_0", "run_1", "run_2", "run_3"]


def test_a_duplicate_run_id_is_refused_like_sqlite_does() -> None:
    store = MemoryStore()
    with store.transaction(write=True) as tx:
        tx.insert_run(run("run_a"))
    with pytest.raises(StoreError) as caught, store.transaction(write=True) as tx:
        tx.insert_run(run("run_a"))
    assert caught.value.code == "store_constraint"


def test_a_call_that_fails_after_appending_several_events_rolls_back_whole() -> None:
    """A cancel appends two events of one run at once; a failure after that must undo the
    run, the request and both events, and surface the original error."""
    import hitl_core

    class Boom(Exception):
        pass

    class FailingStore(MemoryStore):
        armed = False

        def append_events(self, events: Any) -> None:
            super().append_events(events)
            if self.armed:
                self.armed = False
                raise Boom("failure after the events were written")

    store = FailingStore()
    hitl = hitl_core.connect(store, clock=hitl_core.ManualClock(start=0.0))
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    hitl.agent(run.id).request_tool("gmail.send", {"to": "x"})
    before = snapshot(hitl)
    store.armed = True
    with pytest.raises(Boom):
        hitl.runs.cancel(run.id)
    assert snapshot(hitl) == before
    assert hitl.runs.cancel(run.id).status == "cancelled"
    assert [e.type for e in hitl.events.list()][-1] == "run.cancelled"
