"""Records: the engine's fast constructors are as strict about field names as attrs, and
the public row helpers of `hitl_core.adapter` (`row_writer`, `row_reader`,
`record_maker`) round-trip every record exactly and refuse a damaged row."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_core import StoreError
from hitl_core._records import PermissionRequest, RequestStatus, Run, RunStatus, fresh
from hitl_core.adapter import (
    RECORDS,
    Event,
    field_names,
    record_maker,
    row_reader,
    row_writer,
    to_row,
)


def _run(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": "run_1",
        "status": RunStatus.RUNNING,
        "human_in_the_loop": True,
        "permission_mode": "approval",
        "user_id": None,
        "task_id": None,
        "metadata": None,
        "input_timeout": 75.0,
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    values.update(changes)
    return values


def test_fresh_refuses_an_unknown_field_name() -> None:
    with pytest.raises(TypeError, match="statuss"):
        fresh(Run, **_run(statuss="running"))


def test_fresh_refuses_a_missing_required_field() -> None:
    values = _run()
    del values["input_timeout"]
    with pytest.raises(TypeError, match="input_timeout"):
        fresh(Run, **values)


def test_fresh_builds_what_the_attrs_constructor_builds() -> None:
    assert fresh(Run, **_run()) == Run(**_run())  # type: ignore[arg-type]
    request = {
        "request_id": "req_1",
        "run_id": "run_1",
        "kind": "tool",
        "tool_name": "t",
        "tool_input": {},
        "status": RequestStatus.PENDING,
        "created_at": 1.0,
    }
    assert fresh(PermissionRequest, **request) == PermissionRequest(**request)  # type: ignore[arg-type]


# -- the compiled row helpers of hitl_core.adapter -----------------------------------------

JSON_FIELDS = {
    "Run": {"metadata", "remembered_allow", "remembered_deny", "output", "checkpoint"},
    "PermissionRequest": {"tool_input", "answers"},
    "Event": {"data"},
    "WebhookEndpoint": {"events"},
}
KEYS = st.text(max_size=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def an_odd_run(data: st.DataObject) -> Run:
    return Run(
        id=data.draw(st.text(min_size=1, max_size=8)),
        status=data.draw(st.sampled_from(["running", "awaiting_approval", "failed"])),
        human_in_the_loop=data.draw(st.booleans()),
        permission_mode="plan",
        user_id=data.draw(st.none() | st.text(min_size=1, max_size=4)),
        task_id=None,
        metadata=data.draw(
            st.none() | st.dictionaries(st.text(max_size=3), json_values, max_size=3)
        ),
        input_timeout=data.draw(st.floats(min_value=0.001, max_value=1e9)),
        created_at=-0.5,
        updated_at=data.draw(st.floats(allow_nan=False, allow_infinity=False)),
        remembered_allow=frozenset(data.draw(st.lists(st.text(max_size=3), max_size=3))),
        deadline=data.draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
        output=data.draw(json_values),
        checkpoint=data.draw(json_values),
        lease_token=data.draw(st.integers(0, 2**62)),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), offset=st.integers(0, 2))
def test_row_writer_and_reader_round_trip_a_run(data: st.DataObject, offset: int) -> None:
    run = an_odd_run(data)
    names = field_names(Run)
    for json in (JSON_FIELDS["Run"], set()):
        for int_bools in (False, True):
            row = row_writer(Run, names, json, int_bools=int_bools)(run)
            if int_bools:
                assert row[names.index("suspended")] in (0, 1)
                assert type(row[names.index("suspended")]) is int
            if json:
                assert isinstance(row[names.index("remembered_allow")], str)
            back = row_reader(Run, names, json, offset=offset)((*range(offset), *row))
            assert back == run
            assert back.metadata == run.metadata and back.output == run.output


def test_row_helpers_round_trip_every_record_class() -> None:
    from hitl_core.testing.contract import HitlContract

    samples = [
        HitlContract.port_run("run_x", metadata={"a": [1]}, remembered_deny={"z", "y"}),
        HitlContract.port_request("req_x", "run_x"),
        HitlContract.port_delivery("dlv_x", "run_x", "failed", error="boom", attempts=3),
        Event(id="evt_x", type="run.failed", run_id="run_x", created_at=2.0, data={"k": [None]}),
    ]
    made = {type(record) for record in samples}
    for record in samples:
        cls = type(record)
        names = field_names(cls)
        json = JSON_FIELDS.get(cls.__name__, set())
        row = row_writer(cls, names, json)(record)
        assert row_reader(cls, names, json)(row) == record
        if not json:  # without JSON the tuple holds what to_row holds, in order
            assert row == tuple(to_row(record).values())
    assert made <= set(RECORDS)


def test_a_row_reader_names_what_is_wrong() -> None:
    names = ("id", "type", "run_id", "created_at", "data")
    read = row_reader(Event, names, {"data"}, offset=1)
    good = (1, "evt_1", "run.started", "run_1", 3, '{"a":1}')
    assert read(good).created_at == 3.0 and type(read(good).created_at) is float
    for index, bad in [(2, 7), (4, "later"), (5, "[1]"), (4, True)]:
        row = list(good)
        row[index] = bad
        with pytest.raises(StoreError) as caught:
            read(row)
        assert caught.value.code == "store_corrupt"
    with pytest.raises(StoreError, match="has 5 values, not 6"):
        read(good[:-1])
    with pytest.raises(TypeError, match="needs the fields"):
        row_reader(Event, ("id", "type"))
    with pytest.raises(TypeError, match="has no fields"):
        row_writer(Event, ("id", "colour"))


def test_record_maker_runs_no_converter_and_checks_names() -> None:
    make = record_maker(Event)
    data = {"nested": [1]}
    event = make(id="evt_1", type="t", run_id="run_1", created_at=1.0, data=data)
    assert event == Event(id="evt_1", type="t", run_id="run_1", created_at=1.0, data=data)
    assert attrs.fields(Event)  # still an attrs record
    with pytest.raises(TypeError):
        make(id="evt_1", type="t", run_id="run_1", created_at=1.0, data={}, colour=1)
