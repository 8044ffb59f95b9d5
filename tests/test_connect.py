"""`connect()` itself (SPEC 11): fresh memory stores, scheme lookup, its own refusals."""

from __future__ import annotations

import pytest
from hitl_memory import MemoryStore

import hitl_core
from hitl_core import ValidationError


def test_memory_gives_a_fresh_empty_store_on_every_connect() -> None:
    first = hitl_core.connect("memory://")
    first.runs.create()
    first.permissions.create(tool="x")
    second = hitl_core.connect("memory://")
    assert second.runs.list().data == [] and second.permissions.list().data == []
    assert second.events.list() == []
    assert len(first.runs.list().data) == 1


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: hitl_core.connect("nosuch://x"), "invalid_url"),
        (lambda: hitl_core.connect("no scheme at all"), "invalid_url"),
        (lambda: hitl_core.connect(5), "invalid_url"),
        (lambda: hitl_core.connect("memory://", remember_scope="forever"), "invalid_config"),
        (lambda: hitl_core.connect("memory://", clock="noon"), "invalid_config"),
    ],
)
def test_connect_refusals(call: object, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code == code


def test_connect_takes_a_store_object() -> None:
    store = MemoryStore()
    with hitl_core.connect(store) as hitl:
        run = hitl.runs.create()
    with store.transaction(write=False) as tx:
        assert tx.get_run(run.id) == run
