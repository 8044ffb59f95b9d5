"""Records: the engine's fast constructors are as strict about field names as attrs, and
the public row helpers of `hitl_core.adapter` round-trip every record exactly."""

from __future__ import annotations

import pytest

from hitl_core._records import PermissionRequest, RequestStatus, Run, RunStatus, fresh


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
